"""The K8 TLB flush filter (off by default): a MOV CR3 that may keep the TLB.

The model's rule (AMD K8): with flush_filter on, load_cr3 keeps cached translations as long
as no software write (PhysicalMemory.write_u64/u32 or CPU.write_u64; not the walker's own
A/D updates) has touched a 64-byte line of page-table memory that a cached entry was
loaded from. Entries are tagged with the root they were loaded under, so they never serve
another root. Any such write disarms the filter: the next load_cr3 flushes as usual.
The filter must stay invisible architecturally: after MOV CR3 a translation is fresh
(pae.md §8).
"""
import pytest

from engines.hw import PhysicalMemory

import hw_harness as h
import hw_oracle as o

RWU = o.P | o.RW | o.US
R1, R2 = h.PDPT_BASE, 0x8000          # two roots (PDPTs)
PD2, PT2 = 0x9000, 0xA000             # second root's tables
FRAME_A, FRAME_B, FRAME_C = 0x50_0000, 0x60_0000, 0x70_0000
PT_ALIAS = (h.LA & ~0xFFF) + 0x1000   # PTE 8 maps the first page table itself (writable)


def two_roots(flush_filter: bool = True, pge: bool = False, pte_g: int = 0):
    """LA maps FRAME_A under R1 and FRAME_B under R2; R1 also maps its PT at PT_ALIAS."""
    mem = PhysicalMemory(1 << 36)
    h.write_entries(mem, h.standard_tables(h.PT_BASE | RWU, FRAME_A | RWU | pte_g))
    mem.write_u64(h.PTE_ADDR + 8, h.PT_BASE | o.P | o.RW)
    mem.write_u64(R2 + 8 * h.PDPTE_INDEX, PD2 | o.P)
    mem.write_u64(PD2 + 8 * h.PDE_INDEX, PT2 | RWU)
    mem.write_u64(PT2 + 8 * h.PTE_INDEX, FRAME_B | RWU)
    cpu = h.make_cpu(mem, o.Env(pge=pge), flush_filter=flush_filter)
    cpu.load_cr3(R1)
    return mem, cpu


def kept(cpu, before) -> int:
    """filter_kept increments since `before` (whether a load with an empty TLB counts as
    'kept' is left open, so the tests count from after the set-up load)."""
    return cpu.counters().filter_kept - before.filter_kept


def page(cpu, la: int = h.LA) -> int:
    return cpu.translate(la) & ~0xFFF


def test_the_flush_filter_is_off_by_default_and_load_cr3_then_flushes():
    mem, cpu = two_roots(flush_filter=False)
    page(cpu)
    before = cpu.counters()
    cpu.load_cr3(R1)
    assert cpu.tlb_entries() == [] and kept(cpu, before) == 0


def test_with_no_page_table_writes_load_cr3_keeps_the_tlb_and_the_next_access_hits():
    mem, cpu = two_roots()
    assert cpu.flush_filter is True
    page(cpu)
    before = cpu.counters()
    cpu.load_cr3(R1)
    assert page(cpu) == FRAME_A
    c = cpu.counters()
    assert (c.walks, c.tlb_hits_4k, c.cr3_loads) == (before.walks, 1, 2)
    assert kept(cpu, before) == 1


def test_the_walkers_own_a_and_d_updates_do_not_disarm_the_filter():
    mem, cpu = two_roots()
    page(cpu)                        # sets A in the PDE and PTE
    cpu.translate(h.LA, o.WRITE)     # re-walk sets D
    assert mem.read_u64(h.PTE_ADDR) == FRAME_A | RWU | o.A | o.D
    before = cpu.counters()
    cpu.load_cr3(R1)
    assert kept(cpu, before) == 1 and len(cpu.tlb_entries()) == 1


@pytest.mark.parametrize("how", ["write_u64 PTE", "write_u32 PTE high half",
                                 "write_u64 same-line neighbour", "write_u64 PDE",
                                 "write_u64 same value"])
def test_a_software_write_to_a_cached_entrys_line_disarms_the_filter(how):
    mem, cpu = two_roots()
    page(cpu)
    before = cpu.counters()
    if how == "write_u64 PTE":
        mem.write_u64(h.PTE_ADDR, FRAME_C | RWU)
    elif how == "write_u32 PTE high half":
        mem.write_u32(h.PTE_ADDR + 4, 0)
    elif how == "write_u64 same-line neighbour":
        mem.write_u64(h.PT_BASE + 8 * 6, FRAME_C | RWU)   # PTE 6, same 64-byte line as 7
    elif how == "write_u64 PDE":
        mem.write_u64(h.PD_BASE + 8 * 4, 0)               # PDE 4, same line as PDE 5
    else:
        mem.write_u64(h.PTE_ADDR, mem.read_u64(h.PTE_ADDR))
    cpu.load_cr3(R1)
    assert cpu.tlb_entries() == [] and kept(cpu, before) == 0


def test_a_write_through_the_cpu_to_a_page_table_disarms_the_filter():
    """CPU.write_u64 is a software write like any other."""
    mem, cpu = two_roots()
    page(cpu)
    before = cpu.counters()
    cpu.write_u64(PT_ALIAS + 8 * h.PTE_INDEX, FRAME_C | RWU)  # rewrites PTE 7 via the alias
    cpu.load_cr3(R1)
    assert page(cpu) == FRAME_C
    assert kept(cpu, before) == 0


def test_a_write_to_data_or_to_an_unrelated_line_keeps_the_filter_armed():
    mem, cpu = two_roots()
    page(cpu)
    before = cpu.counters()
    mem.write_u64(FRAME_A, 0x1234)                 # ordinary data
    mem.write_u64(h.PT_BASE + 8 * 16, 0)           # page table, a line nothing came from
    cpu.load_cr3(R1)
    assert kept(cpu, before) == 1 and page(cpu) == FRAME_A


def test_kept_entries_are_tagged_by_root_and_serve_it_again_after_switching_back():
    mem, cpu = two_roots()
    assert page(cpu) == FRAME_A
    before = cpu.counters()
    cpu.load_cr3(R2)
    assert page(cpu) == FRAME_B                    # R1's entry does not serve R2
    walks = cpu.counters().walks
    cpu.load_cr3(R1)
    assert page(cpu) == FRAME_A
    assert (cpu.counters().walks, kept(cpu, before)) == (walks, 2)


def test_a_write_under_another_root_still_disarms_the_filter_for_all_roots():
    mem, cpu = two_roots()
    page(cpu)
    cpu.load_cr3(R2)
    page(cpu)
    mem.write_u64(h.PTE_ADDR, FRAME_C | RWU)       # R1's PTE, while R2 is loaded
    cpu.load_cr3(R1)
    assert page(cpu) == FRAME_C


def test_after_a_disarmed_flush_the_filter_rearms_for_new_entries():
    mem, cpu = two_roots()
    page(cpu)
    mem.write_u64(h.PTE_ADDR, FRAME_C | RWU)
    cpu.load_cr3(R1)
    assert page(cpu) == FRAME_C
    before = cpu.counters()
    cpu.load_cr3(R1)
    assert kept(cpu, before) == 1 and len(cpu.tlb_entries()) == 1


@pytest.mark.parametrize("flush", ["flush_tlb(False)", "invlpg"])
def test_explicit_flushes_and_invlpg_ignore_the_filter(flush):
    mem, cpu = two_roots()
    page(cpu)
    cpu.flush_tlb() if flush == "flush_tlb(False)" else cpu.invlpg(h.LA)
    assert cpu.tlb_entries() == []


def test_global_entries_survive_a_disarmed_flush_as_without_the_filter():
    mem, cpu = two_roots(pge=True, pte_g=o.G)
    page(cpu)
    mem.write_u64(h.PT_BASE + 8 * 6, 0)
    cpu.load_cr3(R1)
    assert [e.global_ for e in cpu.tlb_entries()] == [True]


@pytest.mark.parametrize("new_pdpte, want", [(PD2 | o.P, FRAME_B), (0, None)])
def test_a_pdpt_edit_is_seen_after_load_cr3_even_with_the_filter(new_pdpte, want):
    """pae.md §2/§8: MOV CR3 reloads the PDPTEs and a fresh result is then required.

    A kept entry loaded through the old PDPTE would be a stale translation after MOV CR3.
    """
    mem, cpu = two_roots()
    page(cpu)
    mem.write_u64(R1 + 8 * h.PDPTE_INDEX, new_pdpte)
    cpu.load_cr3(R1)
    assert cpu.pdptes[h.PDPTE_INDEX] == new_pdpte
    expected = ("ok", want | 0xABC) if want else ("fault", h.LA, 0)
    assert h.attempt(cpu, h.LA) == expected
