"""A small hand-built PAE address space on a NativeEngine, for the engine tests.

PDPT at 0x1000 (slot 0 -> PD 0x2000), PT at 0x3000 under PDE 0; every mapping below is
one entry of it, with A (and D) preset unless the name says otherwise, so a first access
reads exactly 2 entries (PDE, PTE) or 1 (a PS=1 PDE) and writes none (SDM §4.4.2, §4.8).
"""
from __future__ import annotations

from engines.api import DomainSpec, load_cost_table
from engines.native import NativeEngine

P, RW, US, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
PDPT, PD, PT = 0x1000, 0x2000, 0x3000

USER_RW = 0x00005000          # -> 0x10000, user read/write
USER_RO = 0x00006000          # -> 0x11000, user read-only
FRESH = 0x00007000            # -> 0x12000, user read/write, A and D clear
KERNEL = 0x00008000           # -> 0x13000, supervisor read/write
NOEXEC = 0x00009000           # -> 0x14000, user read-only, XD
GLOBAL = 0x0000A000           # -> 0x15000, supervisor, global
LARGE = 0x00200000            # PDE 1: 2 MiB page at 0x400000, user read/write
ABSENT = 0x00400000           # PDE 2: not present

PTES = {USER_RW: 0x10000 | P | RW | US | A | D, USER_RO: 0x11000 | P | US | A,
        FRESH: 0x12000 | P | RW | US, KERNEL: 0x13000 | P | RW | A | D,
        NOEXEC: 0x14000 | P | US | A | XD, GLOBAL: 0x15000 | P | RW | A | D | G}
FRAME = {va: pte & 0xFFFFF000 for va, pte in PTES.items()}
FRAME[LARGE] = 0x400000


def engine(vcpus: int = 2, paging: bool = True, **overrides: int) -> NativeEngine:
    """A native engine whose VCPU 0 (and every VCPU if `paging`) runs on the tables above
    with CR0.PG|WP, CR4.PGE and EFER.NXE set."""
    e = NativeEngine(DomainSpec(vcpus=vcpus, memory_mib=16),
                     load_cost_table("p4-xeon-2005", overrides or None))
    mem = e.memory
    mem.write_u64(PDPT, PD | P)
    mem.write_u64(PD, PT | P | RW | US | A)
    mem.write_u64(PD + 8, 0x400000 | P | RW | US | PS | A | D)
    for va, pte in PTES.items():
        mem.write_u64(PT + 8 * ((va >> 12) & 511), pte)
    if paging:
        for v in range(vcpus):
            e.write_cr3(v, PDPT)
            e.set_control(v, pg=True, wp=True, pge=True, nxe=True)
    return e


def pte_addr(va: int) -> int:
    return PT + 8 * ((va >> 12) & 511)
