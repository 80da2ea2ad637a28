"""CR3 and the PDPTE registers (SDM §4.4.1, pae.md §1-§2), and MAXPHYADDR (pae.md §4).

load_cr3 alone loads the four PDPTE registers; a present PDPTE with a reserved bit makes
the load raise #GP and change nothing; a PDPT edit is invisible until the next load.
"""
import pytest

from engines.hw import CPU, GeneralProtection, PageFault, PhysicalMemory

import hw_harness as h
import hw_oracle as o

PD0, PD1 = 0x10000, 0x11000


def two_directory_memory(pdpt: int = h.PDPT_BASE) -> PhysicalMemory:
    """PDPTE0 -> PD0, PDPTE1 -> PD1; PDE 0 of each maps a 2 MiB page at a distinct frame."""
    mem = PhysicalMemory(1 << 36)
    mem.write_u64(pdpt, PD0 | o.P)
    mem.write_u64(pdpt + 8, PD1 | o.P)
    mem.write_u64(PD0, 0x0_0020_0000 | o.PS | o.P | o.RW)
    mem.write_u64(PD1, 0x0_0040_0000 | o.PS | o.P | o.RW)
    return mem


def pdpt_values() -> tuple[int, ...]:
    return (PD0 | o.P, PD1 | o.P, 0, 0)


def test_load_cr3_copies_the_four_pdptes_into_the_registers():
    """pae.md §1/§2: PDPTE i is the 8 bytes at (CR3 & 0xFFFFFFE0) + 8i."""
    mem = two_directory_memory()
    mem.write_u64(h.PDPT_BASE + 16, 0x12345000 | 0x18)  # P=0: every other bit ignored
    mem.write_u64(h.PDPT_BASE + 24, 0x23456000 | o.P | 0x18 | 0xE00)  # PWT, PCD, ignored
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    assert tuple(cpu.pdptes) == (PD0 | o.P, PD1 | o.P, 0x12345018, 0x23456E19)
    assert cpu.cr3 & 0xFFFFFFE0 == h.PDPT_BASE


@pytest.mark.parametrize("pdpt", [0x1FE0, 0x20, 0xFFFF_FFE0 - 0x1000, 0xFFFF_FFE0])
@pytest.mark.parametrize("low_bits", [0, 0x8, 0x10, 0x1F])
def test_the_pdpt_sits_on_any_32_byte_boundary_below_4_gib_and_cr3_bits_4_0_are_ignored(
        pdpt, low_bits):
    """pae.md §1: bits 4:0 (including 3 and 4, not PWT/PCD here) and 63:32 are ignored."""
    mem = PhysicalMemory(1 << 36)
    for i, value in enumerate((PD0 | o.P, 0, 0, PD1 | o.P)):
        mem.write_u64(pdpt + 8 * i, value)
    cpu = CPU(mem)
    cpu.load_cr3(pdpt | low_bits | (0x5 << 32))
    assert tuple(cpu.pdptes) == (PD0 | o.P, 0, 0, PD1 | o.P)
    assert cpu.cr3 & 0xFFFFFFE0 == pdpt


def pdpte_bit_cases():
    for m in (32, 36, 40, 52):
        for bit in range(1, 64):
            yield m, bit


@pytest.mark.parametrize("m, bit", list(pdpte_bit_cases()))
def test_a_present_pdpte_with_a_reserved_bit_makes_load_cr3_raise_gp(m, bit):
    """SDM §4.4.1, pae.md §2: reserved = bits 2:1, 8:5, 63:M (63 even with NXE); 4:3 PWT/PCD,
    11:9 ignored, (M-1):12 address. Bit 1 (R/W in 64-bit PDPTEs) is reserved here."""
    reserved = bool((1 << bit) & o.pdpte_reserved_mask(m))
    assert reserved == (bit in (1, 2, 5, 6, 7, 8) or bit >= m)
    mem = PhysicalMemory(1 << 36)
    for index in range(4):  # the bad entry in slot 3, the others not present
        mem.write_u64(h.PDPT_BASE + 8 * index, (PD0 | o.P | (1 << bit)) if index == 3 else 0)
    cpu = CPU(mem, maxphyaddr=m)
    cpu.efer_nxe = True
    if reserved:
        with pytest.raises(GeneralProtection):
            cpu.load_cr3(h.PDPT_BASE)
        assert cpu.counters().gp_faults == 1
    else:
        cpu.load_cr3(h.PDPT_BASE)
        assert cpu.pdptes[3] == PD0 | o.P | (1 << bit)


@pytest.mark.parametrize("bit", [1, 2, 5, 8, 40, 52, 63])
def test_a_not_present_pdpte_with_reserved_bits_loads_without_gp_and_faults_not_present(bit):
    """pae.md §2 and §9: P=0 PDPTE bits are ignored (KVM/Bochs); the walk faults with P=0."""
    mem = two_directory_memory()
    mem.write_u64(h.PDPT_BASE + 8, PD1 | (1 << bit))
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    assert h.attempt(cpu, h.va(1, 0, 0, 0x10), o.WRITE) == ("fault", h.va(1, 0, 0, 0x10), 0x2)
    assert cpu.counters().gp_faults == 0


@pytest.mark.parametrize("bad_slot", range(4))
def test_a_gp_on_load_cr3_leaves_cr3_and_all_four_registers_unchanged(bad_slot):
    """pae.md §2: there is no partial load; CR3 keeps its old value."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    old_cr3, old_pdptes = cpu.cr3, tuple(cpu.pdptes)
    other = 0x7000
    for i in range(4):
        value = PD1 | o.P if i != bad_slot else PD1 | o.P | o.RW
        mem.write_u64(other + 8 * i, value)
    with pytest.raises(GeneralProtection):
        cpu.load_cr3(other)
    assert (cpu.cr3, tuple(cpu.pdptes)) == (old_cr3, old_pdptes)
    assert h.attempt(cpu, h.va(0, 0, 0, 0x123)) == ("ok", 0x0020_0123)


def test_a_gp_on_load_cr3_does_not_flush_the_tlb():
    """The faulting MOV CR3 does not execute, so it invalidates nothing (SDM §4.10.4.1)."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    cpu.translate(h.va(0, 0))
    mem.write_u64(0x7000, PD1 | o.P | o.RW)
    with pytest.raises(GeneralProtection):
        cpu.load_cr3(0x7000)
    assert len(cpu.tlb_entries()) == 1


def test_a_pdpt_edit_is_invisible_until_the_next_load_cr3():
    """pae.md §2: PDPTE registers are not reloaded by a write to the PDPT (stale PDPTEs)."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    mem.write_u64(h.PDPT_BASE, PD1 | o.P)      # PDPTE0 now points at PD1
    mem.write_u64(h.PDPT_BASE + 8, 0)          # PDPTE1 now not present
    assert h.attempt(cpu, h.va(0, 0, 0, 0x10)) == ("ok", 0x0020_0010)
    assert h.attempt(cpu, h.va(1, 0, 0, 0x10)) == ("ok", 0x0040_0010)
    assert tuple(cpu.pdptes) == pdpt_values()
    cpu.load_cr3(h.PDPT_BASE)
    assert h.attempt(cpu, h.va(0, 0, 0, 0x10)) == ("ok", 0x0040_0010)
    assert h.attempt(cpu, h.va(1, 0, 0, 0x10)) == ("fault", h.va(1, 0, 0, 0x10), 0)


@pytest.mark.parametrize("operation", ["flush_tlb(False)", "flush_tlb(True)", "invlpg"])
def test_tlb_flushes_and_invlpg_never_reload_the_pdptes(operation):
    """pae.md §2/§8: only load_cr3 loads the PDPTE registers; flushes see the old PDPTEs."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    mem.write_u64(h.PDPT_BASE, 0)
    mem.write_u64(h.PDPT_BASE + 8, PD1 | o.P | o.RW)  # would even #GP if reloaded
    if operation == "invlpg":
        cpu.invlpg(h.va(0, 0))
    else:
        cpu.flush_tlb(include_global=operation == "flush_tlb(True)")
    assert tuple(cpu.pdptes) == pdpt_values()
    assert h.attempt(cpu, h.va(0, 0, 0, 8)) == ("ok", 0x0020_0008)
    assert cpu.counters().gp_faults == 0


def test_toggling_cr4_pge_reloads_the_pdptes():
    """pae.md §2: a MOV to CR4 that changes PGE reloads the PDPTE registers."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    mem.write_u64(h.PDPT_BASE, PD1 | o.P)
    cpu.cr4_pge = True
    assert cpu.pdptes[0] == PD1 | o.P
    assert h.attempt(cpu, h.va(0, 0, 0, 8)) == ("ok", 0x0040_0008)


def test_a_walk_reads_the_pdpte_register_not_memory_even_without_a_tlb_entry():
    """pae.md §1: with PAE paging the walk never uses CR3 or the PDPT in memory directly."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    mem.write_u64(h.PDPT_BASE, 0)
    cpu.flush_tlb(include_global=True)
    assert h.attempt(cpu, h.va(0, 0, 0, 4)) == ("ok", 0x0020_0004)
    assert mem.read_u64(h.PDPT_BASE) == 0  # and never written (no A bit in a PAE PDPTE)


def test_the_walker_never_writes_a_pdpte():
    """pae.md §2/§8: a PAE PDPTE has no A bit; the processor never writes it."""
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    cpu.write_u64(h.va(0, 0, 0, 8), 1)
    cpu.translate(h.va(1, 0, 0, 8), o.WRITE)
    assert [mem.read_u64(h.PDPT_BASE + 8 * i) for i in range(4)] == list(pdpt_values())


# ----------------------------------------------------------------------------- MAXPHYADDR

@pytest.mark.parametrize("m", [32, 36, 40, 46, 52])
@pytest.mark.parametrize("level", ["pde-4k", "pte", "pde-2m"])
def test_an_address_bit_at_or_above_maxphyaddr_is_reserved_and_below_it_is_address(m, level):
    """pae.md §4: bits 62:M are reserved in PDEs and PTEs; bit M-1 is part of the address."""
    for bit, reserved in ((m - 1, False), (m, m < 63)):
        if level == "pde-4k":
            entries = h.standard_tables(h.PT_BASE | o.P | o.RW | (1 << bit), h.FRAME_4K | o.P)
            moved_pte = (h.PT_BASE | (1 << bit)) + 8 * h.PTE_INDEX
            if not reserved and moved_pte >= h.MEM_SIZE:
                continue  # the moved page table would lie beyond the 64 GiB test memory
            if not reserved:  # bit M-1 moves the page table: put a PTE there
                entries[moved_pte] = 0x5000 | o.P
        elif level == "pte":
            entries = h.standard_tables(h.PT_BASE | o.P | o.RW, 0x5000 | o.P | (1 << bit))
        else:
            entries = h.standard_tables((1 << bit) | 0x40_0000 | o.PS | o.P | o.RW, 0)
        problems = h.conformance_problems(entries, h.LA, [
            o.Env(access=a, m=m) for a in (o.READ, o.WRITE, o.USER)])
        assert not problems, problems[:4]
        pdptes = o.load_pdptes(entries, h.PDPT_BASE, m)
        assert o.walk(entries, pdptes, h.LA, o.Env(m=m)).faulted == reserved


def test_bits_62_52_stay_reserved_even_at_maxphyaddr_52():
    """pae.md §3: unlike 4-level paging, PAE has no ignored bits up there."""
    for bit in (52, 58, 62):
        mem, cpu = h.machine(h.standard_tables(h.PT_BASE | o.P, 0x5000 | o.P | (1 << bit)),
                             o.Env(m=52, nxe=True))
        assert h.attempt(cpu, h.LA) == ("fault", h.LA, 0x9)


def test_bit_37_in_a_pte_is_reserved_at_maxphyaddr_36_and_an_address_bit_at_40():
    """pae.md §4: the same entry is reserved under M=36 and valid under M=40."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW, (1 << 37) | 0x5000 | o.P | o.RW)
    _, cpu36 = h.machine(entries, o.Env(m=36))
    _, cpu40 = h.machine(entries, o.Env(m=40))
    assert h.attempt(cpu36, h.LA, o.WRITE) == ("fault", h.LA, 0xB)
    assert h.attempt(cpu40, h.LA, o.WRITE) == ("ok", (1 << 37) | 0x5ABC)


@pytest.mark.parametrize("m, gp", [(36, True), (40, True), (41, False), (52, False)])
def test_a_pdpte_with_bit_40_gives_gp_unless_maxphyaddr_exceeds_40(m, gp):
    """pae.md §2/§4: PDPTE bits 63:M are reserved and checked at load."""
    mem = PhysicalMemory(1 << 36)
    mem.write_u64(h.PDPT_BASE, (1 << 40) | PD0 | o.P)
    cpu = CPU(mem, maxphyaddr=m)
    if gp:
        with pytest.raises(GeneralProtection):
            cpu.load_cr3(h.PDPT_BASE)
    else:
        cpu.load_cr3(h.PDPT_BASE)
        assert cpu.pdptes[0] == (1 << 40) | PD0 | o.P


def test_a_reserved_bit_fault_happens_before_the_walk_reads_the_bad_address():
    """pae.md §4: an address bit >= M gives RSVD before anything is read at that address."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW | (1 << 40), h.FRAME_4K | o.P)
    mem, cpu = h.machine(entries)
    assert h.attempt(cpu, h.LA) == ("fault", h.LA, 0x9)
    assert cpu.counters().pte_reads == 0


def test_a_not_present_pdpte_faults_before_any_pde_is_read():
    """pae.md §5 step 1."""
    mem, cpu = h.machine({h.PDPTE_ADDR: 0})
    with pytest.raises(PageFault):
        cpu.translate(h.LA, o.USER)
    assert (cpu.counters().pde_reads, cpu.counters().faults_not_present) == (0, 1)


def test_turning_paging_back_on_reloads_the_pdptes_if_the_model_exposes_cr0_pg():
    """pae.md §2: a MOV to CR0 that changes CR0.PG while PAE is on reloads the PDPTEs."""
    if not hasattr(CPU, "cr0_pg"):
        pytest.skip("the model exposes no CR0.PG write")
    mem = two_directory_memory()
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    mem.write_u64(h.PDPT_BASE, PD1 | o.P)
    cpu.cr0_pg = False
    cpu.cr0_pg = True
    assert cpu.pdptes[0] == PD1 | o.P
    assert h.attempt(cpu, h.va(0, 0, 0, 8)) == ("ok", 0x0040_0008)
