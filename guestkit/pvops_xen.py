"""The Xen-PV backend of the paravirt-ops seam, as XenLinux 2.6.16-2.6.18 PAE did it
(linux-2.6-xen-sparse `arch/i386/mm/{init,pgtable,hypervisor}-xen.c`,
`include/asm-i386/mach-xen/asm/{pgtable-3level,mmu_context}.h`; reference/linux-guest.md
§2.1, xen-pv.md §2-3). Sees only `engines.api`.

- Entries hold machine frames: `make_entry` goes through the P2M (read once from the
  `mfn_list` the domain builder left at start of day), `entry_pfn` through the M2P.
- start of day (`paging_init`): the builder's bootstrap tables become swapper_pg_dir; the
  direct map is extended over lowmem with 4 KiB pages (no superpages), each new L1 filled
  while writable, made read-only (`update_va_mapping`) and hooked with `mmu_update`.
- An mm is pinned before first use (`activate_mm`, or the first switch to a forked child):
  every page-table page made read-only (batched multicalls of `update_va_mapping`) then
  `MMUEXT_PIN_L3_TABLE`. At exit the mm is unpinned and its pages made writable again, so
  teardown is plain stores (`_arch_exit_mmap`).
- set_pte on the current mm: `update_va_mapping(va, pte, 0)`, falling back to a direct store
  (trapped and emulated by Xen's writable page tables) when it fails or for another mm. A
  direct PTE store is two 4-byte stores as on native (`pvops.set_pte_halves`: high half then
  low, a clear low then high), so ptwr emulates each half on its own trap;
  ptep_set_wrprotect is `clear_bit` on the low half, one 4-byte store; ptep_get_and_clear
  (mprotect) one cmpxchg8b of the whole entry, as 2.6.18 XenLinux does (not the native
  pair of 4-byte stores). In
  lazy-MMU mode the stores to pinned tables are queued and sent as one `mmu_update`.
  set_pmd/set_pdpte on pinned tables: `mmu_update`. New L1s under a pinned pgd are made
  read-only before they are hooked. Without writable page tables every store to a pinned
  table is an `mmu_update`.
- CR3: `MMUEXT_NEW_BASEPTR`; flushes: `MMUEXT_TLB_FLUSH_LOCAL`, `INVLPG_LOCAL`, and one
  `TLB_FLUSH_MULTI`/`INVLPG_MULTI` for remote VCPUs (no guest IPIs; no lazy TLB under Xen).
- Secondary VCPUs: `VCPUOP_initialise` with swapper_pg_dir, then `VCPUOP_up`.
- The kernel L2: a private copy per pgd when Xen says `shared_kernel_pmd` is False
  (per-pagetable), else the one kernel L2 of swapper_pg_dir in every pgd.
"""
from __future__ import annotations

from engines.api import BootInfo, Engine, ABI
from engines.api.xen import (DOMID_SELF, MACH2PHYS_VIRT_START, MMU_NORMAL_PT_UPDATE,
                             UVMF_INVLPG, UVMF_NONE, UVMF_TLB_FLUSH, VMASST_CMD_enable,
                             Hypercall, MmuextOp, MMUExt, MmuUpdate, MulticallEntry,
                             VcpuGuestContext, VcpuMask, VcpuOp, VMAssist, xen_pfn_to_cr3)

from .errors import GuestPanic
from .layout import A, D, FIXMAP_PAGES, KERNEL_PDE, P, PAGE_OFFSET, RW, kva
from .pvops import set_pte_halves

ADDR_MASK = ((1 << 44) - 1) & ~0xFFF
# hot hypercall numbers as plain names (an Enum member lookup costs ~10 attribute reads in
# CPython 3.11); the values are the same Hypercall members
_UPDATE_VA_MAPPING, _MMU_UPDATE = Hypercall.update_va_mapping, Hypercall.mmu_update
_MMUEXT_OP, _MULTICALL = Hypercall.mmuext_op, Hypercall.multicall
PIN_BATCH = 8            # update_va_mapping calls per multicall in pgd_walk (estimate)
LAZY_BATCH = 128         # queued PTE stores per mmu_update in lazy-MMU mode (estimate)


class XenMMU:
    name = "xen-pv"
    pgd_whole_page = True
    lazy_tlb = False                  # "XEN: no lazy tlb" (mmu_context.h)
    global_pages = False              # Xen refuses GLOBAL in guest L1es
    exit_switches_to_init_mm = True   # _arch_exit_mmap
    superpages = False

    def __init__(self, engine: Engine, boot: BootInfo):
        assert boot.abi is ABI.XEN_PV, boot.abi
        self.engine = engine
        self.boot = boot
        self.si = boot.start_info
        self.shared_kernel_pmd = boot.shared_kernel_pmd
        self.p2m: list[int] = []
        self.m2p: dict[int, int] = {}
        self.first_free_pfn = 0
        self.ptwr = False
        self.swapper_pa = 0
        self.kernel_pmd = -1
        self.pgds: dict[int, object] = {}      # pgd_pa -> mm (pgd_list)
        self._lazy = [False] * boot.vcpus
        self._queue: list[list[MmuUpdate]] = [[] for _ in range(boot.vcpus)]
        self._current: list = [None] * boot.vcpus     # mm whose pgd each VCPU runs
        self.stats = {"pins": 0, "unpins": 0, "lazy_batches": 0}

    # -- hypercall helpers ------------------------------------------------------------------
    def _hc(self, v: int, nr: int, *args) -> int:
        return self.engine.hypercall(v, nr, *args)

    def _must(self, v: int, what: str, nr: int, *args) -> None:
        rc = self.engine.hypercall(v, nr, *args)
        if rc < 0:
            raise GuestPanic(f"xen: {what} failed with {rc}")

    def _ext(self, v: int, cmd: int, arg1: int = 0, arg2=0) -> None:
        rc = self.engine.hypercall(v, _MMUEXT_OP, [MmuextOp(cmd, arg1, arg2)], 1, None,
                                   DOMID_SELF)
        if rc < 0:
            raise GuestPanic(f"xen: mmuext_op {MMUExt(cmd).name} {arg1:#x} failed with {rc}")

    def _mmu(self, v: int, reqs: list[MmuUpdate]) -> None:
        if reqs:
            rc = self.engine.hypercall(v, _MMU_UPDATE, reqs, len(reqs), None, DOMID_SELF)
            if rc < 0:
                raise GuestPanic(f"xen: mmu_update of {len(reqs)} entries failed with {rc}")

    def machine_addr(self, kernel_va: int) -> int:
        """virt_to_machine of a direct-map address."""
        return (self.p2m[(kernel_va - PAGE_OFFSET) >> 12] << 12) | (kernel_va & 0xFFF)

    # -- entries ----------------------------------------------------------------------------
    def make_entry(self, pfn: int, flags: int) -> int:
        return (self.p2m[pfn] << 12) | flags

    def entry_pfn(self, entry: int) -> int:
        return self.m2p[(entry & ADDR_MASK) >> 12]

    # -- start of day -----------------------------------------------------------------------
    def _read_p2m(self) -> None:
        e, si = self.engine, self.si
        read, base = e.read, si.mfn_list
        words = [read(0, base + 8 * i) for i in range((si.nr_pages + 1) // 2)]
        self.p2m = [half for w in words for half in (w & 0xFFFFFFFF, w >> 32)]
        del self.p2m[si.nr_pages:]
        self.m2p = dict(zip(self.p2m, range(len(self.p2m))))      # mfn -> pfn
        probe = e.read(0, MACH2PHYS_VIRT_START + 4 * (self.p2m[0] & ~1))
        got = (probe >> 32) if self.p2m[0] & 1 else probe & 0xFFFFFFFF
        if got != 0:
            raise GuestPanic(f"xen: M2P says mfn {self.p2m[0]:#x} is pfn {got:#x}, not 0")

    def paging_init(self, k) -> None:
        e, v = self.engine, 0
        k.emit("paging_on", v)                   # Xen's bootstrap tables are live at entry
        self.ptwr = self._hc(v, Hypercall.vm_assist, VMASST_CMD_enable,
                             VMAssist.writable_pagetables) == 0
        self._must(v, "vm_assist(pae_extended_cr3)", Hypercall.vm_assist, VMASST_CMD_enable,
                   VMAssist.pae_extended_cr3)
        self._read_p2m()
        si = self.si
        pgd_pfn = (si.pt_base - PAGE_OFFSET) >> 12
        pmds = [pgd_pfn + 1 + i for i in range(4)]
        self.swapper_pa = k.swapper_pa = pgd_pfn << 12
        self.kernel_pmd = k.kernel_pmd = pmds[3]
        k.swapper_pmds = pmds
        k.identity_entries = 0                   # APs start paged: no identity map
        self.pgds[self.swapper_pa] = None
        nxt = si.first_free_pfn
        mapped = (si.boot_region_end - PAGE_OFFSET) >> 12
        write, p2m = e.write, self.p2m
        for chunk in range(mapped >> 9, k.lowmem_pages >> 9):
            pt, nxt = nxt, nxt + 1
            base = kva(pt)
            for j, mfn in enumerate(p2m[chunk << 9:(chunk + 1) << 9]):   # make_entry
                write(v, base + 8 * j, (mfn << 12) | (P | RW | A | D))
            self._make_ro(v, pt)
            self._mmu(v, [MmuUpdate(self.machine_addr(kva(pmds[3]) + 8 * chunk)
                                    | MMU_NORMAL_PT_UPDATE, self.make_entry(pt, KERNEL_PDE))])
        for i in range(FIXMAP_PAGES):                # fixmap + pkmap page tables
            pt, nxt = nxt, nxt + 1
            e.clear_page(v, kva(pt))
            self._make_ro(v, pt)
            slot = ((k.fixaddr_top - (FIXMAP_PAGES - i) * (2 << 20)) >> 21) & 511
            self._mmu(v, [MmuUpdate(self.machine_addr(kva(pmds[3]) + 8 * slot)
                                    | MMU_NORMAL_PT_UPDATE, self.make_entry(pt, KERNEL_PDE))])
        self.first_free_pfn = nxt
        self.flush_tlb(v)

    def _make_ro(self, v: int, pfn: int, flags: int = UVMF_INVLPG) -> None:
        rc = self.engine.hypercall(v, _UPDATE_VA_MAPPING, kva(pfn),
                                   (self.p2m[pfn] << 12) | (P | A), flags)
        if rc < 0:
            raise GuestPanic(f"xen: update_va_mapping RO of pfn {pfn:#x} failed with {rc}")

    def _prot_batch(self, v: int, pfns: list[int], rw: bool) -> None:
        """pgd_walk: change the direct-map protection of page-table pages, in multicalls
        of PIN_BATCH, flushing the TLB with the last one."""
        flags = (P | RW | A | D) if rw else (P | A)
        p2m = self.p2m
        for i in range(0, len(pfns), PIN_BATCH):
            chunk = pfns[i:i + PIN_BATCH]
            last = i + PIN_BATCH >= len(pfns)
            calls = [MulticallEntry(_UPDATE_VA_MAPPING,
                                    (kva(p), (p2m[p] << 12) | flags,       # make_entry
                                     UVMF_TLB_FLUSH if last and j == len(chunk) - 1
                                     else UVMF_NONE))
                     for j, p in enumerate(chunk)]
            self._must(v, "multicall", _MULTICALL, calls)
            bad = [c for c in calls if c.result < 0]
            if bad:
                raise GuestPanic(f"xen: pgd_walk update_va_mapping of va {bad[0].args[0]:#x} "
                                 f"failed with {bad[0].result}")

    # -- mm pinning -------------------------------------------------------------------------
    def _pt_pfns(self, mm) -> list[int]:
        pfns = [mm.pmds[i] for i in range(3)] + sorted(mm.pt.values())
        if mm.private_kpmd:
            pfns.append(mm.pmds[3])
        return pfns + [mm.pgd_pa >> 12]

    def mm_pin(self, v: int, mm) -> None:
        self._prot_batch(v, self._pt_pfns(mm), rw=False)
        self._ext(v, MMUExt.PIN_L3_TABLE, self.p2m[mm.pgd_pa >> 12])
        mm.pinned = True
        self.stats["pins"] += 1

    def mm_unpin(self, v: int, mm) -> None:
        self.lazy_flush(v)
        self._ext(v, MMUExt.UNPIN_TABLE, self.p2m[mm.pgd_pa >> 12])
        self._prot_batch(v, self._pt_pfns(mm), rw=True)
        mm.pinned = False
        self.stats["unpins"] += 1

    def _pinned(self, mm) -> bool:
        return mm is None or mm.pinned

    # -- page-table stores ------------------------------------------------------------------
    def _store(self, v: int, mm, ptep: int, val: int) -> None:
        """A store to a page-table entry: plain if its table is not pinned; queued in
        lazy mode; else a direct store Xen emulates (ptwr) or an mmu_update."""
        if not self._pinned(mm):
            set_pte_halves(self.engine, v, ptep, val)
            return
        req = MmuUpdate(self.machine_addr(ptep) | MMU_NORMAL_PT_UPDATE, val)
        if self._lazy[v]:
            q = self._queue[v]
            q.append(req)
            if len(q) >= LAZY_BATCH:
                self.lazy_flush(v)
        else:
            self._mmu(v, [req])

    def set_pte(self, vcpu, mm, va, ptep, val):
        if mm is not None and not mm.pinned:
            set_pte_halves(self.engine, vcpu, ptep, val)
            return
        if self._lazy[vcpu]:
            self._store(vcpu, mm, ptep, val)
            return
        current = mm is None or self._current[vcpu] is mm
        if current and va < self.boot.hypervisor_virt_start and self.engine.hypercall(
                vcpu, _UPDATE_VA_MAPPING, va, val, UVMF_NONE) == 0:
            return
        if self.ptwr:                   # two 4-byte stores, each emulated by Xen
            set_pte_halves(self.engine, vcpu, ptep, val)
        else:
            self._mmu(vcpu, [MmuUpdate(self.machine_addr(ptep) | MMU_NORMAL_PT_UPDATE, val)])

    def set_pmd(self, vcpu, mm, pmdp, val):
        if self._pinned(mm):
            self.lazy_flush(vcpu)
            self._mmu(vcpu, [MmuUpdate(self.machine_addr(pmdp) | MMU_NORMAL_PT_UPDATE, val)])
        else:
            self.engine.write(vcpu, pmdp, val)

    def set_pdpte(self, vcpu, mm, pdptep, val):
        self.set_pmd(vcpu, mm, pdptep, val)

    def ptep_set_wrprotect(self, vcpu, mm, va, ptep):
        pte = self.engine.read(vcpu, ptep)
        if pte & RW:
            if not self._pinned(mm) or not self._lazy[vcpu] and self.ptwr:
                # clear_bit(_PAGE_BIT_RW, &ptep->pte_low): a 4-byte locked RMW of the low
                # half; on a pinned table Xen's ptwr emulates it
                self.engine.write_u32(vcpu, ptep, pte & 0xFFFFFFFF & ~RW)
            else:
                self._store(vcpu, mm, ptep, pte & ~RW)

    def ptep_get_and_clear(self, vcpu, mm, va, ptep):
        # XenLinux 2.6.18 (pgtable-3level.h) on a user mm: one cmpxchg8b of the whole entry
        # with 0 (falling back to the native xchg of the low half only if the entry changed
        # under it, which cannot happen between two steps of one VCPU here): one 8-byte
        # locked write, which Xen's ptwr emulates once on a pinned table (xen-pv.md §2.4:
        # cmpxchg8b is supported); queued as an mmu_update in lazy mode, and an mmu_update
        # without writable page tables
        old = self.engine.read(vcpu, ptep)
        if not self._pinned(mm) or not self._lazy[vcpu] and self.ptwr:
            self.engine.write(vcpu, ptep, 0)
        else:
            self._store(vcpu, mm, ptep, 0)
        return old

    # -- CR3 and flushes --------------------------------------------------------------------
    def write_cr3(self, vcpu, pgd_pa):
        self.lazy_flush(vcpu)
        mm = self.pgds.get(pgd_pa)
        if mm is not None and not mm.pinned:
            self.mm_pin(vcpu, mm)                 # switch_mm pins a not-yet-pinned mm
        self._ext(vcpu, MMUExt.NEW_BASEPTR, self.p2m[pgd_pa >> 12])
        self._current[vcpu] = mm

    def flush_tlb(self, vcpu):
        self.lazy_flush(vcpu)
        self._ext(vcpu, MMUExt.TLB_FLUSH_LOCAL)

    def flush_tlb_global(self, vcpu):
        self.flush_tlb(vcpu)                      # no global guest mappings under Xen

    def invlpg(self, vcpu, va):
        self.lazy_flush(vcpu)
        self._ext(vcpu, MMUExt.INVLPG_LOCAL, va)

    def flush_tlb_others(self, vcpu, targets, mm, va, handler):
        """xen_tlb_flush_mask / xen_invlpg_mask: one hypercall, Xen does the IPIs."""
        self.lazy_flush(vcpu)
        mask = VcpuMask(sum(1 << t for t in targets))
        if va is None:
            self._ext(vcpu, MMUExt.TLB_FLUSH_MULTI, 0, mask)
        else:
            self._ext(vcpu, MMUExt.INVLPG_MULTI, va, mask)

    # -- page-table page lifetime ----------------------------------------------------------
    def alloc_pt(self, vcpu, mm, pfn, level):
        if self._pinned(mm):
            self._make_ro(vcpu, pfn)              # pmd_populate under a pinned pgd

    def release_pt(self, vcpu, mm, pfn, level):
        """pte_free makes a read-only L1 writable again (its L2e is already cleared);
        pgd_free of an mm still pinned unpins it first (no VCPU has it loaded by then)."""
        if level == 1 and self._pinned(mm):
            self.lazy_flush(vcpu)
            self._must(vcpu, f"update_va_mapping RW of pfn {pfn:#x}",
                       Hypercall.update_va_mapping, kva(pfn),
                       self.make_entry(pfn, P | RW | A | D), UVMF_INVLPG)
        elif level > 1 and mm is not None and mm.pinned:
            self.mm_unpin(vcpu, mm)
        if level == 3 and mm is not None:
            self.pgds.pop(mm.pgd_pa, None)

    def pgd_ready(self, vcpu, mm):
        self.pgds[mm.pgd_pa] = mm                 # pgd_list

    def activate_mm(self, vcpu, mm):
        if not mm.pinned:
            self.mm_pin(vcpu, mm)

    def exit_mmap(self, vcpu, mm):
        """_arch_exit_mmap: unpin if no VCPU still has the mm loaded."""
        loaded = [v for v, cur in enumerate(self._current) if cur is mm]
        if mm.pinned and not loaded:
            self.mm_unpin(vcpu, mm)

    def lazy_mmu(self, vcpu, on):
        if not on:
            self.lazy_flush(vcpu)
        self._lazy[vcpu] = on

    def lazy_flush(self, vcpu) -> None:
        q = self._queue[vcpu]
        if q:
            self._queue[vcpu] = []
            self._mmu(vcpu, q)
            self.stats["lazy_batches"] += 1

    def start_secondary(self, bsp, ap, pgd_pa, features):
        """cpu_initialize_context + VCPUOP_up: the AP starts paged on swapper_pg_dir."""
        e = self.engine
        ctxt = VcpuGuestContext(ctrlreg3=xen_pfn_to_cr3(self.p2m[pgd_pa >> 12]))
        self._must(bsp, f"VCPUOP_initialise({ap})", Hypercall.vcpu_op, VcpuOp.initialise,
                   ap, ctxt)
        self._must(bsp, f"VCPUOP_up({ap})", Hypercall.vcpu_op, VcpuOp.up, ap)
        e.advance_to(ap, e.clock(bsp))
