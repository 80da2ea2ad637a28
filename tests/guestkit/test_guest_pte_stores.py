"""How the native paravirt-ops backend stores page-table entries (2.6 PAE Linux,
include/asm-i386/pgtable-3level.h): set_pte as two 32-bit halves, high then low; a clear
low then high; ptep_set_wrprotect as one 4-byte locked RMW of the low half; PMDs and PDPTEs
as one 64-bit store. Each store is visible to an engine that traps it (shadow.md §2)."""
from __future__ import annotations

from engines.api import DomainSpec, load_cost_table
from engines.native import NativeEngine
from guestkit.pvops import NativeMMU


class Recording(NativeEngine):
    """A native engine that logs every store the guest makes: (width, va, value)."""

    def __init__(self):
        super().__init__(DomainSpec(vcpus=1, memory_mib=16), load_cost_table())
        self.cpus[0].cr0_pg = False             # physical addresses: no tables needed
        self.log: list[tuple[int, int, int]] = []

    def write(self, vcpu, va, value, access=0):
        self.log.append((8, va, value))
        super().write(vcpu, va, value, access)

    def write_u32(self, vcpu, va, value, access=0):
        self.log.append((4, va, value))
        super().write_u32(vcpu, va, value, access)


def _ops():
    e = Recording()
    return e, NativeMMU(e, e.boot_info())


PTEP = 0x5008
NEW = (1 << 63) | (0x123 << 12) | 0x67          # NX, frame 0x123, present
OLD = (1 << 63) | (0x456 << 12) | 0x27


def test_set_pte_of_a_present_entry_stores_the_high_half_then_the_low_half():
    e, ops = _ops()
    ops.set_pte(0, None, 0x1000, PTEP, NEW)
    assert e.log == [(4, PTEP + 4, NEW >> 32), (4, PTEP, NEW & 0xFFFFFFFF)]
    assert e.read(0, PTEP) == NEW


def test_clearing_a_pte_stores_the_low_half_first_so_p_drops_before_the_frame_changes():
    e, ops = _ops()
    e.memory.write_u64(PTEP, OLD)
    ops.set_pte(0, None, 0x1000, PTEP, 0)
    assert e.log == [(4, PTEP, 0), (4, PTEP + 4, 0)]
    assert e.read(0, PTEP) == 0


def test_ptep_set_wrprotect_is_one_4_byte_store_of_the_low_half():
    e, ops = _ops()
    e.memory.write_u64(PTEP, OLD)
    ops.ptep_set_wrprotect(0, None, 0x1000, PTEP)
    assert e.log == [(4, PTEP, (OLD & 0xFFFFFFFF) & ~0x2)]
    assert e.read(0, PTEP) == OLD & ~0x2


def test_pmds_and_pdptes_are_single_64_bit_stores():
    e, ops = _ops()
    ops.set_pmd(0, None, PTEP, NEW)
    ops.set_pdpte(0, None, PTEP + 8, 0x7001)
    assert e.log == [(8, PTEP, NEW), (8, PTEP + 8, 0x7001)]
