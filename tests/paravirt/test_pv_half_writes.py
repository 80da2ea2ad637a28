"""PV guests store PTEs as two 32-bit halves (Linux PAE set_pte: high, then low) when they
write a page table directly; `PVEngine.write_u32` takes such a store, and under writable
page tables Xen's ptwr emulates each half on its own trap (xen-pv.md §2.4)."""
from __future__ import annotations

import pytest

from engines.api import GuestPageFault

from pv_harness import P, RW, US, MiniGuest


def _pinned_l1():
    g = MiniGuest()
    l3, l2s = g.new_pgd()
    l1 = g.new_l1(0, l2s[0], 0x40)
    assert g.switch(0, l3) == 0
    return g, l1


def test_each_half_of_a_pte_stored_into_a_pinned_l1_is_one_ptwr_emulation():
    g, l1 = _pinned_l1()
    data = g.alloc()
    new = (g.p2m(data) << 12) | P | RW | US
    before = g.e.stats["ptwr_emulations"]
    g.e.write_u32(0, g.kva(l1) + 8 + 4, new >> 32)          # high half first, as set_pte
    g.e.write_u32(0, g.kva(l1) + 8, new & 0xFFFFFFFF)
    assert g.e.stats["ptwr_emulations"] == before + 2
    assert g.e.memory.read_u64((g.p2m(l1) << 12) + 8) == new
    assert g.e.audit() == []


def test_a_half_that_would_leave_a_present_entry_naming_a_page_table_is_stored_not_present():
    """The PAE special case: the low half alone names the L1 itself (a writable self-map),
    so the entry is accepted with PRESENT cleared instead of bounced."""
    g, l1 = _pinned_l1()
    g.e.write_u32(0, g.kva(l1) + 16, ((g.p2m(l1) << 12) | P | RW) & 0xFFFFFFFF)
    assert g.e.memory.read_u64((g.p2m(l1) << 12) + 16) & P == 0
    assert g.e.audit() == []


def test_a_half_store_to_a_read_only_page_that_is_not_a_page_table_bounces_to_the_guest():
    g, l1 = _pinned_l1()
    ro = 0x08048000
    frame = g.alloc()
    g.e.write(0, g.kva(l1) + 8 * ((ro >> 12) & 0x1FF), (g.p2m(frame) << 12) | P | US)
    with pytest.raises(GuestPageFault) as exc:
        g.e.write_u32(0, ro + 4, 1)
    assert exc.value.error_code & 0x3 == 0x3
    assert g.e.audit() == []
