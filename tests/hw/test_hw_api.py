"""The engines.hw surface every engine relies on: names, bit values, exception types, records.

The bit values are architectural (pae.md §3, §6, §7); the rest is the model's agreed API.
"""
import dataclasses

import pytest

from engines.hw import (CPU, PFEC, Access, AddressError, CPUCounters, GeneralProtection,
                        HwError, PageFault, PageFlag, PhysicalMemory, TLBConfig, TLBEntry)

import hw_harness as h
import hw_oracle as o


def test_access_kinds_use_the_page_fault_error_code_bit_positions():
    """pae.md §6/§7: write, user and fetch sit where the error code reports them."""
    assert (int(Access.WRITE), int(Access.USER), int(Access.FETCH)) == (0x2, 0x4, 0x10)
    assert int(Access(0)) == 0


def test_error_code_bits_are_the_sdm_4_7_positions():
    """SDM §4.7 / pae.md §7: P, W/R, U/S, RSVD, I/D."""
    assert [int(b) for b in (PFEC.P, PFEC.W, PFEC.U, PFEC.RSVD, PFEC.ID)] == [1, 2, 4, 8, 0x10]


def test_page_flags_are_the_pae_entry_bit_positions():
    """pae.md §3."""
    got = [int(f) for f in (PageFlag.P, PageFlag.RW, PageFlag.US, PageFlag.PWT, PageFlag.PCD,
                            PageFlag.A, PageFlag.D, PageFlag.PS, PageFlag.G, PageFlag.XD)]
    assert got == [1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100, 1 << 63]


def test_every_hardware_exception_shares_one_base_and_address_errors_are_value_errors():
    """STYLE.md: one base exception per package."""
    assert issubclass(PageFault, HwError) and issubclass(GeneralProtection, HwError)
    assert issubclass(AddressError, HwError) and issubclass(AddressError, ValueError)


def test_a_page_fault_carries_the_unrounded_linear_address_and_an_int_error_code():
    """pae.md §7: CR2 is the full 32-bit linear address, not rounded to a page."""
    mem, cpu = h.machine({h.PDPTE_ADDR: 0})
    with pytest.raises(PageFault) as info:
        cpu.translate(0x7FFF_FFFF, Access.USER | Access.WRITE)
    assert info.value.vaddr == 0x7FFF_FFFF
    assert int(info.value.error_code) == 0x6


def test_tlb_config_defaults_to_a_k8_like_544_plus_8_entry_tlb_and_is_frozen():
    cfg = TLBConfig()
    assert (cfg.entries_4k, cfg.entries_2m) == (544, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.entries_4k = 1


def test_a_new_cpu_has_wp_pge_nxe_and_the_flush_filter_off_and_no_pdptes():
    """The CPU starts in PAE mode with all four PDPTE registers not present."""
    cpu = CPU(PhysicalMemory(1 << 20))
    assert (cpu.cr0_wp, cpu.cr4_pge, cpu.efer_nxe, cpu.flush_filter) == (False,) * 4
    assert tuple(cpu.pdptes) == (0, 0, 0, 0)
    assert cpu.tlb_entries() == []


def test_translating_before_any_cr3_load_faults_not_present():
    """pae.md §2: all PDPTE registers start not present."""
    cpu = CPU(PhysicalMemory(1 << 20))
    assert h.attempt(cpu, 0x1234) == ("fault", 0x1234, 0)


def test_cr3_is_read_only():
    cpu = CPU(PhysicalMemory(1 << 20))
    with pytest.raises(AttributeError):
        cpu.cr3 = 0x1000


def test_counters_are_a_frozen_record_of_ints_starting_at_zero():
    counters = CPU(PhysicalMemory(1 << 20)).counters()
    assert isinstance(counters, CPUCounters)
    names = {f.name for f in dataclasses.fields(counters)}
    assert set(h.COUNTERS_ONE_ACCESS_DECIDES) | {
        "ad_writes", "flush_full", "flush_global", "cr3_loads", "filter_kept"} <= names
    assert all(getattr(counters, n) == 0 and isinstance(getattr(counters, n), int)
               for n in names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        counters.walks = 5


def test_counters_are_a_snapshot_not_a_live_view():
    mem, cpu = h.machine(h.standard_tables(h.PT_BASE | o.P, h.FRAME_4K | o.P))
    snapshot = cpu.counters()
    cpu.translate(h.LA)
    assert snapshot.walks == 0 and cpu.counters().walks == 1


def test_tlb_entries_are_frozen_records():
    mem, cpu = h.machine(h.standard_tables(h.PT_BASE | o.P, h.FRAME_4K | o.P))
    cpu.translate(h.LA)
    (entry,) = cpu.tlb_entries()
    assert isinstance(entry, TLBEntry)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.pa = 0
