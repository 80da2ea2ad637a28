"""Start of day of the guest kernel on bare hardware or a translated engine: the boot page
tables of head.S, paging_init's swapper_pg_dir with the kernel direct map, fixmap/pkmap page
tables and the low identity map for SMP bring-up (arch/i386/kernel/head.S and
arch/i386/mm/init.c; reference/linux-guest.md §1.2-1.3).

Modelling choice: head.S here builds its boot tables in PAE format (one PDPT, identity and
PAGE_OFFSET mappings of the first 8 MiB through two 4 KiB page tables), as kernels from
2.6.25 do, instead of the 2-level tables of 2.6.10: the model's hardware is PAE-only.
A Xen-PV backend that finds its tables already built by the domain builder provides its own
`paging_init(kernel)` instead of this module's.
"""
from __future__ import annotations

from .layout import (A, D, FIXMAP_PAGES, G, KERNEL_PDE, P, PAGE_OFFSET, PS, RW, kva)

BOOT_MAP = 8 << 20          # head.S maps the first 8 MiB
SMP_IDENTITY = 16 << 20     # identity map kept for the APs' trampoline (8 x 2 MiB)


def head_s(k) -> None:
    """Kernel entry with paging off: build boot tables with physical stores, load CR3,
    turn paging on (CR0.PG|WP)."""
    e, v = k.engine, 0
    pdpt = k.boot_alloc()
    pmd0, pmd3 = k.boot_alloc(), k.boot_alloc()
    pts = [k.boot_alloc() for _ in range(BOOT_MAP >> 21)]
    for pfn in [pdpt, pmd0, pmd3] + pts:
        k.phys_clear(pfn)
    for i, pt in enumerate(pts):
        for j in range(512):
            e.write(v, (pt << 12) + 8 * j, (((i << 9) + j) << 12) | P | RW | A | D)
        e.write(v, (pmd0 << 12) + 8 * i, (pt << 12) | KERNEL_PDE)
        e.write(v, (pmd3 << 12) + 8 * i, (pt << 12) | KERNEL_PDE)
    e.write(v, pdpt << 12, (pmd0 << 12) | P)
    e.write(v, (pdpt << 12) + 24, (pmd3 << 12) | P)
    e.write_cr3(v, pdpt << 12)
    e.set_control(v, pg=True, wp=True)
    k.emit("paging_on", v)


def paging_init(k) -> None:
    """pagetable_init + load_cr3(swapper_pg_dir) + PGE + __flush_tlb_all."""
    e, ops, v = k.engine, k.ops, 0
    if k.features["nxe"]:
        e.set_control(v, nxe=True)
    pdpt = k.boot_alloc()
    pmds = [k.boot_alloc() for _ in range(4)]
    for pfn in [pdpt] + pmds:
        e.clear_page(v, kva(pfn))
    k.swapper_pa = pdpt << 12
    k.kernel_pmd = pmds[3]
    k.swapper_pmds = pmds
    glob = G if k.features["pge"] and ops.global_pages else 0
    first_chunks = []
    for chunk in range(k.lowmem_pages >> 9):              # one PMD entry per 2 MiB
        pmdp = kva(pmds[3]) + 8 * chunk
        if ops.superpages:
            entry = ops.make_entry(chunk << 9, P | RW | A | D | PS | glob)
        else:
            pt = k.boot_alloc()
            e.clear_page(v, kva(pt))
            for j in range(512):
                e.write(v, kva(pt) + 8 * j,
                        ops.make_entry((chunk << 9) + j, P | RW | A | D | glob))
            ops.alloc_pt(v, None, pt, 1)
            entry = ops.make_entry(pt, KERNEL_PDE)
        ops.set_pmd(v, None, pmdp, entry)
        if chunk < SMP_IDENTITY >> 21:
            first_chunks.append(entry)
    if k.vcpus > 1:
        for i, entry in enumerate(first_chunks):          # low identity map for the APs
            ops.set_pmd(v, None, kva(pmds[0]) + 8 * i, entry & ~glob)
        k.identity_entries = len(first_chunks)
    for i in range(FIXMAP_PAGES):                         # fixmap + pkmap page tables
        pt = k.boot_alloc()
        e.clear_page(v, kva(pt))
        ops.alloc_pt(v, None, pt, 1)
        slot = ((k.fixaddr_top - (FIXMAP_PAGES - i) * (2 << 20)) >> 21) & 511
        ops.set_pmd(v, None, kva(pmds[3]) + 8 * slot, ops.make_entry(pt, KERNEL_PDE))
    for i, pmd in enumerate(pmds):
        ops.set_pdpte(v, None, PAGE_OFFSET + k.swapper_pa + 8 * i, ops.make_entry(pmd, P))
    ops.write_cr3(v, k.swapper_pa)
    if k.features["pge"]:
        e.set_control(v, pge=True)
    ops.flush_tlb_global(v)


def zap_low_mappings(k) -> None:
    """Clear the APs' identity map and flush every TLB, globals included (IPIs)."""
    v = 0
    for i in range(k.identity_entries):
        k.ops.set_pmd(v, None, kva(k.swapper_pmds[0]) + 8 * i, 0)
    k.identity_entries = 0
    k.flush_tlb_all(v)
