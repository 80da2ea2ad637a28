"""mprotect as 2.6.16 i386 PAE Linux does it (mm/mprotect.c change_pte_range): each present
PTE is taken with ptep_get_and_clear (xchg of the low half with 0, then 0 to the high
half) and stored back by set_pte_at (high half, then low), even when the protection does
not change; then one flush. What each engine sees of it: four 4-byte stores on bare
hardware, four emulated writes under shadow paging (the L1 is shadowed), and under Xen PV
(XenLinux 2.6.18 clears with one cmpxchg8b) one ptwr emulation and one update_va_mapping
(set_pte_at on the current mm)."""
from __future__ import annotations

import pytest

from engines.api import DomainSpec, load_cost_table
from engines.native import NativeEngine
from engines.paravirt import PVEngine
from engines.shadow import ShadowEngine

import guest_harness as h

RW = 0x2
COSTS = load_cost_table()


def _run_init(engine):
    _, guest = h.run_init(h.heap_sleeper, engine=engine)
    init = h.task_by_place(guest, "init")
    return guest, guest.kernel, init.mm, init.image.region(init.mm, "heap").start & ~0xFFF


def _recorded_u32(engine, ptep, action):
    stores, real = [], engine.write_u32

    def write_u32(vcpu, addr, value, *a, **kw):
        if addr in (ptep, ptep + 4):
            stores.append((addr - ptep, value))
        return real(vcpu, addr, value, *a, **kw)
    engine.write_u32 = write_u32
    try:
        action()
    finally:
        del engine.write_u32
    return stores


def _engine(kind):
    spec = {"native": DomainSpec(vcpus=1, memory_mib=64),
            "shadow": DomainSpec(vcpus=1, memory_mib=64),
            "paravirt": DomainSpec(vcpus=1, memory_mib=64,
                                   options={"strategy": "per-pagetable"})}[kind]
    return {"native": NativeEngine, "shadow": ShadowEngine, "paravirt": PVEngine}[kind](
        spec, COSTS)


@pytest.mark.parametrize("write", [False, True])
def test_each_present_pte_is_cleared_then_set_as_four_halves_even_when_unchanged(write):
    engine = _engine("native")
    guest, k, mm, page = _run_init(engine)
    ptep = k.mmm.ptep(mm, page)
    before = engine.read(0, ptep)
    assert before & 1 and before & RW                  # the heap page is mapped writable
    stores = _recorded_u32(engine, ptep,
                           lambda: k.mmm.mprotect(0, mm, page, page + 4096, write))
    after = engine.read(0, ptep)
    assert after == (before if write else before & ~RW)
    assert stores == [(0, 0), (4, 0), (4, after >> 32), (0, after & 0xFFFFFFFF)]


def test_under_shadow_paging_each_half_is_an_emulated_write():
    engine = _engine("shadow")
    guest, k, mm, page = _run_init(engine)
    n = engine.counters()["sh_emulate"]
    k.mmm.mprotect(0, mm, page, page + 4096, False)
    assert engine.counters()["sh_emulate"] == n + 4
    assert engine.audit() == [] and guest.audit() == []


def test_under_xen_pv_the_clear_is_one_ptwr_cmpxchg8b_and_the_set_one_update_va_mapping():
    engine = _engine("paravirt")
    guest, k, mm, page = _run_init(engine)
    c0 = engine.counters()
    ptep = k.mmm.ptep(mm, page)
    before = engine.read(0, ptep)
    k.mmm.mprotect(0, mm, page, page + 4096, False)
    c1 = engine.counters()
    assert engine.read(0, ptep) == before & ~RW
    assert c1.get("ptwr_emulations", 0) - c0.get("ptwr_emulations", 0) == 1
    assert c1.get("calls_to_update_va", 0) - c0.get("calls_to_update_va", 0) == 1
    assert engine.audit() == [] and guest.audit() == []
