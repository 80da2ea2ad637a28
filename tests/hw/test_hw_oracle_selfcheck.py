"""The test oracle itself agrees with the worked examples and masks in reference/pae.md.

These tests never touch engines.hw: they pin the oracle (hw_oracle) to the reference text, so
a disagreement in the conformance suite can be blamed on the model, not on the oracle.
"""
import pytest

import hw_oracle as o

PD, PT, FRAME = 0x2000, 0x3000, 0x5000
LA = 0x00001234  # PDPTE 0, PDE 0, PTE 1


def one_page(pde_flags: int, pte_flags: int, env: o.Env) -> o.Walk:
    mem = {PD: PT | pde_flags, PT + 8: FRAME | pte_flags}
    return o.walk(mem, (PD | o.P, 0, 0, 0), LA, env)


def test_supervisor_write_to_a_read_only_page_with_wp_gives_error_code_3():
    """pae.md §7 example (SDM §4.7)."""
    w = one_page(o.P | o.RW, o.P, o.Env(access=o.WRITE, wp=True))
    assert (w.error_code, w.fault_kind) == (0x3, "protection")


@pytest.mark.parametrize("nxe, code", [(True, 0x14), (False, 0x04)])
def test_user_fetch_through_a_not_present_pte_sets_id_only_with_nxe(nxe, code):
    """pae.md §7 example: I/D is 0 for a fetch when NXE=0."""
    w = one_page(o.P | o.RW | o.US, 0, o.Env(access=o.USER | o.FETCH, nxe=nxe))
    assert w.error_code == code


def test_supervisor_read_of_a_pte_with_bit_51_gives_error_code_9():
    """pae.md §7 example: RSVD comes with P."""
    w = one_page(o.P | o.RW, o.P | (1 << 51), o.Env())
    assert (w.error_code, w.fault_kind) == (0x9, "rsvd")


def test_user_write_to_a_pte_with_xd_while_nxe_is_clear_gives_error_code_f():
    """pae.md §7 example: bit 63 is reserved when NXE=0."""
    w = one_page(o.P | o.RW | o.US, o.P | o.RW | o.US | o.XD, o.Env(access=o.USER | o.WRITE))
    assert w.error_code == 0xF


def test_pdpte_reserved_mask_is_bochs_mask_plus_bits_above_maxphyaddr():
    """pae.md §2 and §10 (Bochs CheckPDPTR: 0xFFF00000000001E6 | above MAXPHYADDR)."""
    assert o.pdpte_reserved_mask(52) == 0xFFF00000000001E6
    assert o.pdpte_reserved_mask(36) == 0xFFFFFFF0000001E6


def test_entry_reserved_masks_match_kvm_pt32e_masks():
    """pae.md §10: PDE/PTE bits 62:M (| 63 if !NX); a large PDE adds bits 20:13."""
    assert o.entry_reserved_mask(36, nxe=True, large=False) == 0x7FFFFFF000000000
    assert o.entry_reserved_mask(36, nxe=False, large=False) == 0xFFFFFFF000000000
    assert o.entry_reserved_mask(52, nxe=True, large=True) == 0x7FF00000001FE000


def test_a_pte_fault_still_sets_a_in_the_non_leaf_pde_but_never_touches_the_pte():
    """pae.md §8 and §9 'implement' column."""
    w = one_page(o.P | o.RW, o.P, o.Env(access=o.USER))
    assert w.updates == {PD: PT | o.P | o.RW | o.A}


def test_a_successful_write_sets_a_in_both_entries_and_d_only_in_the_leaf():
    """pae.md §8."""
    w = one_page(o.P | o.RW, o.P | o.RW, o.Env(access=o.WRITE))
    assert w.updates == {PD: PT | o.P | o.RW | o.A, PT + 8: FRAME | o.P | o.RW | o.A | o.D}
    assert w.paddr == FRAME | 0x234


def test_supervisor_write_allowed_by_wp_clear_still_sets_d():
    """pae.md §8: D is set by a write allowed only because WP=0."""
    w = one_page(o.P, o.P, o.Env(access=o.WRITE, wp=False))
    assert not w.faulted and w.updates[PT + 8] & o.D


def test_a_not_present_pdpte_gives_a_not_present_fault_without_reading_anything():
    """pae.md §2 and §5 step 1."""
    w = o.walk({}, (0, 0, 0, 0), LA, o.Env(access=o.WRITE | o.USER))
    assert (w.error_code, w.pde_read) == (0x6, False)
