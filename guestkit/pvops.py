"""The paravirt-ops seam of the guest kernel: every MMU operation the kernel makes goes
through one backend object, as Linux's `pv_mmu_ops` (arch/x86/include/asm/paravirt_types.h)
separates the native operations from Xen's (arch/x86/xen/mmu_pv.c).

This module holds the interface (`MMUOps`) and the **native backend** (`NativeMMU`), used on
bare hardware (ABI.NATIVE: entries hold physical frames) and on the shadow engine
(ABI.TRANSLATED: entries hold pseudo-physical frames; the engine traps what it must). The
Xen-PV backend lives in `guestkit.pvops_xen`.

Addresses: a page-table entry is named by the kernel virtual address of the entry (`ptep`,
in the direct map); a pgd by the guest-physical address of its PDPT (`pgd_pa`).
"""
from __future__ import annotations

from typing import Callable, Protocol

from engines.api import ABI, BootInfo, Engine

ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
PTE_RW = 0x2


def set_pte_halves(engine: Engine, vcpu: int, ptep: int, val: int) -> None:
    """A PTE store as 2.6 PAE Linux makes it (include/asm-i386/pgtable-3level.h): set_pte
    writes the high half, then (after smp_wmb) the low half, so the entry never reads
    present with a stale frame; a clear (pte_clear, ptep_get_and_clear: the value is not
    present) writes the low half first, dropping P before the frame's high bits. Two 4-byte
    stores: a hypervisor that traps them sees two writes (shadow.md §2 step 5, xen-pv.md
    §2.4). PMDs and PDPTEs are 64-bit atomic stores (set_64bit), as `set_pmd` does."""
    lo, hi = val & 0xFFFFFFFF, val >> 32
    if val & 1:
        engine.write_u32(vcpu, ptep + 4, hi)
        engine.write_u32(vcpu, ptep, lo)
    else:
        engine.write_u32(vcpu, ptep, lo)
        engine.write_u32(vcpu, ptep + 4, hi)


class MMUOps(Protocol):
    """What the kernel asks of its MMU backend. `mm` is a guestkit.mm.MM (or None for
    init_mm work at boot); `vcpu` is the VCPU doing the work and paying for it."""

    name: str
    lazy_tlb: bool            # idle VCPUs keep the last mm loaded
    global_pages: bool        # kernel mappings may set G
    exit_switches_to_init_mm: bool   # switch to swapper_pg_dir before tearing an mm down
    superpages: bool          # may the direct map use 2 MiB pages
    shared_kernel_pmd: bool   # one kernel L2 for every pgd (else a private copy per pgd)
    pgd_whole_page: bool      # a pgd takes a whole page (else a 32-byte slab object)

    def make_entry(self, pfn: int, flags: int) -> int: ...
    def entry_pfn(self, entry: int) -> int: ...
    def set_pte(self, vcpu: int, mm, va: int, ptep: int, val: int) -> None: ...
    def set_pmd(self, vcpu: int, mm, pmdp: int, val: int) -> None: ...
    def set_pdpte(self, vcpu: int, mm, pdptep: int, val: int) -> None: ...
    def ptep_set_wrprotect(self, vcpu: int, mm, va: int, ptep: int) -> None: ...
    def ptep_get_and_clear(self, vcpu: int, mm, va: int, ptep: int) -> int: ...
    def write_cr3(self, vcpu: int, pgd_pa: int) -> None: ...
    def flush_tlb(self, vcpu: int) -> None: ...
    def flush_tlb_global(self, vcpu: int) -> None: ...
    def invlpg(self, vcpu: int, va: int) -> None: ...
    def flush_tlb_others(self, vcpu: int, targets: list[int], mm, va: int | None,
                         handler: Callable[[int, object, int | None], None]) -> None: ...
    def alloc_pt(self, vcpu: int, mm, pfn: int, level: int) -> None: ...
    def release_pt(self, vcpu: int, mm, pfn: int, level: int) -> None: ...
    def pgd_ready(self, vcpu: int, mm) -> None: ...
    def activate_mm(self, vcpu: int, mm) -> None: ...
    def exit_mmap(self, vcpu: int, mm) -> None: ...
    def lazy_mmu(self, vcpu: int, on: bool) -> None: ...
    def start_secondary(self, bsp: int, ap: int, pgd_pa: int, features: dict) -> None: ...


class NativeMMU:
    """Direct stores to page tables, privileged instructions for CR3 and flushes."""

    name = "native"
    pgd_whole_page = False
    lazy_tlb = True                    # idle VCPUs keep the last mm loaded (enter_lazy_tlb)
    global_pages = True                # kernel mappings may set G
    exit_switches_to_init_mm = False   # (XenLinux's _arch_exit_mmap does)

    def __init__(self, engine: Engine, boot: BootInfo):
        assert boot.abi in (ABI.NATIVE, ABI.TRANSLATED), boot.abi
        self.engine = engine
        self.superpages = boot.superpages
        self.shared_kernel_pmd = boot.shared_kernel_pmd
        self._cr3 = [0] * boot.vcpus

    # entries name (pseudo-)physical frames directly
    def make_entry(self, pfn: int, flags: int) -> int:
        return (pfn << 12) | flags

    def entry_pfn(self, entry: int) -> int:
        return (entry & ADDR_MASK) >> 12

    def set_pte(self, vcpu, mm, va, ptep, val):
        set_pte_halves(self.engine, vcpu, ptep, val)

    def set_pmd(self, vcpu, mm, pmdp, val):
        self.engine.write(vcpu, pmdp, val)

    def set_pdpte(self, vcpu, mm, pdptep, val):
        self.engine.write(vcpu, pdptep, val)

    def ptep_set_wrprotect(self, vcpu, mm, va, ptep):
        # clear_bit(_PAGE_BIT_RW, &ptep->pte_low): a locked 4-byte RMW of the low half
        e = self.engine
        e.write_u32(vcpu, ptep, e.read(vcpu, ptep) & 0xFFFFFFFF & ~PTE_RW)

    def ptep_get_and_clear(self, vcpu, mm, va, ptep):
        # PAE (pgtable-3level.h): xchg the low half with 0 (P drops first), then store 0 in
        # the high half: two 4-byte stores; the old entry is returned
        e = self.engine
        old = e.read(vcpu, ptep)
        e.write_u32(vcpu, ptep, 0)
        e.write_u32(vcpu, ptep + 4, 0)
        return old

    def write_cr3(self, vcpu, pgd_pa):
        self._cr3[vcpu] = pgd_pa
        self.engine.write_cr3(vcpu, pgd_pa)

    def flush_tlb(self, vcpu):
        # __flush_tlb(): reload CR3 with its own value (the K8 flush filter may keep it)
        self.engine.write_cr3(vcpu, self._cr3[vcpu])

    def flush_tlb_global(self, vcpu):
        # __flush_tlb_all() with PGE: toggle CR4.PGE off and on
        self.engine.set_control(vcpu, pge=False)
        self.engine.set_control(vcpu, pge=True)

    def invlpg(self, vcpu, va):
        self.engine.invlpg(vcpu, va)

    def flush_tlb_others(self, vcpu, targets, mm, va, handler):
        for t in targets:
            self.engine.ipi(vcpu, t)
            handler(t, mm, va)

    def alloc_pt(self, vcpu, mm, pfn, level):
        pass

    def release_pt(self, vcpu, mm, pfn, level):
        pass

    def pgd_ready(self, vcpu, mm):
        pass

    def activate_mm(self, vcpu, mm):
        pass

    def exit_mmap(self, vcpu, mm):
        pass

    def lazy_mmu(self, vcpu, on):
        pass

    def start_secondary(self, bsp, ap, pgd_pa, features):
        """INIT-SIPI-SIPI; the AP runs the trampoline, enables PAE paging on the low
        identity map of swapper_pg_dir and jumps to PAGE_OFFSET (head.S startup_32_smp)."""
        e = self.engine
        for _ in range(3):
            e.ipi(bsp, ap)
        e.advance_to(ap, e.clock(bsp))
        e.set_control(ap, pge=features["pge"], nxe=features["nxe"])
        self._cr3[ap] = pgd_pa
        e.write_cr3(ap, pgd_pa)
        e.set_control(ap, pg=True, wp=True)
