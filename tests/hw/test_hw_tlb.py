"""The TLB: staleness, re-walks, global pages, INVLPG, capacity and FIFO eviction, counters.

SDM §4.10 via pae.md §8-9: only successful walks are cached; a cached translation may be
used (stale) until an architectural invalidation drops it; a write through an entry with
D=0, or an access the cached rights forbid, re-walks (the model never raises a spurious
fault); G counts only in a leaf and only with CR4.PGE=1; INVLPG drops the whole page that
contains the address, 2 MiB pages included; toggling PGE or NXE flushes everything.
"""
import pytest

from engines.hw import CPU, PageFault, PhysicalMemory, TLBConfig

import hw_harness as h
import hw_oracle as o

FRAME_A, FRAME_B = 0x0_0050_0000, 0x0_0060_0000
RWU = o.P | o.RW | o.US


def page_machine(pte_flags: int = RWU, pde_flags: int = RWU, env: o.Env = o.Env(), **kw):
    entries = h.standard_tables(h.PT_BASE | pde_flags, FRAME_A | pte_flags)
    return h.machine(entries, env, **kw)


def set_pte(mem: PhysicalMemory, value: int) -> None:
    mem.write_u64(h.PTE_ADDR, value)


# ------------------------------------------------------------------ staleness and re-walks

def test_a_cached_translation_survives_clearing_p_until_invlpg():
    """SDM §4.10.2 / pae.md §8-9: a stale entry may be used until INVLPG drops it."""
    mem, cpu = page_machine()
    assert h.attempt(cpu, h.LA) == ("ok", FRAME_A | 0xABC)
    set_pte(mem, FRAME_A | o.RW | o.US)  # P cleared
    assert h.attempt(cpu, h.LA) == ("ok", FRAME_A | 0xABC)
    cpu.invlpg(h.LA)
    assert h.attempt(cpu, h.LA) == ("fault", h.LA, 0)


@pytest.mark.parametrize("invalidate", ["invlpg", "flush_tlb(False)", "flush_tlb(True)",
                                        "load_cr3"])
def test_a_remapped_pte_shows_the_old_frame_until_an_architectural_invalidation(invalidate):
    """pae.md §8: a fresh result is required after INVLPG, MOV CR3 or a flush."""
    mem, cpu = page_machine()
    cpu.translate(h.LA)
    set_pte(mem, FRAME_B | RWU)
    assert h.attempt(cpu, h.LA) == ("ok", FRAME_A | 0xABC)
    {"invlpg": lambda: cpu.invlpg(h.LA | 0xFFF),
     "flush_tlb(False)": lambda: cpu.flush_tlb(),
     "flush_tlb(True)": lambda: cpu.flush_tlb(include_global=True),
     "load_cr3": lambda: cpu.load_cr3(h.PDPT_BASE)}[invalidate]()
    assert h.attempt(cpu, h.LA) == ("ok", FRAME_B | 0xABC)


def test_a_fault_is_never_cached_so_setting_p_needs_no_invalidation():
    """pae.md §8: no entry is created from a P=0 or reserved-bit entry."""
    mem, cpu = page_machine(pte_flags=o.RW | o.US)
    assert h.attempt(cpu, h.LA) == ("fault", h.LA, 0)
    assert cpu.tlb_entries() == []
    set_pte(mem, FRAME_A | o.P | (1 << 40))
    assert h.attempt(cpu, h.LA) == ("fault", h.LA, 0x9)
    set_pte(mem, FRAME_A | RWU)
    assert h.attempt(cpu, h.LA) == ("ok", FRAME_A | 0xABC)


def test_a_tlb_hit_reads_and_writes_no_page_table_memory():
    """A hit needs no walk: counters show one walk, and A cleared by software stays clear."""
    mem, cpu = page_machine()
    cpu.translate(h.LA)
    set_pte(mem, FRAME_A | RWU)  # software clears A (and D was clear)
    before = cpu.counters()
    assert h.attempt(cpu, h.LA + 4) == ("ok", FRAME_A | 0xAC0)
    after = cpu.counters()
    assert (after.walks - before.walks, after.tlb_hits_4k - before.tlb_hits_4k) == (0, 1)
    assert (after.pde_reads, after.pte_reads, after.ad_writes) == (
        before.pde_reads, before.pte_reads, before.ad_writes)
    assert mem.read_u64(h.PTE_ADDR) == FRAME_A | RWU


def test_a_write_through_an_entry_cached_clean_rewalks_and_sets_d():
    """pae.md §8: a write through an entry whose D is 0 must still set D in memory."""
    mem, cpu = page_machine()
    cpu.translate(h.LA)
    assert [e.dirty for e in cpu.tlb_entries()] == [False]
    walks = cpu.counters().walks
    assert h.attempt(cpu, h.LA, o.WRITE) == ("ok", FRAME_A | 0xABC)
    assert cpu.counters().walks == walks + 1
    assert mem.read_u64(h.PTE_ADDR) == FRAME_A | RWU | o.A | o.D
    assert [e.dirty for e in cpu.tlb_entries()] == [True]


def test_a_write_through_an_entry_cached_dirty_needs_no_walk():
    mem, cpu = page_machine()
    cpu.translate(h.LA, o.WRITE)
    walks = cpu.counters().walks
    cpu.translate(h.LA, o.WRITE)
    assert cpu.counters().walks == walks
    assert cpu.counters().tlb_hits_4k == 1


def test_a_write_sets_d_on_the_freshly_remapped_pte_when_the_clean_entry_rewalks():
    """The re-walk sees current memory: D lands in the PTE as it is now."""
    mem, cpu = page_machine()
    cpu.translate(h.LA)
    set_pte(mem, FRAME_B | RWU)
    assert h.attempt(cpu, h.LA, o.WRITE) == ("ok", FRAME_B | 0xABC)
    assert mem.read_u64(h.PTE_ADDR) == FRAME_B | RWU | o.A | o.D


@pytest.mark.parametrize("access, wp", [(o.WRITE, True), (o.USER | o.WRITE, False)])
def test_after_rw_0_to_1_without_invalidation_the_first_write_succeeds_by_rewalking(
        access, wp):
    """pae.md §9: implement success (re-walk), not the spurious #PF alternative."""
    mem, cpu = page_machine(pte_flags=o.P | o.US, env=o.Env(wp=wp))
    cpu.translate(h.LA, access & o.USER)
    set_pte(mem, FRAME_A | RWU | o.A)
    assert h.attempt(cpu, h.LA, access) == ("ok", FRAME_A | 0xABC)
    assert mem.read_u64(h.PTE_ADDR) == FRAME_A | RWU | o.A | o.D
    assert [e.writable for e in cpu.tlb_entries()] == [True]


def test_after_us_0_to_1_without_invalidation_a_user_read_succeeds_by_rewalking():
    """Cached rights forbid the access, so the CPU re-walks instead of faulting."""
    mem, cpu = page_machine(pte_flags=o.P | o.RW)
    cpu.translate(h.LA)
    set_pte(mem, FRAME_A | RWU | o.A)
    assert h.attempt(cpu, h.LA, o.USER) == ("ok", FRAME_A | 0xABC)


@pytest.mark.parametrize("pte_flags, access, code", [
    (o.P | o.US, o.WRITE, 0x3),            # read-only, WP=1 supervisor write
    (o.P | o.RW, o.USER, 0x5),             # supervisor page, user read
    (o.P | o.RW | o.US | o.XD, o.FETCH, 0x11),  # XD page, supervisor fetch, NXE=1
])
def test_when_the_rewalk_still_forbids_the_access_the_fault_is_delivered(pte_flags, access,
                                                                        code):
    """pae.md §6/§7: a re-walk that faults delivers the architectural error code."""
    mem, cpu = page_machine(pte_flags=pte_flags, env=o.Env(wp=True, nxe=True))
    cpu.translate(h.LA)
    assert h.attempt(cpu, h.LA, access) == ("fault", h.LA, code)
    assert mem.read_u64(h.PTE_ADDR) == FRAME_A | pte_flags | o.A  # leaf: no D on a fault


def test_stale_rights_that_still_allow_the_access_are_used():
    """SDM §4.10.2: R/W 1->0 without INVLPG may still allow writes; INVLPG ends it."""
    mem, cpu = page_machine(env=o.Env(wp=True))
    cpu.translate(h.LA, o.WRITE)
    set_pte(mem, FRAME_A | o.P | o.US | o.A | o.D)
    assert h.attempt(cpu, h.LA, o.WRITE) == ("ok", FRAME_A | 0xABC)
    cpu.invlpg(h.LA)
    assert h.attempt(cpu, h.LA, o.WRITE) == ("fault", h.LA, 0x3)


def test_cr0_wp_is_read_at_each_access_even_for_a_cached_entry():
    """pae.md §6: CR0.WP is read at the time of each access."""
    mem, cpu = page_machine(pte_flags=o.P | o.A | o.D)
    cpu.translate(h.LA, o.WRITE)  # WP=0: allowed, cached read-only and dirty
    cpu.cr0_wp = True
    assert h.attempt(cpu, h.LA, o.WRITE) == ("fault", h.LA, 0x3)
    cpu.cr0_wp = False
    assert h.attempt(cpu, h.LA, o.WRITE) == ("ok", FRAME_A | 0xABC)


# ------------------------------------------------------------------------- global pages

def global_machine(pge: bool, pte_g: bool = True, pde_g: bool = False, large: bool = False):
    if large:
        entries = h.standard_tables(h.FRAME_2M | o.PS | RWU | (o.G if pte_g else 0), 0)
    else:
        entries = h.standard_tables(h.PT_BASE | RWU | (o.G if pde_g else 0),
                                    FRAME_A | RWU | (o.G if pte_g else 0))
    return h.machine(entries, o.Env(pge=pge))


def frame_of(cpu) -> int:
    return cpu.translate(h.LA) & ~0xFFF


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("flush", ["load_cr3", "flush_tlb(False)"])
def test_a_global_leaf_with_pge_survives_load_cr3_and_a_non_global_flush(flush, large):
    """SDM §4.10.4.1 / pae.md §8: global entries may survive MOV CR3 (the model keeps them)."""
    mem, cpu = global_machine(pge=True, large=large)
    old = frame_of(cpu)
    assert [e.global_ for e in cpu.tlb_entries()] == [True]
    mem.write_u64(h.PDE_ADDR if large else h.PTE_ADDR, 0)
    cpu.load_cr3(h.PDPT_BASE) if flush == "load_cr3" else cpu.flush_tlb()
    assert frame_of(cpu) == old


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("flush", ["invlpg", "flush_tlb(True)", "pge toggle"])
def test_a_global_entry_is_dropped_by_invlpg_a_global_flush_or_toggling_pge(flush, large):
    """pae.md §8: INVLPG includes globals; flush_tlb(True) and a PGE change flush all."""
    mem, cpu = global_machine(pge=True, large=large)
    frame_of(cpu)
    if flush == "invlpg":
        cpu.invlpg(h.LA)
    elif flush == "flush_tlb(True)":
        cpu.flush_tlb(include_global=True)
    else:
        cpu.cr4_pge = False
    assert cpu.tlb_entries() == []


@pytest.mark.parametrize("pge, pte_g, pde_g", [(False, True, False), (True, False, True),
                                               (False, False, True)])
def test_g_counts_only_in_a_leaf_and_only_with_pge(pge, pte_g, pde_g):
    """pae.md §8: G counts only in leaf entries and only when CR4.PGE=1."""
    mem, cpu = global_machine(pge=pge, pte_g=pte_g, pde_g=pde_g)
    frame_of(cpu)
    assert [e.global_ for e in cpu.tlb_entries()] == [False]
    cpu.load_cr3(h.PDPT_BASE)
    assert cpu.tlb_entries() == []


def test_load_cr3_drops_non_global_entries_and_keeps_global_ones():
    mem = PhysicalMemory(1 << 36)
    h.write_entries(mem, h.standard_tables(h.PT_BASE | RWU, FRAME_A | RWU | o.G))
    mem.write_u64(h.PTE_ADDR + 8, FRAME_B | RWU)  # next page: not global
    cpu = h.make_cpu(mem, o.Env(pge=True))
    cpu.load_cr3(h.PDPT_BASE)
    cpu.translate(h.LA)
    cpu.translate(h.LA + 0x1000)
    cpu.load_cr3(h.PDPT_BASE)
    assert [(e.va, e.global_) for e in cpu.tlb_entries()] == [(h.LA & ~0xFFF, True)]


def test_setting_pge_or_nxe_to_its_current_value_flushes_nothing():
    mem, cpu = global_machine(pge=True)
    frame_of(cpu)
    cpu.cr4_pge = True
    cpu.efer_nxe = False
    assert len(cpu.tlb_entries()) == 1


def test_toggling_nxe_flushes_the_whole_tlb_including_globals():
    """The model's rule: a change of EFER.NXE flushes everything (cached XD would be wrong)."""
    mem, cpu = global_machine(pge=True)
    frame_of(cpu)
    cpu.efer_nxe = True
    assert cpu.tlb_entries() == []


# ------------------------------------------------------------------------------- INVLPG

def test_invlpg_drops_only_the_named_page():
    """SDM §4.10.4.1: INVLPG invalidates the entries for the page containing the address."""
    mem = PhysicalMemory(1 << 36)
    h.write_entries(mem, h.standard_tables(h.PT_BASE | RWU, FRAME_A | RWU))
    mem.write_u64(h.PTE_ADDR + 8, FRAME_B | RWU)
    cpu = h.make_cpu(mem, o.Env())
    cpu.load_cr3(h.PDPT_BASE)
    cpu.translate(h.LA)
    cpu.translate(h.LA + 0x1000)
    cpu.invlpg(h.LA + 0x1000 + 0x123)
    assert [e.va for e in cpu.tlb_entries()] == [h.LA & ~0xFFF]
    assert cpu.counters().invlpg == 1


@pytest.mark.parametrize("offset", [0, 0x1000, 0xABC, 0x1F_F000, 0x1F_FFFF])
def test_invlpg_anywhere_inside_a_2m_page_drops_the_whole_large_entry(offset):
    """pae.md §8: for a 2 MiB page INVLPG drops the whole large page, whichever part."""
    entries = h.standard_tables(h.FRAME_2M | o.PS | RWU, 0)
    mem, cpu = h.machine(entries)
    base = h.va(h.PDPTE_INDEX, h.PDE_INDEX)
    cpu.translate(base + 0x1F_F000)
    assert [(e.va, e.size) for e in cpu.tlb_entries()] == [(base, 1 << 21)]
    cpu.invlpg(base + offset)
    assert cpu.tlb_entries() == []


def test_invlpg_drops_both_a_4k_and_a_2m_entry_that_cover_the_address():
    """SDM §4.10.4.1: INVLPG invalidates the entries for the page of la whatever their size.

    A PDE turned from a page-table pointer into a 2 MiB page without invalidation can leave
    a 4 KiB entry and a 2 MiB entry over the same address.
    """
    mem, cpu = page_machine()
    cpu.translate(h.LA)                                       # 4 KiB entry for LA
    mem.write_u64(h.PDE_ADDR, h.FRAME_2M | o.PS | RWU)
    cpu.translate(h.LA + 0x1000)                              # 2 MiB entry, same 2 MiB region
    assert sorted(e.size for e in cpu.tlb_entries()) == [1 << 12, 1 << 21]
    cpu.invlpg(h.LA)
    assert cpu.tlb_entries() == []
    assert h.attempt(cpu, h.LA) == ("ok", h.FRAME_2M | (h.LA & 0x1F_FFFF))


def test_invlpg_of_an_uncached_address_changes_nothing_else():
    mem, cpu = page_machine()
    cpu.translate(h.LA)
    cpu.invlpg(0x1234_5000)
    assert len(cpu.tlb_entries()) == 1


# ------------------------------------------------------------------- capacity and FIFO

def many_pages_machine(cfg: TLBConfig, n4k: int = 8, n2m: int = 4):
    """PTEs 0..n4k-1 of PD slot 0 map 4 KiB pages; PD slots 1..n2m map 2 MiB pages."""
    mem = PhysicalMemory(1 << 36)
    mem.write_u64(h.PDPT_BASE, h.PD_BASE | o.P)
    mem.write_u64(h.PD_BASE, h.PT_BASE | RWU)
    for i in range(n4k):
        mem.write_u64(h.PT_BASE + 8 * i, (0x100000 + 0x1000 * i) | RWU)
    for j in range(1, n2m + 1):
        mem.write_u64(h.PD_BASE + 8 * j, (0x4000_0000 + (j << 21)) | o.PS | RWU)
    cpu = CPU(mem, tlb=cfg)
    cpu.load_cr3(h.PDPT_BASE)
    return mem, cpu


def cached_vas(cpu) -> set[int]:
    return {e.va for e in cpu.tlb_entries()}


def test_the_4k_tlb_holds_its_capacity_and_evicts_the_oldest_inserted_entry():
    """FIFO replacement: the oldest-inserted entry goes first, even if it was just hit."""
    mem, cpu = many_pages_machine(TLBConfig(entries_4k=4, entries_2m=2))
    for i in range(4):
        cpu.translate(0x1000 * i)
    cpu.translate(0x0)  # a hit does not refresh a FIFO entry
    assert cpu.counters().tlb_hits_4k == 1
    cpu.translate(0x4000)
    assert cached_vas(cpu) == {0x1000, 0x2000, 0x3000, 0x4000}
    cpu.translate(0x5000)
    assert cached_vas(cpu) == {0x2000, 0x3000, 0x4000, 0x5000}


def test_the_2m_tlb_is_separate_and_evicts_fifo_too():
    mem, cpu = many_pages_machine(TLBConfig(entries_4k=4, entries_2m=2))
    for i in range(4):
        cpu.translate(0x1000 * i)
    for j in (1, 2, 3):
        cpu.translate(j << 21)
    assert cached_vas(cpu) == {0x0, 0x1000, 0x2000, 0x3000, 2 << 21, 3 << 21}
    assert cpu.counters().tlb_misses_2m == 3 and cpu.counters().tlb_misses_4k == 4


def test_an_evicted_entry_is_walked_again_and_sees_current_memory():
    """Eviction is allowed at any time (pae.md §8); a re-walk gives the fresh result."""
    mem, cpu = many_pages_machine(TLBConfig(entries_4k=1, entries_2m=1))
    cpu.translate(0x0)
    mem.write_u64(h.PT_BASE, 0x777000 | RWU)
    cpu.translate(0x1000)  # evicts page 0
    assert cpu.translate(0x10) == 0x777010


def test_eviction_is_deterministic_for_the_same_sequence():
    def run():
        mem, cpu = many_pages_machine(TLBConfig(entries_4k=3, entries_2m=1))
        for va in (0x0, 0x1000, 0x2000, 2 << 21, 0x3000, 0x0, 1 << 21, 0x4000, 0x1000):
            cpu.translate(va)
        return h.tlb_view(cpu), cpu.counters()
    assert run() == run()


# ----------------------------------------------------------------------------- counters

def test_counters_count_hits_misses_walks_and_invalidations():
    mem, cpu = many_pages_machine(TLBConfig())
    cpu.translate(0x0)            # miss 4k
    cpu.translate(0x8)            # hit 4k
    cpu.translate(1 << 21)        # miss 2m
    cpu.translate((1 << 21) + 8)  # hit 2m
    cpu.invlpg(0x0)
    cpu.translate(0x0)            # miss 4k again
    with pytest.raises(PageFault):
        cpu.translate(0x9000)     # PTE 9 not present: a walk, a fault, no miss
    cpu.load_cr3(h.PDPT_BASE)
    c = cpu.counters()
    assert (c.tlb_misses_4k, c.tlb_hits_4k, c.tlb_misses_2m, c.tlb_hits_2m) == (2, 1, 1, 1)
    assert (c.walks, c.pde_reads, c.pte_reads) == (4, 4, 3)
    assert (c.invlpg, c.cr3_loads, c.faults_not_present) == (1, 2, 1)
    assert c.ad_writes == 3  # A in the PDE, PTE 0 and the 2 MiB PDE; later walks find A set


def test_ad_writes_count_only_the_walkers_own_updates():
    mem, cpu = page_machine()
    cpu.translate(h.LA)               # PDE A and PTE A
    cpu.translate(h.LA, o.WRITE)      # re-walk: PTE D
    cpu.invlpg(h.LA)
    cpu.translate(h.LA)               # everything already set: nothing written
    c = cpu.counters()
    assert (c.ad_writes, c.walks) == (3, 3)
    mem.write_u64(h.PTE_ADDR, FRAME_A | RWU)
    assert cpu.counters().ad_writes == c.ad_writes


def test_flush_counters_separate_global_and_non_global_flushes():
    mem, cpu = page_machine()
    cpu.flush_tlb()
    cpu.flush_tlb(include_global=True)
    cpu.flush_tlb(include_global=True)
    c = cpu.counters()
    assert (c.flush_full, c.flush_global) == (1, 2)
