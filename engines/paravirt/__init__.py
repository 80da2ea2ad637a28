"""Xen-style paravirtualised PAE (Xen 3.0.3): the page-type system, validation, the MMU
hypercalls, writable page tables, the hypervisor area with its linear maps, and the four
kernel-L2 strategies of the seed post, as one `Engine` (reference/xen-pv.md).

Modules: `frames` (count_info/type_info, flush clock), `validate` (per-level checks,
mod_lN_entry), `xenarea` (Xen's slots, linear maps, strategies), `builder` (domain builder),
`hypercalls`, `ptwr`, `audit`, `engine` (PVEngine). `OPTIONS`/`DEFAULTS` describe
`DomainSpec.options` for race spec validation, as does `machine_memory_range(spec)` for
`machine_memory_mib`; `KNOWN_BROKEN(options, vcpus)` names the cells that must fail visibly
(`shared` on SMP).
"""
from .engine import DEFAULTS, KNOWN_BROKEN, OPTIONS, PVEngine, machine_memory_range

__all__ = ["PVEngine", "OPTIONS", "DEFAULTS", "KNOWN_BROKEN", "machine_memory_range"]
