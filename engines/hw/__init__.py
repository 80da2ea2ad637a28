"""The x86 PAE machine every engine runs on: sparse machine memory, CPUs with CR0/CR3/CR4/EFER,
the PDPTE registers, the page walker, TLBs (with an optional K8 flush filter) and counters.

Imports nothing from the rest of the project. See `arch` for the architectural names,
`memory` for `PhysicalMemory` and `cpu` for `CPU`; reference/pae.md for the rules.
"""
from .arch import (A_FETCH, A_USER, A_WRITE, ENTRIES_PER_TABLE, LARGE_PAGE_SIZE, MAX_MEMORY,
                   PAGE_SHIFT, PAGE_SIZE, PAT, PDPT_ENTRIES, PFEC, Access, AddressError,
                   GeneralProtection, HwError, Maddr, Mfn, PageFault, PageFlag, Paddr, Pfn, Va,
                   addr_mask, l1_index, l2_index, l3_index, maddr_to_mfn, mfn_to_maddr,
                   pde_pte_reserved, pdpte_reserved, LARGE_PDE_EXTRA_RESERVED, U64_MASK)
from .cpu import CPU, CPUCounters, TLBConfig, TLBEntry
from .memory import PhysicalMemory

__all__ = [
    "A_FETCH", "A_USER", "A_WRITE", "ENTRIES_PER_TABLE", "LARGE_PAGE_SIZE", "MAX_MEMORY",
    "PAGE_SHIFT", "PAGE_SIZE", "PAT", "PDPT_ENTRIES", "PFEC", "Access", "AddressError",
    "GeneralProtection", "HwError", "Maddr", "Mfn", "PageFault", "PageFlag", "Paddr", "Pfn",
    "Va", "addr_mask", "l1_index", "l2_index", "l3_index", "maddr_to_mfn", "mfn_to_maddr",
    "pde_pte_reserved", "pdpte_reserved", "LARGE_PDE_EXTRA_RESERVED", "U64_MASK",
    "CPU", "CPUCounters", "TLBConfig", "TLBEntry", "PhysicalMemory",
]
