"""The fault path's form of the guest walk (`WalkPlan.walk_frames`): each table's gfn goes
through the P2M and the entry is taken from the machine frame's word list
(`PhysicalMemory.frame`), as Xen reads guest tables through map_domain_page. It must give
the record the walk over guest-physical memory gives, set the same A/D bits, and refuse a
table beyond the P2M with the same AddressError.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engines.hw import AddressError, PhysicalMemory
from engines.shadow import PAE, TWO_LEVEL

P, RW, US, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
XD = 1 << 63
P2M = [9, 3, 7, 5, 1, 8, 2, 6, 4]                          # gfn -> mfn

entry = st.builds(lambda gfn, flags, hi: (gfn << 12) | flags | hi,
                  st.sampled_from([2, 3, 5, 6, 8]), st.integers(0, 0x1FF),
                  st.sampled_from([0, 0, XD, 1 << 36, 1 << 51]))


def twin_memories(entries: dict[int, int]):
    """Guest-physical memory and the machine memory holding the same words through P2M."""
    gmem, mmem = PhysicalMemory(1 << 24), PhysicalMemory(1 << 24)
    for gpa, val in entries.items():
        gmem.write_u64(gpa, val)
        mmem.write_u64((P2M[gpa >> 12] << 12) | (gpa & 0xFFF), val)
    return gmem, mmem


def machine_setter(mmem):
    return lambda gpa, bits: mmem.set_bits_u64((P2M[gpa >> 12] << 12) | (gpa & 0xFFF), bits)


@settings(max_examples=300, deadline=None)
@given(pde=entry, pte=entry, access=st.sampled_from([0, 2, 4, 6, 0x10, 0x14]),
       wp=st.booleans(), nxe=st.booleans(), pde_slot=st.integers(0, 511),
       pte_slot=st.integers(0, 511))
def test_the_frames_walk_gives_the_guest_physical_walks_record_and_a_d_bits(
        pde, pte, access, wp, nxe, pde_slot, pte_slot):
    tables = {0x3000 + 8 * pde_slot: pde, (pde & 0xFFFFF000) + 8 * pte_slot: pte}
    gmem, mmem = twin_memories(tables)
    plan = PAE.plan(36, nxe)
    va = (pde_slot << 21) | (pte_slot << 12) | 0x123
    top = (0x3000 | P, 0, 0, 0)
    want = plan.walk(va, access, top, gmem.read_u64, gmem.set_bits_u64, wp)
    got = plan.walk_frames(va, access, top, mmem.frame, machine_setter(mmem), wp, P2M)
    assert got == want
    for gpa in tables:
        assert mmem.read_u64((P2M[gpa >> 12] << 12) | (gpa & 0xFFF)) == gmem.read_u64(gpa)


def test_an_untouched_table_frame_reads_as_zeros():
    mmem = PhysicalMemory(1 << 24)
    mmem.write_u64(P2M[3] << 12, (5 << 12) | P | RW | US)       # PDE 0 -> gfn 5, untouched
    w = PAE.plan(36, True).walk_frames(0x123, 0, (0x3000 | P, 0, 0, 0), mmem.frame, None,
                                       True, P2M)
    assert not w.ok and w.pfec == 0 and w.level == 1 and w.entries[-1] == 0


def test_a_table_beyond_the_p2m_is_refused_before_any_read():
    with pytest.raises(AddressError):
        PAE.plan(36, True).walk_frames(0, 0, (0x9000 | P, 0, 0, 0), PhysicalMemory(1 << 24).frame,
                                       None, True, P2M)


def test_two_level_has_no_frames_walk():
    assert TWO_LEVEL.plan(36, False).walk_frames is None
