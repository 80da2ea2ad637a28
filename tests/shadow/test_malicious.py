"""A malicious guest (issue 6 §4): garbage page-table entries, frames beyond the P2M,
reserved bits, self-mapping and punned page tables, garbage PDPTEs, user-mode writes to
page tables, whole-page stores onto live tables, pokes at Xen's area, and a shadow pool
far too small — with audit() after every step. The guest gets architectural errors; the
engine keeps its invariants and never fails with anything else.
"""
from __future__ import annotations

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from engines.api import GuestCrash, GuestPageFault
from engines.hw import AddressError, GeneralProtection

import tiny_guest as g

ALLOWED = (GuestPageFault, GeneralProtection, AddressError)
any_frame = st.one_of(st.sampled_from(g.DATA + g.TEST_L1 + (1, 2, 3, 4) + g.DIRECT_L1),
                      st.integers(0, (1 << 24) - 1))
garbage = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.builds(lambda f, fl, hi: (f << 12) | fl | hi, any_frame, st.integers(0, 0xFFF),
              st.sampled_from([0, g.XD, 1 << 36, 1 << 52, 1 << 62])))
slot = st.integers(0, 511)
op = st.one_of(
    st.tuples(st.just("w"), st.sampled_from(g.TEST_L1 + (3, 4, g.KERNEL_L2, 1) + g.DIRECT_L1[:1]),
              slot, garbage),
    st.tuples(st.just("u"), st.integers(0, 3), st.integers(0, 7), garbage),     # user store
    st.tuples(st.just("r"), st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 2, 4, 6, 0x10])),
    st.tuples(st.just("cr3"), st.sampled_from([g.PDPT_A, g.PDPT_B, 0x3000, 0x40000, 0x7FE0])),
    st.tuples(st.just("clear"), st.sampled_from(g.TEST_L1 + (3, 4, g.KERNEL_L2))),
    st.tuples(st.just("copy"), st.sampled_from(g.TEST_L1 + (3, 4)), st.sampled_from(g.DATA)),
    st.tuples(st.just("flush"),),
    st.tuples(st.just("pg"), st.booleans()),
)


def attack(e, o, vcpu):
    kind = o[0]
    if kind == "w":
        e.write(vcpu, g.kva(o[1]) + 8 * o[2], o[3])
    elif kind == "u":
        e.write(vcpu, g.test_va(o[1], o[2]), o[3], 4)
    elif kind == "r":
        e.read(vcpu, o[1] & ~7, o[2] & ~2) if not o[2] & 2 else e.write(vcpu, o[1] & ~7, 1, o[2])
    elif kind == "cr3":
        e.write_cr3(vcpu, o[1])
    elif kind == "clear":
        e.clear_page(vcpu, g.kva(o[1]))
    elif kind == "copy":
        e.copy_page(vcpu, g.kva(o[1]), g.kva(o[2]))
    elif kind == "flush":
        e.flush_tlb(vcpu, True)
    elif kind == "pg":
        e.set_control(vcpu, pg=o[1])


@settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(st.tuples(st.integers(0, 1), op), max_size=40),
       options=st.sampled_from([{}, {"oos": True, "prefetch": True}, {"pool_pages": 14},
                                {"oos": True, "pool_pages": 14},
                                {"early_unshadow": False, "wrmap_heuristic": False}]))
def test_malicious_guest_keeps_every_invariant(ops, options):
    e = g.make("shadow", 2, **options)
    g.boot(e, 2)
    for i, (vcpu, o) in enumerate(ops):
        try:
            attack(e, o, vcpu)
        except ALLOWED:
            pass
        except GuestCrash:
            assert options.get("pool_pages") == 14, "only a starved pool may crash the domain"
            return
        bad = e.audit()
        assert bad == [], f"step {i} {o}: {bad}"
