"""Conformance grid: every combination of PDE/PTE flags x access kind x CR0.WP x EFER.NXE.

Each parametrised case fixes the P, R/W, U/S, XD and reserved bits of the PDE and PTE (or of a
PS=1 PDE) that map LA, enumerates the leaf's A, D and G inside, and runs each in all 24
environments (6 access kinds: supervisor/user x read/write/fetch, times CR0.WP,
times EFER.NXE) on a fresh machine each, with CR4.PGE=1 so the G bit of a leaf shows in the
TLB. The expectation comes from hw_oracle, written from reference/pae.md, never from the
model: fault or physical address, error code, A/D updates, TLB entry and counters.

Flags enumerated (pae.md §3, §4): P, R/W, U/S, A, D, PS, G, XD (bit 63: XD with NXE=1,
reserved with NXE=0), and a reserved bit (bit 51 >= MAXPHYADDR; bit 13 in a PS=1 PDE).
Where a level is never read (PDE not present or reserved), the PTE is one of four
representatives instead of all 256 combinations: pae.md §5 says entries below the failing
level are never read.
"""
import itertools

import pytest

import hw_harness as h
import hw_oracle as o

R51 = 1 << 51
R13 = 1 << 13
IGNORED_PDE = o.D | o.G  # bits 6 and 8 of a PS=0 PDE are ignored (pae.md §3)

PDE_NAMES = {"P": o.P, "RW": o.RW, "US": o.US, "A": o.A, "D6G8": IGNORED_PDE,
             "XD": o.XD, "R51": R51}
PTE_NAMES = {"P": o.P, "RW": o.RW, "US": o.US, "A": o.A, "D": o.D, "G": o.G,
             "XD": o.XD, "R51": R51}
LARGE_NAMES = {"P": o.P, "RW": o.RW, "US": o.US, "A": o.A, "D": o.D, "G": o.G,
               "XD": o.XD, "R51": R51, "R13": R13}

ENVS = [o.Env(access=access, wp=wp, nxe=nxe, pge=True)
        for wp in (False, True) for nxe in (False, True) for access in o.ACCESS_KINDS.values()]


def combos(*flags: int) -> list[int]:
    return [sum(chosen) for n in range(len(flags) + 1)
            for chosen in itertools.combinations(flags, n)]


BOOKKEEPING_4K = combos(o.A, o.D, o.G)  # PTE bits that never decide a fault
PTE_REPRESENTATIVES = [0, o.P | o.RW | o.US, o.P | o.RW | o.US | o.A | o.D | o.G, o.P | R51]


def small_cases():
    """(pde_flags, pte_core, [pte_flags...]) covering every PS=0 PDE x PTE combination.

    One pytest case per PDE combination and PTE 'core' (P, R/W, U/S, XD, reserved); the
    PTE's A, D and G are enumerated inside the case. Under a PDE that is not present or
    has a reserved bit, the PTE is never read (pae.md §5), so four representatives stand
    in for it.
    """
    present = [o.P | f for f in combos(o.RW, o.US, o.A, IGNORED_PDE, o.XD)]
    cases = [(pde, core, [core | extra for extra in BOOKKEEPING_4K])
             for pde in present for core in combos(o.P, o.RW, o.US, o.XD, R51)]
    cases += [(pde | R51, None, PTE_REPRESENTATIVES) for pde in present]
    cases += [(pde, None, PTE_REPRESENTATIVES)
              for pde in combos(o.RW, o.US, o.A, IGNORED_PDE, o.XD, R51)]
    return cases


def large_cases():
    """(pde_core, [pde_flags...]): P, R/W, U/S, XD and a reserved bit per case; A, D, G inside."""
    return [(core | rsvd, [core | rsvd | extra for extra in combos(o.A, o.D, o.G)])
            for core in combos(o.P, o.RW, o.US, o.XD) for rsvd in (0, R51, R13)]


SMALL_CASES = small_cases()
LARGE_CASES = large_cases()


def small_id(case) -> str:
    pde, core, _ = case
    pte = "reps" if core is None else o.flag_names(core, PTE_NAMES) + "+A/D/G"
    return f"pde={o.flag_names(pde, PDE_NAMES)}-pte={pte}"


def run_all_envs(entry_sets: list[dict[int, int]], la: int = h.LA) -> int:
    """Check every entry set in every environment; return the number of checks."""
    problems = []
    for entries in entry_sets:
        problems += h.conformance_problems(entries, la, ENVS)
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:8])
    return len(entry_sets) * len(ENVS)


@pytest.mark.parametrize("pde_flags, pte_core, pte_variants", SMALL_CASES,
                         ids=[small_id(c) for c in SMALL_CASES])
def test_a_4k_access_faults_or_translates_and_sets_a_d_exactly_as_the_walk_rules_say(
        pde_flags, pte_core, pte_variants):
    """SDM §4.4.2 walk order and reserved bits, §4.6 rights, §4.7 error code, §4.8 A/D.

    pae.md §5: not present, then reserved bits, level by level; rights only after a full
    walk. §6: combined rights (AND of R/W and U/S, OR of XD under NXE). §7: error code.
    §8/§9: A in the non-leaf PDE even when the PTE faults; the PTE only on success.
    """
    run_all_envs([h.standard_tables(h.PT_BASE | pde_flags, h.FRAME_4K | pte)
                  for pte in pte_variants])


@pytest.mark.parametrize("pde_core, pde_variants", LARGE_CASES,
                         ids=[o.flag_names(c, LARGE_NAMES) + "+A/D/G" for c, _ in LARGE_CASES])
def test_a_2m_access_faults_or_translates_and_sets_a_d_exactly_as_the_walk_rules_say(
        pde_core, pde_variants):
    """SDM §4.4.2 (PS=1 PDE maps 2 MiB; bits 20:13 reserved), §4.6, §4.7, §4.8.

    pae.md §3/§4: bits 20:13 are reserved in a PS=1 PDE; PS is honoured whatever CR4.PSE.
    §9: the PS=1 PDE keeps A clear on a protection fault. The PTE slot below it is never read.
    """
    run_all_envs([h.standard_tables(h.FRAME_2M | o.PS | pde, h.FRAME_4K | o.P | o.RW | o.US)
                  for pde in pde_variants])


def test_an_access_through_a_not_present_pdpte_register_faults_with_p_clear():
    """SDM §4.4.1 / pae.md §2 and §5 step 1: PDPTE P=0 gives #PF with P=0, nothing read."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW | o.US, h.FRAME_4K | o.P | o.RW | o.US,
                                pdpte=h.PD_BASE)
    run_all_envs([entries])


@pytest.mark.parametrize("offset", [0x000, 0x001, 0xFFF, 0x1F_F000, 0x1F_FFFF])
def test_a_2m_translation_keeps_all_21_low_bits_of_the_linear_address(offset):
    """pae.md §3: 2 MiB page paddr = PDE[(M-1):21] | la[20:0]; CR2 is never rounded."""
    la = h.va(h.PDPTE_INDEX, h.PDE_INDEX, 0, 0) | offset
    pde = h.FRAME_2M | o.PS | o.P | o.RW
    run_all_envs([h.standard_tables(pde, 0)], la)


def test_pat_bit_12_of_a_large_pde_is_not_reserved_and_not_part_of_the_frame():
    """pae.md §3: PAT is supported, so PS-PDE bit 12 is never reserved."""
    pde = h.FRAME_2M | o.PS | o.P | o.RW | o.PAT_LARGE
    run_all_envs([h.standard_tables(pde, 0)])


def test_pat_bit_7_of_a_pte_is_not_reserved():
    """pae.md §3: PTE bit 7 is PAT, never reserved."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW | o.US, h.FRAME_4K | o.P | 0x80)
    run_all_envs([entries])


@pytest.mark.parametrize("bit", [3, 4, 9, 10, 11])
def test_pwt_pcd_and_ignored_bits_change_nothing_in_either_level(bit):
    """pae.md §3: PWT/PCD are carried but not interpreted; bits 11:9 are ignored."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW | o.US | (1 << bit),
                                h.FRAME_4K | o.P | o.RW | o.US | (1 << bit))
    run_all_envs([entries])


def test_the_grid_is_the_full_product_it_claims():
    """Guard against a silently shrunk enumeration."""
    pairs = {(pde, pte) for pde, _, ptes in SMALL_CASES for pte in ptes}
    assert len(pairs) == 32 * 256 + 32 * 4 + 64 * 4
    assert len({pde for _, pdes in LARGE_CASES for pde in pdes}) == 128 * 3
    assert len(ENVS) == 24
