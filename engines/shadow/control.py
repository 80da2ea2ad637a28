"""CR3 loads, invlpg, TLB flushes and CR0/CR4/EFER writes of a shadowed PAE guest.

Follows reference/shadow.md §5-6 and pae.md §2 (Xen 3.1+ `sh_update_cr3` with the gl3e
snapshot of 4e5334d94c, `sh_invlpg`):
- MOV CR3 traps: the 4 guest PDPTEs are read and checked now (#GP on a present entry with
  reserved bits, nothing changed), snapshotted in the VCPU, and later guest edits of the L3
  stay unseen until the next load, as the PDPTE registers behave; the up to 4 referenced
  L2s are found or shadowed (slot 3 as l2h) and pinned; the per-VCPU shadow L3 below 4 GiB
  is rewritten and loaded, which flushes (XSA-294: every change of shadow root flushes);
- CR0.PG and CR4.PGE writes reload the PDPTEs as hardware does; PG 0->1 leaves the
  physical-mode table; once every VCPU has paging on the physical-mode shadows go;
- invlpg, TLB flushes and CR3 loads are resync points for out-of-sync L1s.
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from engines.hw import GeneralProtection, pdpte_reserved

from .modes import F_P
from .pool import SH_L2, SH_L2H


class ControlOps:
    """Mixin: the privileged operations that trap."""

    # -- CR3 and the shadow L3 ---------------------------------------------------------------------
    def _read_pdptes(self, vcpu: int, cr3: int) -> tuple:
        base = cr3 & 0xFFFFFFE0                 # (32-byte aligned: one frame holds all 4)
        if base >> 12 >= self.nr_pages:
            self._gread(base)                   # raises: outside the domain
        words = self._frame(self._p2m[base >> 12])
        i = (base & 0xFFF) >> 3
        gl3e = (0, 0, 0, 0) if words is None else tuple(words[i:i + 4])
        rsvd = pdpte_reserved(self.spec.maxphyaddr)
        for i, e in enumerate(gl3e):
            if e & F_P and e & rsvd:
                raise GeneralProtection(f"vcpu {vcpu} load of cr3 {cr3:#x}: PDPTE {i} = "
                                        f"{e:#018x} is present with reserved bits "
                                        f"{e & rsvd:#x} set (SDM §4.4.1)")
        return gl3e

    def _load_tops(self, vcpu: int, tops: list) -> None:
        """Point the VCPU's shadow L3 at `tops` and reload CR3 (flushing: XSA-294)."""
        vs = self.vs[vcpu]
        old = vs.tops
        for i, sp in enumerate(old):
            if sp is not None and sp.type != "l2u":
                sp.users.discard((vcpu, i))
                sp.refs -= 1
        for i, sp in enumerate(tops):
            if sp is not None and sp.type != "l2u":
                sp.users.add((vcpu, i))
                sp.refs += 1
        for sp in old:
            if sp is not None and sp.type != "l2u" and sp.refs == 0:
                self._destroy(sp)
        vs.tops = tops
        base = vs.sl3_mfn << 12
        for i, sp in enumerate(tops):
            self.memory.write_u64(base + 8 * i, (sp.smfn << 12) | F_P if sp is not None else 0)
        self.cpus[vcpu].load_cr3(base)

    def _update_cr3(self, vcpu: int) -> None:
        """sh_update_cr3: shadow the up to 4 L2s the gl3e snapshot names (slot 3 as l2h)."""
        vs = self.vs[vcpu]
        if not vs.pg:
            self._load_tops(vcpu, list(self.unpaged))
            return
        want = [((e & self._amask) >> 12, SH_L2H if i == 3 else SH_L2) if e & F_P
                and self.p2m.mfn((e & self._amask) >> 12) >= 0 else None
                for i, e in enumerate(vs.gl3e)]
        missing = {k for k in want if k is not None and self.pool.lookup(k) is None}
        if missing:
            self._prealloc(vcpu, len(missing), frozenset(k for k in want if k is not None))
        tops: list = [None] * 4
        for i, k in enumerate(want):
            if k is not None:
                tops[i] = self._get_top(vcpu, k[0], k[1])
        self._load_tops(vcpu, tops)

    # Each operation below is a trap of its own: it ends the emulation that caught the first
    # half of a PTE (vs.half), so the other half, if it comes after, traps again.
    def write_cr3(self, vcpu: int, cr3: int) -> None:
        vs = self.vs[vcpu]
        vs.up, vs.half = True, None
        self.charge(vcpu, "trap")
        self.charge(vcpu, "sh_cr3")
        gl3e = self._read_pdptes(vcpu, cr3)
        self._resync_all(vcpu)
        vs.gcr3, vs.gl3e = cr3, gl3e
        self._update_cr3(vcpu)

    # -- other privileged operations -------------------------------------------------------------
    def invlpg(self, vcpu: int, va: int) -> None:
        vs = self.vs[vcpu]
        vs.up, vs.half = True, None
        self.charge(vcpu, "trap")
        self.charge(vcpu, "sh_invlpg")
        self._resync_all(vcpu)
        self.cpus[vcpu].invlpg(va)

    def flush_tlb(self, vcpu: int, include_global: bool = False) -> None:
        vs = self.vs[vcpu]
        vs.up, vs.half = True, None
        self.charge(vcpu, "trap")
        self.charge(vcpu, "tlb_flush")
        self._resync_all(vcpu)
        self.cpus[vcpu].flush_tlb(include_global)

    def set_control(self, vcpu: int, *, pg: bool | None = None, wp: bool | None = None,
                    pge: bool | None = None, nxe: bool | None = None) -> None:
        vs = self.vs[vcpu]
        vs.up, vs.half = True, None
        vs.half_walk = None                 # (a guest walk depends on WP, NXE and PG)
        cpu = self.cpus[vcpu]
        if nxe is not None:
            self._trap_cr(vcpu)
            vs.nxe = bool(nxe)
            cpu.efer_nxe = vs.nxe
        if wp is not None:
            self._trap_cr(vcpu)
            vs.wp = bool(wp)
        if pge is not None:
            self._trap_cr(vcpu)
            if bool(pge) != vs.pge:
                gl3e = self._read_pdptes(vcpu, vs.gcr3) if vs.pg else vs.gl3e
                vs.pge = bool(pge)
                cpu.cr4_pge = vs.pge
                self._resync_all(vcpu)
                vs.gl3e = gl3e
                self._update_cr3(vcpu)
        if pg is not None:
            self._trap_cr(vcpu)
            if bool(pg) != vs.pg:
                if pg:
                    vs.gl3e = self._read_pdptes(vcpu, vs.gcr3)
                vs.pg = bool(pg)
                self._resync_all(vcpu)
                self._update_cr3(vcpu)
                if all(v.pg for v in self.vs):
                    self._drop_unpaged()

    def _drop_unpaged(self) -> None:
        """No VCPU runs with paging off any more: the physical-mode L2s are in no CR3, so
        their fl1 shadows (writable maps of all memory) go, as an unpinned top would."""
        for sp in self.unpaged:
            for idx, _e in self._nonzero(sp.smfn):
                self._set_sl2e(sp, idx, 0)

    def _trap_cr(self, vcpu: int) -> None:
        self.charge(vcpu, "trap")
        self.charge(vcpu, "cr_write")

