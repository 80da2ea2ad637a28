"""Removing write access to a guest frame that becomes a page table, unshadowing a frame
that stopped being one, and the TLB shootdowns both need.

Follows reference/shadow.md §4 "Removing write access" and "Unshadowing heuristics" (Xen
3.3 `xen/arch/x86/mm/shadow/common.c`: `sh_remove_write_access`,
`sh_remove_shadows`, `flush_tlb_mask(d->domain_dirty_cpumask)`):
- every writable shadow mapping of the frame must go. Xen has no reverse map: it guesses
  first (SHOPT_WRITABLE_HEURISTIC: for PAE Linux lowmem the direct-map address
  0xC0000000 + (gfn << 12) when gfn < 0x38000, probed through the *current* VCPU's shadows;
  then the shadow L1 where the last writable mapping was found), and if writable mappings
  remain it scans every L1 shadow (`hash_foreach` over l1 and fl1 shadows) until the
  frame's writable-mapping count reaches zero. The engine keeps an exact reverse map, so it
  does the removal directly, but it *charges* what Xen would do: one probe per guess and one
  L1 scan per shadow visited in hash order up to the last one holding a mapping;
- the heuristics only ever look at guest-derived L1 shadows, never Xen's own tables or the
  Xen area (XSA-243: heuristics never alias Xen-owned mappings);
- a removal that found anything flushes every VCPU's TLB (local flush + IPIs), since a
  writable translation may be cached anywhere; on early VT-x each IPI also costs the
  target a VM exit (`sh_flush_ipi_exit`);
- unshadowing (`sh_remove_shadows`, "fast": may fail) unhooks every L1 shadow of the frame
  from its parents and destroys it, and unpins top-level shadows not in any VCPU's CR3; a
  top-level shadow in use stays (the caller then emulates instead).
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from .accounting import IPI, IPI_EXIT, TLB_FLUSH
from .modes import F_P, F_RW
from .p2m import HYPERVISOR_VIRT_START
from .pool import SH_FL1, SH_L1

LINUX_LOWMEM_BASE = 0xC0000000
LINUX_LOWMEM_PAGES = 0x38000          # 896 MiB


class WriteAccess:
    """Mixin: sh_remove_write_access, sh_remove_shadows, flush_tlb_mask."""

    def _remove_write_access(self, vcpu: int, gfn: int) -> None:
        mfn = self.p2m.p2m[gfn]
        if mfn not in self.wrmaps:
            return
        self._stat("sh.wrmap_removals")
        how = "scan"
        if self.opt["wrmap_heuristic"]:
            if gfn < LINUX_LOWMEM_PAGES:
                self._probe_va(vcpu, LINUX_LOWMEM_BASE + (gfn << 12), mfn)
                if mfn not in self.wrmaps:
                    how = "heuristic"
            last = self.vs[vcpu].last_wr_smfn
            if mfn in self.wrmaps and last in self.pool.by_smfn:
                self.charge(vcpu, "sh_wrmap_scan")
                self._strip_writable(mfn, {last})
                if mfn not in self.wrmaps:
                    how = "last_sl1"
        if mfn in self.wrmaps:
            targets = {smfn for smfn, _idx in self.wrmaps[mfn]}
            scanned = 0
            for sp in self.pool.hash.values():
                if sp.type not in (SH_L1, SH_FL1):
                    continue
                scanned += 1
                if sp.smfn in targets:
                    targets.discard(sp.smfn)
                    self.vs[vcpu].last_wr_smfn = sp.smfn
                    if not targets:
                        break
            self.charge(vcpu, "sh_wrmap_scan", scanned)
            self._strip_writable(mfn, None)
        self._stat(f"sh.wrmap_found_{how}")
        self._flush_all(vcpu)

    def _strip_writable(self, mfn: int, only: set | None) -> None:
        """Make read-only the writable shadow mappings of `mfn` (in shadows `only`)."""
        for smfn, idx in list(self.wrmaps.get(mfn, ())):
            if only is None or smfn in only:
                sp = self.pool.by_smfn[smfn]
                old = self.memory.read_u64((smfn << 12) | (idx << 3))
                self._set_sl1e(sp, idx, old & ~F_RW)

    def _probe_va(self, vcpu: int, va: int, mfn: int) -> None:
        """One heuristic guess: the shadow L1e mapping `va` in this VCPU's current shadows."""
        self.charge(vcpu, "sh_wrmap_probe")
        if va >= HYPERVISOR_VIRT_START:
            return                                   # Xen's area: never a guest mapping
        top = self.vs[vcpu].tops[va >> 30]
        if top is None:
            return
        sl2e = self.memory.read_u64((top.smfn << 12) | (((va >> 21) & 511) << 3))
        if not sl2e & F_P:
            return
        sl1 = self.pool.by_smfn.get((sl2e & self._amask) >> 12)
        if sl1 is None or sl1.type not in (SH_L1, SH_FL1):
            return
        idx = (va >> 12) & 511
        e = self.memory.read_u64((sl1.smfn << 12) | (idx << 3))
        if e & F_RW and (e & self._amask) >> 12 == mfn:
            self._set_sl1e(sl1, idx, e & ~F_RW)
            self.vs[vcpu].last_wr_smfn = sl1.smfn

    # -- unshadowing ----------------------------------------------------------------------------
    def _remove_shadows(self, vcpu: int, gfn: int, why: str) -> bool:
        """sh_remove_shadows (fast): True when `gfn` is no longer a page table."""
        flush = False
        for sp in list(self.pool.by_gfn.get(gfn, ())):
            if sp.type == SH_L1:
                for parent, idx in list(sp.up):
                    flush |= self._set_sl2e(parent, idx, 0)
                if self.pool.hash.get(sp.key) is sp:     # held by no parent entry
                    self._destroy(sp)
                self.charge(vcpu, "sh_unshadow")
            elif not sp.users:
                self._unpin(sp)
                self.charge(vcpu, "sh_unshadow")
        if flush:
            self._flush_all(vcpu)
        done = gfn not in self.pool.by_gfn
        self._stat(f"sh.unshadow_{why}" if done else f"sh.unshadow_{why}_failed")
        return done

    # -- shootdowns -----------------------------------------------------------------------------
    def _flush_all(self, vcpu: int) -> None:
        """flush_tlb_mask over the VCPUs that have run: local flush plus one IPI each (the
        IPI charged as `ipi()` does: half its cost at each end)."""
        pend = self._pend
        pend["sh.flush_tlb_mask"] = pend.get("sh.flush_tlb_mask", 0) + 1   # self._stat()
        n, cycles, cost, cpus = self._n, self._cycles, self._hot_cost, self.cpus
        vmexit = "sh_flush_ipi_exit" in self._cost        # early VT-x: the IPI is a VM exit
        for v, vs in enumerate(self.vs):
            if v == vcpu:
                cycles[vcpu] += cost[TLB_FLUSH]
                n[TLB_FLUSH] += 1
                cpus[v].flush_tlb(False)
            elif vs.up:
                half = cost[IPI] >> 1
                cycles[vcpu] += half
                cycles[v] += half
                n[IPI] += 1
                if vmexit:
                    cycles[v] += cost[IPI_EXIT]
                    n[IPI_EXIT] += 1
                cpus[v].flush_tlb(False)
