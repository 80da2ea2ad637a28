"""The accounting every engine inherits from engines.api.Engine.

Clock of a VCPU = cycles charged explicitly + what its CPU's counters say the MMU did:
translations served x mem_access + paging entries read by walks x walk_ref + walker A/D
writes x ad_write. So a TLB miss costs walk_ref per entry the walk read (2 for a 4 KiB
page, 1 for a 2 MiB page: the PDPTE comes from its register, SDM §4.4.1), and a flush
costs its instruction plus the refills that follow. `unaccounted()` rolls every clock
and counter back (audits observe the race without taking part in it).
"""
from __future__ import annotations

import pytest

from engines.api import A_USER, A_WRITE, DomainSpec, GuestPageFault, load_cost_table
from engines.native import NativeEngine
from guestkit import Guest, load_profile

P, RW, US, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
PAGE_4K, CLEAN_4K, PAGE_2M, ABSENT = 0x5000, 0x7000, 0x200000, 0x400000


def machine(vcpus: int = 2, **overrides: int) -> NativeEngine:
    """PDPT 0x1000 -> PD 0x2000: PDE 0 -> PT 0x3000 (A set), PDE 1 a 2 MiB page (A, D
    set), PDE 2 absent. PTE 5 has A and D set; PTE 7 has neither."""
    e = NativeEngine(DomainSpec(vcpus=vcpus, memory_mib=16),
                     load_cost_table("p4-xeon-2005", overrides or None))
    mem = e.memory
    mem.write_u64(0x1000, 0x2000 | P)
    mem.write_u64(0x2000, 0x3000 | P | RW | US | A)
    mem.write_u64(0x2008, 0x400000 | P | RW | US | PS | A | D)
    mem.write_u64(0x3000 + 8 * 5, 0x10000 | P | RW | US | A | D)
    mem.write_u64(0x3000 + 8 * 7, 0x11000 | P | RW | US)
    for v in range(vcpus):
        e.write_cr3(v, 0x1000)
        e.set_control(v, pg=True, wp=True)
    return e


def cost_of(e: NativeEngine, fn) -> int:
    before = e.clock(0)
    fn()
    return e.clock(0) - before


def test_a_4k_tlb_miss_costs_an_access_and_two_entry_reads():
    e = machine()
    c = e.costs
    assert cost_of(e, lambda: e.read(0, PAGE_4K, A_USER)) == c["mem_access"] + 2 * c["walk_ref"]
    assert cost_of(e, lambda: e.read(0, PAGE_4K + 8, A_USER)) == c["mem_access"]


def test_a_2m_tlb_miss_costs_one_entry_read():
    e = machine()
    c = e.costs
    assert cost_of(e, lambda: e.read(0, PAGE_2M, A_USER)) == c["mem_access"] + c["walk_ref"]
    assert cost_of(e, lambda: e.read(0, PAGE_2M + 0x1000, A_USER)) == c["mem_access"]


def test_the_walkers_accessed_and_dirty_writes_cost_ad_write_each():
    """SDM §4.8: the first read sets A in the PTE (1 write); the first write through the
    cached clean entry re-walks and sets D (pae.md §8)."""
    e = machine()
    c = e.costs
    miss = c["mem_access"] + 2 * c["walk_ref"]
    assert cost_of(e, lambda: e.read(0, CLEAN_4K, A_USER)) == miss + c["ad_write"]
    assert cost_of(e, lambda: e.write(0, CLEAN_4K, 1, A_USER)) == miss + c["ad_write"]
    assert cost_of(e, lambda: e.write(0, CLEAN_4K, 2, A_USER)) == c["mem_access"]


def test_the_clock_follows_the_cost_table_in_force():
    e = machine(walk_ref=100, mem_access=7)
    assert cost_of(e, lambda: e.read(0, PAGE_4K, A_USER)) == 7 + 200


def test_a_flush_costs_its_instruction_plus_the_refills_that_follow():
    e = machine()
    c = e.costs
    e.read(0, PAGE_4K, A_USER)
    e.read(0, PAGE_2M, A_USER)

    def flush_and_touch_again():
        e.flush_tlb(0)
        e.read(0, PAGE_4K, A_USER)
        e.read(0, PAGE_2M, A_USER)
    assert cost_of(e, flush_and_touch_again) == (c["tlb_flush"] + 2 * c["mem_access"]
                                                 + 3 * c["walk_ref"])


def test_the_clock_is_derived_from_the_cpus_counters_and_explicit_charges():
    e = machine()
    e.read(0, PAGE_4K, A_USER)
    e.read(0, CLEAN_4K, A_USER)
    with pytest.raises(GuestPageFault):
        e.read(0, ABSENT, A_USER)
    e.charge_cycles(0, 1234, "user")
    hw, c = e.cpus[0].counters(), e.costs
    explicit = 1234 + c["pf_delivery"] + c["cr3_write"] + 2 * c["cr_write"]
    assert e.clock(0) == (explicit + (hw.tlb_hits + hw.tlb_misses) * c["mem_access"]
                          + hw.walk_refs * c["walk_ref"] + hw.ad_writes * c["ad_write"])


def test_the_cycle_breakdown_accounts_for_every_cycle_of_every_vcpu():
    e = NativeEngine(DomainSpec(vcpus=2, memory_mib=64), load_cost_table())
    Guest(e, load_profile("tiny")).boot()
    breakdown = e.cycle_breakdown()
    assert sum(breakdown.values()) == e.clock(0) + e.clock(1)
    assert breakdown["walk_ref"] == e.hw_counters().walk_refs * e.costs["walk_ref"]
    assert {"pf_delivery", "pf_handler", "user", "mem_access"} <= set(breakdown)


def test_advance_to_idles_forward_only():
    e = machine()
    now = e.clock(1)
    e.advance_to(1, now + 500)
    assert e.clock(1) == now + 500 and e.cycles_by["idle"] == 500
    e.advance_to(1, now)
    assert e.clock(1) == now + 500


def test_hw_counters_sum_the_cpus_and_counters_name_them_hw():
    e = machine()
    e.read(0, PAGE_4K, A_USER)
    e.read(1, PAGE_4K, A_USER)
    e.read(1, PAGE_2M, A_USER)
    assert e.hw_counters().tlb_misses == 3
    counters = e.counters()
    assert counters["hw.tlb_misses_4k"] == 2 and counters["hw.tlb_misses_2m"] == 1
    assert counters["cr3_write"] == 2 and counters["machine_frames_materialised"] >= 3


def _everything(e: NativeEngine) -> tuple:
    """Clocks and counters; gauges (memory materialised) describe memory, which stays."""
    counters = {k: v for k, v in e.counters().items() if k not in e.gauges()}
    return ([e.clock(v) for v in range(e.spec.vcpus)], counters, e.cycle_breakdown(),
            dict(e.stats), dict(e.cycles_by), [cpu.counters() for cpu in e.cpus])


def _busy(e: NativeEngine) -> None:
    e.read(0, PAGE_4K, A_USER)
    e.write(1, CLEAN_4K, 9, A_USER)
    with pytest.raises(GuestPageFault):
        e.read(1, ABSENT, A_USER)
    e.charge(0, "syscall", 3)
    e.charge_cycles(1, 999, "user")
    e.ipi(0, 1)
    e.write_cr3(0, 0x1000)
    e.invlpg(1, PAGE_2M)
    e.flush_tlb(0, include_global=True)
    e.advance_to(1, e.clock(1) + 10_000)


def test_unaccounted_rolls_back_every_clock_and_counter():
    e = machine()
    e.read(0, PAGE_2M, A_USER)
    before = _everything(e)
    with e.unaccounted():
        _busy(e)
        assert _everything(e) != before          # the block did count, while it ran
    assert _everything(e) == before


def test_unaccounted_rolls_back_even_when_the_block_raises():
    e = machine()
    before = _everything(e)
    with pytest.raises(GuestPageFault):
        with e.unaccounted():
            _busy(e)
            e.read(0, ABSENT, A_USER)
    assert _everything(e) == before


def test_unaccounted_keeps_what_the_block_wrote_to_memory():
    """Only accounting is rolled back: memory and the TLB are states the hardware could
    have reached anyway."""
    e = machine()
    with e.unaccounted():
        e.write(0, PAGE_4K, 0x55, A_USER | A_WRITE)
    assert e.memory.read_u64(0x10000) == 0x55
    assert e.read(0, PAGE_4K, A_USER) == 0x55
