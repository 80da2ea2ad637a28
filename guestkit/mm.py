"""Address spaces of the guest kernel: the PAE page-table tree of each mm, VMAs, the page
fault handler (demand paging, the zero page, the page cache, COW), fork's copy_page_range,
munmap/mprotect/brk and exit's teardown — as 2.6-era i386 Linux does them (mm/memory.c,
mm/mmap.c, arch/i386/mm/pgtable.c, fault.c; reference/linux-guest.md §1.4).

Every page-table entry lives in simulated memory and is read through the kernel's direct
map (`engine.read`) and written through the paravirt-ops backend (`ops.set_pte` & co).
The Python-side indexes (`MM.pt`, `MM.pages`) are the kernel's own bookkeeping (struct page
and the VMA tree), never a substitute for the entries: faults, fork and exit read the real
entries.

Modelling choices: a "touch" of a page is one 8-byte access (the model works at page-touch
granularity, not per instruction); file contents are a token per file page written when the
page-cache page is filled (no disk I/O time is modelled: the boot runs from a warm cache);
fork copies every present PTE (the <= 2.6.13 rule) or only those of VMAs with anonymous pages
(the >= 2.6.14 rule), per profile.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import GuestPanic
from .layout import (A, D, P, PAGE_OFFSET, RW, TASK_SIZE, US, USER_PDE, kva)
from .tokens import file_token


@dataclass
class VMA:
    start: int
    end: int
    read: bool
    write: bool
    exec_: bool
    file: str | None = None       # backing file (page cache) or None for anonymous memory
    pgoff: int = 0                # first file page mapped at `start`
    shared: bool = False
    anon: bool = False            # has anonymous (COW-broken or zero-fill) pages: anon_vma

    def contains(self, va: int) -> bool:
        return self.start <= va < self.end

    def cow(self) -> bool:
        return self.write and not self.shared


@dataclass(eq=False)
class MM:
    """One address space (struct mm_struct)."""
    id: int
    pgd_pa: int = 0                                   # guest-physical address of the PDPT
    pgd_obj: tuple = ()                               # allocator handle of the PDPT
    pmds: list = field(default_factory=lambda: [None] * 4)   # L2 pfns, slot 3 = kernel
    private_kpmd: bool = False                        # slot 3 is this mm's own copy
    pt: dict = field(default_factory=dict)            # (va >> 21) -> L1 pfn
    pages: dict = field(default_factory=dict)         # vpn -> pfn mapped (present PTEs)
    vmas: list = field(default_factory=list)
    ledger: dict = field(default_factory=dict)        # va -> token written by the process
    users: int = 1                                    # tasks using it (mm_users)
    active_on: set = field(default_factory=set)       # VCPUs with it loaded (cpu_vm_mask)
    dead: bool = False                                # exit_mmap done
    freed: bool = False                               # pgd_free done
    pinned: bool = False                              # for the Xen-PV backend
    loaded: bool = False                              # has been some VCPU's CR3
    brk_vma: VMA | None = None

    def find_vma(self, va: int) -> VMA | None:
        for v in self.vmas:
            if v.start <= va < v.end:
                return v
        return None

    def pt_pages(self) -> int:
        return len(self.pt) + sum(1 for p in self.pmds[:3] if p is not None) \
            + (1 if self.private_kpmd else 0)


class MemoryManager:
    """The kernel's mm code, working on `MM`s through the engine and the MMU backend."""

    def __init__(self, kernel):
        self.k = kernel
        self.engine = kernel.engine
        self.ops = kernel.ops
        self.alloc = kernel.alloc
        self.mapcount: dict[int, int] = {}      # pfn -> PTEs mapping it (user pages)
        self.pagecache: dict[tuple[str, int], int] = {}
        self.zero_pfn = -1
        self.nx = 0
        self.fork_copies_all = True
        self._pgd_slab: list[tuple[int, list[int]]] = []   # (pfn, free slots)

    # -- page-table pages -------------------------------------------------------------------
    def new_pt_page(self, vcpu: int) -> int:
        pfn = self.alloc.alloc()
        self.engine.clear_page(vcpu, kva(pfn))
        self.k.stats["pt_pages_allocated"] += 1
        return pfn

    def free_pt_page(self, vcpu: int, mm, pfn: int, level: int) -> None:
        self.ops.release_pt(vcpu, mm, pfn, level)
        self.alloc.free(pfn)
        self.k.stats["pt_pages_freed"] += 1

    def _pgd_obj_alloc(self, vcpu: int) -> tuple[int, tuple]:
        """A PDPT: a whole page (Xen PV) or a 32-byte object of the `pgd` slab (native)."""
        if self.ops.pgd_whole_page:
            pfn = self.new_pt_page(vcpu)
            return pfn << 12, ("page", pfn)
        for pfn, slots in self._pgd_slab:
            if slots:
                slot = slots.pop()
                return (pfn << 12) + 32 * slot, ("slab", pfn, slot)
        pfn = self.alloc.alloc()
        self.engine.clear_page(vcpu, kva(pfn))
        self._pgd_slab.append((pfn, list(range(127, -1, -1))))
        return self._pgd_obj_alloc(vcpu)

    def _pgd_obj_free(self, vcpu: int, mm, handle: tuple) -> None:
        if handle[0] == "page":
            self.free_pt_page(vcpu, mm, handle[1], 3)
            return
        _, pfn, slot = handle
        for spfn, slots in self._pgd_slab:
            if spfn == pfn:
                slots.append(slot)
                return
        raise GuestPanic(f"pgd slab object {pfn:#x}/{slot} not found")

    def pgd_alloc(self, vcpu: int, mm: MM) -> None:
        """pgd_alloc: a PDPT with 3 preallocated user PMDs and the kernel PMD (shared on
        native; a private copy when the backend has no shared kernel PMD)."""
        k, ops = self.k, self.ops
        mm.pgd_pa, mm.pgd_obj = self._pgd_obj_alloc(vcpu)
        pgd_va = PAGE_OFFSET + mm.pgd_pa
        for i in range(3):
            pmd = self.new_pt_page(vcpu)
            ops.alloc_pt(vcpu, mm, pmd, 2)
            mm.pmds[i] = pmd
            ops.set_pdpte(vcpu, mm, pgd_va + 8 * i, ops.make_entry(pmd, P))
        if ops.shared_kernel_pmd:
            mm.pmds[3] = k.kernel_pmd
        else:
            pmd = self.alloc.alloc()
            self.engine.copy_page(vcpu, kva(pmd), kva(k.kernel_pmd))
            self.k.stats["pt_pages_allocated"] += 1
            ops.alloc_pt(vcpu, mm, pmd, 2)
            mm.pmds[3] = pmd
            mm.private_kpmd = True
        ops.set_pdpte(vcpu, mm, pgd_va + 24, ops.make_entry(mm.pmds[3], P))
        ops.pgd_ready(vcpu, mm)
        k.stats["pgd_alloc"] += 1

    def pgd_free(self, vcpu: int, mm: MM) -> None:
        for i in range(3):
            self.free_pt_page(vcpu, mm, mm.pmds[i], 2)
        if mm.private_kpmd:
            self.free_pt_page(vcpu, mm, mm.pmds[3], 2)
        self._pgd_obj_free(vcpu, mm, mm.pgd_obj)
        mm.freed = True
        self.k.stats["pgd_free"] += 1

    def pmdp(self, mm: MM, va: int) -> int:
        return kva(mm.pmds[va >> 30]) + ((va >> 18) & 0xFF8)

    def ptep(self, mm: MM, va: int) -> int | None:
        pfn = mm.pt.get(va >> 21)
        return None if pfn is None else kva(pfn) + ((va >> 9) & 0xFF8)

    def pte_alloc(self, vcpu: int, mm: MM, va: int) -> int:
        """__pte_alloc: the entry's kernel address, hooking a new L1 if needed."""
        key = va >> 21
        pfn = mm.pt.get(key)
        if pfn is None:
            pfn = self.new_pt_page(vcpu)
            self.ops.alloc_pt(vcpu, mm, pfn, 1)
            self.ops.set_pmd(vcpu, mm, self.pmdp(mm, va), self.ops.make_entry(pfn, USER_PDE))
            mm.pt[key] = pfn
        return kva(pfn) + ((va >> 9) & 0xFF8)

    # -- user page flags --------------------------------------------------------------------
    def user_pte(self, pfn: int, vma: VMA, writable: bool, dirty: bool) -> int:
        flags = P | US | A
        if writable:
            flags |= RW
        if dirty:
            flags |= D
        if not vma.exec_:
            flags |= self.nx
        return self.ops.make_entry(pfn, flags)

    def _map(self, vcpu: int, mm: MM, va: int, pfn: int, pte: int) -> None:
        ptep = self.pte_alloc(vcpu, mm, va)
        self.ops.set_pte(vcpu, mm, va, ptep, pte)
        mm.pages[va >> 12] = pfn
        self.mapcount[pfn] = self.mapcount.get(pfn, 0) + 1

    def _unref(self, pfn: int) -> None:
        n = self.mapcount[pfn] - 1
        if n:
            self.mapcount[pfn] = n
            return
        del self.mapcount[pfn]
        if pfn != self.zero_pfn and pfn not in self._cache_pfns:
            self.alloc.free(pfn)

    @property
    def _cache_pfns(self) -> set:
        return self.k.cache_pfns

    def cache_page(self, vcpu: int, file: str, index: int) -> int:
        """find_get_page, filling the page-cache page on a miss (its content token)."""
        pfn = self.pagecache.get((file, index))
        if pfn is None:
            pfn = self.alloc.alloc()
            self.engine.clear_page(vcpu, kva(pfn))
            self.engine.write(vcpu, kva(pfn), file_token(file, index))
            self.pagecache[(file, index)] = pfn
            self.k.cache_pfns.add(pfn)
            self.k.stats["pagecache_fills"] += 1
        return pfn

    # -- the page fault handler (user addresses) --------------------------------------------
    def user_fault(self, vcpu: int, mm: MM, va: int, error_code: int) -> bool:
        """handle_mm_fault. Returns False when the access is illegal (SIGSEGV)."""
        vma = mm.find_vma(va)
        write = bool(error_code & 0x2)
        fetch = bool(error_code & 0x10)
        if vma is None or (write and not vma.write) or (fetch and not vma.exec_) \
                or (not write and not fetch and not vma.read):
            return False
        page_va = va & ~0xFFF
        if error_code & 0x1:
            if not write:
                return False       # present, not a write: a rights violation we cannot fix
            self.do_wp_page(vcpu, mm, vma, page_va)
        else:
            self.do_no_page(vcpu, mm, vma, page_va, write)
        return True

    def do_no_page(self, vcpu: int, mm: MM, vma: VMA, va: int, write: bool) -> None:
        k = self.k
        ptep = self.ptep(mm, va)
        if ptep is not None and self.engine.read(vcpu, ptep) & P:
            self._spurious(vcpu, va)     # another VCPU mapped it, or a stale TLB entry
            return
        if vma.file is None:
            if write:
                pfn = self.alloc.alloc()
                self.engine.clear_page(vcpu, kva(pfn))
                vma.anon = True
                self._map(vcpu, mm, va, pfn, self.user_pte(pfn, vma, True, True))
                k.stats["faults_anon"] += 1
            else:
                self._map(vcpu, mm, va, self.zero_pfn,
                          self.user_pte(self.zero_pfn, vma, False, False))
                k.stats["faults_zero_page"] += 1
            return
        cache_pfn = self.cache_page(vcpu, vma.file, vma.pgoff + ((va - vma.start) >> 12))
        if write and vma.cow():
            pfn = self.alloc.alloc()
            self.engine.copy_page(vcpu, kva(pfn), kva(cache_pfn))
            vma.anon = True
            self._map(vcpu, mm, va, pfn, self.user_pte(pfn, vma, True, True))
            k.stats["faults_file_cow"] += 1
        else:
            writable = write and vma.shared
            self._map(vcpu, mm, va, cache_pfn, self.user_pte(cache_pfn, vma, writable, writable))
            k.stats["faults_file"] += 1

    def do_wp_page(self, vcpu: int, mm: MM, vma: VMA, va: int) -> None:
        """Write to a present read-only page of a writable VMA: reuse or copy (COW)."""
        ptep = self.ptep(mm, va)
        pte = self.engine.read(vcpu, ptep)
        if pte & RW:
            self._spurious(vcpu, va)
            return
        old = mm.pages[va >> 12]
        if self.mapcount.get(old) == 1 and old != self.zero_pfn and old not in self.k.cache_pfns:
            self.ops.set_pte(vcpu, mm, va, ptep, pte | RW | D | A)
            self.k.flush_tlb_page(vcpu, mm, va)
            self.k.stats["cow_reuse"] += 1
            return
        pfn = self.alloc.alloc()
        if old == self.zero_pfn:
            self.engine.clear_page(vcpu, kva(pfn))
        else:
            self.engine.copy_page(vcpu, kva(pfn), kva(old))
        vma.anon = True
        self.ops.set_pte(vcpu, mm, va, ptep, self.user_pte(pfn, vma, True, True))
        mm.pages[va >> 12] = pfn
        self.mapcount[pfn] = 1
        self._unref(old)
        self.k.flush_tlb_page(vcpu, mm, va)
        self.k.stats["cow_copy"] += 1

    def _spurious(self, vcpu: int, va: int) -> None:
        self.ops.invlpg(vcpu, va)
        self.k.stats["faults_spurious"] += 1

    # -- fork -------------------------------------------------------------------------------
    def dup_mmap(self, vcpu: int, parent: MM, child: MM) -> None:
        """copy_page_range over every VMA: copy present PTEs, write-protect COW pages in
        the parent and the child, mark the copies old; then flush the parent's TLBs."""
        ops, engine = self.ops, self.engine
        child.vmas = [VMA(**vars(v)) for v in parent.vmas]
        child.brk_vma = next((c for c, p in zip(child.vmas, parent.vmas) if p is parent.brk_vma), None)
        ops.lazy_mmu(vcpu, True)
        copied = 0
        for vpn in sorted(parent.pages):
            va = vpn << 12
            vma = parent.find_vma(va)
            if not self.fork_copies_all and not vma.anon:
                continue                 # >= 2.6.14: the fault will fill it
            ptep = self.ptep(parent, va)
            pte = engine.read(vcpu, ptep)
            if not pte & P:
                raise GuestPanic(f"fork: mm {parent.id} vpn {vpn:#x} indexed but PTE "
                                 f"{pte:#x} not present")
            if vma.cow() and pte & RW:
                if "skip_cow_wrprotect" not in self.k.sabotage:
                    ops.ptep_set_wrprotect(vcpu, parent, va, ptep)
                pte &= ~RW
            child_pte = pte & ~A
            if vma.shared:
                child_pte &= ~D
            self._map(vcpu, child, va, parent.pages[vpn], child_pte)
            copied += 1
        ops.lazy_mmu(vcpu, False)
        child.ledger = dict(parent.ledger)
        self.k.stats["fork_ptes_copied"] += copied
        if "skip_fork_flush" not in self.k.sabotage:
            self.k.flush_tlb_mm(vcpu, parent)

    # -- unmapping --------------------------------------------------------------------------
    def zap_range(self, vcpu: int, mm: MM, start: int, end: int) -> int:
        """zap_pte_range: clear the present PTEs in [start, end); returns how many."""
        ops = self.ops
        n = 0
        for vpn in [v for v in mm.pages if start >> 12 <= v < end >> 12]:
            va = vpn << 12
            ops.set_pte(vcpu, mm, va, self.ptep(mm, va), 0)
            self._unref(mm.pages.pop(vpn))
            n += 1
        for va in [a for a in mm.ledger if start <= a < end]:
            del mm.ledger[va]
        return n

    def free_pgtables(self, vcpu: int, mm: MM) -> None:
        for key in sorted(mm.pt):
            va = key << 21
            self.ops.set_pmd(vcpu, mm, self.pmdp(mm, va), 0)
            self.free_pt_page(vcpu, mm, mm.pt.pop(key), 1)

    def exit_mmap(self, vcpu: int, mm: MM) -> None:
        """Tear down an mm whose last user is gone: unmap everything, flush, free the
        page tables (the pgd and PMDs go when no VCPU has the mm loaded: mmdrop)."""
        self.ops.exit_mmap(vcpu, mm)
        self.ops.lazy_mmu(vcpu, True)
        zapped = self.zap_range(vcpu, mm, 0, TASK_SIZE)
        self.ops.lazy_mmu(vcpu, False)
        if zapped:
            self.k.flush_tlb_mm(vcpu, mm)
        self.free_pgtables(vcpu, mm)
        mm.dead = True
        mm.vmas = []
        self.k.stats["exit_mmap"] += 1

    def munmap(self, vcpu: int, mm: MM, start: int, end: int) -> None:
        zapped = self.zap_range(vcpu, mm, start, end)
        kept = []
        for v in mm.vmas:
            if v.end <= start or v.start >= end:
                kept.append(v)
                continue
            if v.start < start:
                kept.append(VMA(**{**vars(v), "end": start}))
            if v.end > end:
                kept.append(VMA(**{**vars(v), "start": end,
                                   "pgoff": v.pgoff + ((end - v.start) >> 12)}))
        mm.vmas = kept
        if zapped:
            self.k.flush_tlb_mm(vcpu, mm)       # i386 flush_tlb_range == flush_tlb_mm

    def mprotect(self, vcpu: int, mm: MM, start: int, end: int, write: bool) -> None:
        """change_protection (mm/mprotect.c, 2.6.16 change_pte_range): every present PTE
        of [start, end) is taken with ptep_get_and_clear (so no hardware A/D update is lost
        between the read and the store) and stored back with the new protection by
        set_pte_at, whether or not the protection changes; then one flush."""
        for v in mm.vmas:
            if v.start >= start and v.end <= end:
                v.write = write
        ops = self.ops
        for vpn in sorted(v for v in mm.pages if start >> 12 <= v < end >> 12):
            va = vpn << 12
            ptep = self.ptep(mm, va)
            if not self.engine.read(vcpu, ptep) & 1:       # pte_present
                continue
            pte = ops.ptep_get_and_clear(vcpu, mm, va, ptep)
            pfn = mm.pages[vpn]
            # a private page only becomes writable again if no one else maps it
            can_write = write and (self.mapcount.get(pfn) == 1 and pfn != self.zero_pfn
                                   and pfn not in self.k.cache_pfns)
            ops.set_pte(vcpu, mm, va, ptep, (pte | RW) if can_write else (pte & ~RW))
        self.k.flush_tlb_mm(vcpu, mm)
