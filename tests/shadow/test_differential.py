"""Differential test (issue 6 §4): random sequences of guest page-table writes, CR3 loads,
invlpg/flushes, control-register writes and memory accesses by a correctly flushing guest
give exactly the same guest-visible outcomes on the shadow engine as on bare hardware:
values read, page faults and their error codes, #GP on CR3 loads, and in the end every
guest frame (so guest A/D bits included). The shadow engine is audited after every step.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from engines.hw import GeneralProtection

import tiny_guest as g

FRAMES = g.DATA + g.TEST_L1 + (g.KERNEL_L2, 3, 4, g.PDPT_PFN, g.DIRECT_L1[0])
flags = st.integers(0, 0x1FF)
extra = st.sampled_from([0, 0, 0, g.XD, 1 << 40, 1 << 62])
pte_value = st.builds(lambda f, fl, x: (f << 12) | fl | x, st.sampled_from(FRAMES), flags, extra)
pde_value = st.one_of(
    st.builds(lambda f, fl, x: (f << 12) | (fl & ~g.PS) | x,
              st.sampled_from(g.TEST_L1 + (3, 4)), flags, extra),
    st.builds(lambda base, fl: (base << 21) | fl | g.PS, st.integers(0, 7), flags),
    st.just(0))
pdpte_value = st.sampled_from([0, (3 << 12) | 1, (4 << 12) | 1, (2 << 12) | 1,
                               (3 << 12) | 3, (5 << 12) | 1])
vcpu = st.integers(0, 1)
op = st.one_of(
    st.tuples(st.just("pte"), vcpu, st.sampled_from(g.TEST_L1), st.integers(0, 7), pte_value,
              st.booleans()),
    st.tuples(st.just("pde"), vcpu, st.sampled_from((3, 4)), st.integers(0, 3), pde_value,
              st.booleans()),
    st.tuples(st.just("pdpte"), vcpu, st.integers(0, 7), pdpte_value),
    st.tuples(st.just("access"), vcpu, st.integers(0, 3), st.integers(0, 7),
              st.sampled_from(["read", "write", "fetch"]), st.booleans()),
    st.tuples(st.just("access"), vcpu, st.integers(0, 3), st.integers(0, 7),
              st.sampled_from(["read", "write"]), st.booleans()),
    st.tuples(st.just("cr3"), vcpu, st.sampled_from([g.PDPT_A, g.PDPT_B])),
    st.tuples(st.just("cr"), vcpu, st.sampled_from(["wp", "nxe", "pge"]), st.booleans()),
    st.tuples(st.just("clear"), vcpu, st.sampled_from(g.DATA[:2] + g.TEST_L1)),
    st.tuples(st.just("half"), vcpu, st.sampled_from(g.TEST_L1), st.integers(0, 7),
              pte_value),
)


def flush_everywhere(e, vcpus, src, invlpg):
    """What a correct guest does after changing a translation: local flush + shootdown."""
    for v in range(vcpus):
        if v != src:
            e.ipi(src, v)
        if invlpg:
            for pde in range(4):
                for pte in range(8):
                    e.invlpg(v, g.test_va(pde, pte))
        else:
            e.flush_tlb(v, include_global=True)


def step(e, vcpus, o, counter):
    kind, v = o[0], o[1] % vcpus
    if kind == "pte" or kind == "pde":
        _, _, table, idx, value, invlpg = o
        r = g.outcome(e.write, v, g.kva(table) + 8 * idx, value)
        flush_everywhere(e, vcpus, v, invlpg and kind == "pte")
        return r
    if kind == "pdpte":
        return g.outcome(e.write, v, g.kva(g.PDPT_PFN) + 8 * o[2], o[3])
    if kind == "half":
        _, _, table, idx, value = o
        va = g.kva(table) + 8 * idx
        r = (g.write_u32(e, v, va + 4, value >> 32), g.write_u32(e, v, va, value & 0xFFFFFFFF))
        flush_everywhere(e, vcpus, v, False)
        return r
    if kind == "access":
        _, _, pde, pte, what, user = o
        r = g.access(e, v, g.test_va(pde, pte, 8 * (counter % 512)), what, user, counter)
        if what == "write":
            flush_everywhere(e, vcpus, v, False)   # the store may have hit a page table
        return r
    if kind == "cr3":
        try:
            e.write_cr3(v, o[2])
        except GeneralProtection:
            return "gp"
        return None
    if kind == "cr":
        try:
            e.set_control(v, **{o[2]: o[3]})
        except GeneralProtection:
            return "gp"
        return None
    if kind == "clear":
        r = g.outcome(e.clear_page, v, g.kva(o[2]))
        flush_everywhere(e, vcpus, v, False)
        return r
    raise AssertionError(kind)


def run_both(ops, vcpus, **options):
    native, shadow = g.make("native", vcpus), g.make("shadow", vcpus, **options)
    g.boot(native, vcpus)
    g.boot(shadow, vcpus)
    assert shadow.audit() == []
    for i, o in enumerate(ops):
        a, b = step(native, vcpus, o, i + 1), step(shadow, vcpus, o, i + 1)
        assert a == b, f"step {i} {o}: native {a} vs shadow {b}"
        bad = shadow.audit()
        assert bad == [], f"step {i} {o}: {bad}"
    for pfn in range(128):
        assert g.guest_page(native, pfn) == g.guest_page(shadow, pfn), f"guest pfn {pfn:#x}"
    return native, shadow


# No shrinking: each example boots two engines, and a failure prints its whole op list.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
SETTINGS = settings(max_examples=60, deadline=None, phases=PHASES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.lists(op, max_size=30))
def test_shadow_matches_bare_hardware_on_one_vcpu(ops):
    run_both(ops, 1)


@SETTINGS
@given(st.lists(op, max_size=30))
def test_shadow_matches_bare_hardware_on_two_vcpus(ops):
    run_both(ops, 2)


@pytest.mark.parametrize("options", [
    {"early_unshadow": False}, {"prefetch": True}, {"oos": True},
    {"wrmap_heuristic": False}, {"pool_pages": 14}, {"oos": True, "prefetch": True},
    {"oos": True, "pool_pages": 14}])
@settings(max_examples=25, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(op, max_size=30))
def test_shadow_matches_bare_hardware_under_each_option(options, ops):
    run_both(ops, 2, **options)
