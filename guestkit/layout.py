"""The guest kernel's virtual layout and its page allocator (i386 PAE, 3G/1G split).

Follows 2.6-era arch/i386 (reference/linux-guest.md §1.1-1.2): PAGE_OFFSET 0xC0000000, lowmem
direct-mapped there, a 128 MiB vmalloc reserve, fixmap/pkmap at the top of the kernel space
(below Xen's hole at 0xF5800000 when a hypervisor takes one). The page allocator is a
deterministic LIFO free list (the buddy allocator's per-CPU hot lists behave LIFO); boot-time
allocations come from the lowest free frames, as bootmem does.
"""
from __future__ import annotations

from .errors import GuestPanic

PAGE_OFFSET = 0xC0000000
TASK_SIZE = PAGE_OFFSET
PAGE = 4096
LOWMEM_LIMIT = 896 << 20
VMALLOC_RESERVE = 128 << 20
VMALLOC_OFFSET = 8 << 20
FIXADDR_TOP_NATIVE = 0xFFFFE000
FIXMAP_PAGES = 4          # fixmap + pkmap page tables built at paging_init

# PTE/PDE flag bits (the guest's own copy of the architecture's names)
P, RW, US, PWT, PCD, A, D, PS, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
KERNEL_PDE = P | RW | A | D        # _KERNPG_TABLE
USER_PDE = P | RW | US | A | D     # _PAGE_TABLE
PDPTE_FLAGS = P                    # a PAE PDPTE carries only P (pae.md §2)


def kva(pfn: int) -> int:
    """Direct-map virtual address of pseudo-physical frame `pfn`."""
    return PAGE_OFFSET + (pfn << 12)


def kva_to_pfn(va: int) -> int:
    return (va - PAGE_OFFSET) >> 12


class PageAllocator:
    """Free frames in [first, end): alloc() hands out the lowest free frame first at boot
    and the most recently freed afterwards (LIFO)."""

    def __init__(self, first: int, end: int):
        if first >= end:
            raise GuestPanic(f"no free memory: first free pfn {first:#x} >= end {end:#x}")
        self._free = list(range(end - 1, first - 1, -1))
        self._free_set = set(self._free)
        self.total = end - first
        self.peak_used = 0

    def alloc(self) -> int:
        if not self._free:
            raise GuestPanic("out of memory: page allocator empty")
        pfn = self._free.pop()
        self._free_set.discard(pfn)
        used = self.total - len(self._free)
        if used > self.peak_used:
            self.peak_used = used
        return pfn

    def free(self, pfn: int) -> None:
        if pfn in self._free_set:
            raise GuestPanic(f"double free of pfn {pfn:#x}")
        self._free.append(pfn)
        self._free_set.add(pfn)

    @property
    def used(self) -> int:
        return self.total - len(self._free)
