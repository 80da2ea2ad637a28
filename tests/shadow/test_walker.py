"""The one guest walker, driven by a PagingMode value (shadow.md §4 "Mode templating").

PAE: for random tables the walker gives exactly what the hardware model gives — the frame,
or the fault and its error code — and leaves the same A/D bits behind (pae.md §5-9;
XSA-176: the software walk must raise reserved-bit faults exactly as hardware does).
2-level: the same code walks legacy 32-bit tables (4-byte entries, 1024 per table, 4 MiB
pages only with CR4.PSE, PSE-36 high frame bits, no NX), SDM §4.3.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engines.hw import CPU, AddressError, PageFault, PhysicalMemory
from engines.shadow import PAE, TWO_LEVEL, guest_walk

P, RW, US, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
XD = 1 << 63


def walk(mode, mem, va, access, top, wp=True, nxe=True, pse=True, m=36, write=True):
    rd = mem.read_u64 if mode is PAE else mem.read_u32
    def set_bits(gpa, bits):
        if mode is PAE:
            mem.set_bits_u64(gpa, bits)
        else:
            mem.write_u32(gpa, mem.read_u32(gpa) | bits)
    return guest_walk(mode, va, access, top=top, read=rd, set_bits=set_bits if write else None,
                      wp=wp, nxe=nxe, pse=pse, maxphyaddr=m)


entry = st.builds(lambda frame, flags, hi: (frame << 12) | flags | hi,
                  st.sampled_from([2, 3, 4, 0x200, 0x400]), st.integers(0, 0x1FF),
                  st.sampled_from([0, 0, XD, 1 << 36, 1 << 51, 1 << 62]))


@settings(max_examples=300, deadline=None)
@given(pde=entry, pte=entry, pdpte=st.sampled_from([0, 0x2001, 0x2003, 0x2000]),
       access=st.sampled_from([0, 2, 4, 6, 0x10, 0x14]), wp=st.booleans(), nxe=st.booleans())
def test_pae_walk_gives_what_the_hardware_gives(pde, pte, pdpte, access, wp, nxe):
    la = 0x40A07ABC
    mems = []
    for _ in range(2):
        mem = PhysicalMemory(1 << 36)
        mem.write_u64(0x1000 + 8, pdpte)
        mem.write_u64(0x2000 + 8 * 5, pde)
        mem.write_u64((pde & 0xFFFFFF000) + 8 * 7, pte)
        mems.append(mem)
    cpu = CPU(mems[0])
    cpu.cr0_wp, cpu.efer_nxe = wp, nxe
    try:
        cpu.load_cr3(0x1000)
    except Exception:
        return                                # #GP at load: the walker never runs
    try:
        hw = ("ok", cpu.translate(la, access))
    except PageFault as pf:
        hw = ("pf", pf.error_code)
    w = walk(PAE, mems[1], la, access, cpu.pdptes, wp=wp, nxe=nxe)
    if w.ok:
        mine = ("ok", (w.gfn << 12) | (la & 0xFFF))
    else:
        mine = ("pf", w.pfec)
    assert mine == hw
    for addr in (0x2000 + 40, (pde & 0xFFFFFF000) + 56):
        assert mems[0].read_u64(addr) == mems[1].read_u64(addr), f"A/D at {addr:#x}"


def test_pae_pdpte_is_a_register_not_memory():
    mem = PhysicalMemory(1 << 24)
    mem.write_u64(0x3000, 0x5000 | P | RW | US)
    mem.write_u64(0x5000, 0x7000 | P | RW | US)
    w = walk(PAE, mem, 0, 4, top=(0x3000 | P, 0, 0, 0))
    assert w.ok and w.gfn == 7 and w.gpas[0] is None and w.refs == 2


def two_level_tables():
    mem = PhysicalMemory(1 << 36)
    mem.write_u32(0x1000 + 4 * 1, 0x2000 | P | RW | US)          # PDE 1 -> PT at 0x2000
    mem.write_u32(0x2000 + 4 * 3, 0x9000 | P | US)               # PTE 3 -> 0x9000, read-only
    mem.write_u32(0x1000 + 4 * 2, 0x00800000 | P | RW | PS)      # PDE 2: 4 MiB at 8 MiB
    # PDE 5: 4 MiB page whose PSE-36 bits 16:13 give physical bits 35:32 = 0x3
    mem.write_u32(0x1000 + 4 * 5, 0x01000000 | (0x3 << 13) | P | RW | US | PS)
    return mem


def test_two_level_walk_uses_4_byte_entries_and_10_bit_indices():
    mem = two_level_tables()
    w = walk(TWO_LEVEL, mem, (1 << 22) | (3 << 12) | 0x123, 4, top=0x1000)
    assert w.ok and w.gfn == 9 and w.level == 1 and w.refs == 2
    assert w.gpas == (0x1004, 0x200C)
    assert mem.read_u32(0x1004) & A and mem.read_u32(0x200C) & A
    assert not mem.read_u32(0x200C) & D


def test_two_level_write_to_read_only_page_faults_with_p_w_u():
    mem = two_level_tables()
    w = walk(TWO_LEVEL, mem, (1 << 22) | (3 << 12), 6, top=0x1000)
    assert not w.ok and w.pfec == P | 2 | 4
    assert not mem.read_u32(0x200C) & D                          # leaf untouched on a fault


def test_two_level_4mib_page_needs_cr4_pse():
    mem = two_level_tables()
    va = (2 << 22) | 0x345678
    w = walk(TWO_LEVEL, mem, va, 2, top=0x1000, pse=True)
    assert w.ok and w.level == 2 and (w.gfn << 12) | (va & 0xFFF) == 0x00800000 + 0x345678
    assert mem.read_u32(0x1008) & (A | D) == A | D
    mem2 = two_level_tables()
    w2 = walk(TWO_LEVEL, mem2, va, 0, top=0x1000, pse=False)   # PS ignored: a PT at 8 MiB
    assert w2.level == 1 and w2.refs == 2


def test_two_level_pse36_high_frame_bits_and_reserved_bit_21():
    mem = two_level_tables()
    w = walk(TWO_LEVEL, mem, (5 << 22) | 0x1000, 4, top=0x1000)
    assert w.ok and w.gfn << 12 == (0x3 << 32) | 0x01000000 | 0x1000
    mem.write_u32(0x1000 + 4 * 5, mem.read_u32(0x1014) | (1 << 21))
    w = walk(TWO_LEVEL, mem, (5 << 22), 4, top=0x1000)
    assert not w.ok and w.pfec == P | 8 | 4


def test_two_level_has_no_nx_so_fetch_faults_carry_no_id_bit():
    mem = two_level_tables()
    w = walk(TWO_LEVEL, mem, 7 << 22, 0x14, top=0x1000, nxe=True)
    assert not w.ok and w.pfec == 0x4


def test_pure_walk_writes_nothing():
    mem = two_level_tables()
    before = mem.read_u32(0x1004), mem.read_u32(0x200C)
    walk(TWO_LEVEL, mem, (1 << 22) | (3 << 12), 4, top=0x1000, write=False)
    assert (mem.read_u32(0x1004), mem.read_u32(0x200C)) == before


def test_translated_walk_reads_each_table_through_the_p2m_and_refuses_frames_beyond_it():
    """The fault path's form of the walk (Xen maps each guest table frame through the P2M
    before reading it): the same record as the walk over guest-physical memory."""
    p2m = [9, 3, 7, 5, 1, 8, 2, 6, 4]                    # gfn -> mfn
    gmem, mmem = PhysicalMemory(1 << 24), PhysicalMemory(1 << 24)
    for gpa, val in ((0x3000, 0x5000 | P | RW | US), (0x5000 + 8, 0x7000 | P | RW | US),
                     (0x2000 + 8 * 4, 0x8000 | P | RW | PS)):
        gmem.write_u64(gpa, val)
        mmem.write_u64((p2m[gpa >> 12] << 12) | (gpa & 0xFFF), val)
    plan = PAE.plan(36, True)
    for va, top in ((1 << 12, (0x3000 | P, 0, 0, 0)), (4 << 21, (0x2000 | P, 0, 0, 0)),
                    (2 << 12, (0x3000 | P, 0, 0, 0))):
        mine = plan.walk_translated(va, 6, top, mmem.read_u64, None, True, p2m)
        assert mine == plan.walk(va, 6, top, gmem.read_u64, None, True)
    with pytest.raises(AddressError):
        plan.walk_translated(0, 0, (0x9000 | P, 0, 0, 0), mmem.read_u64, None, True, p2m)
