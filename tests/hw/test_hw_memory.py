"""PhysicalMemory: sparse 36-bit machine memory with aligned 32/64-bit accesses.

The rules: sizes are whole 4 KiB frames up to 64 GiB; untouched memory reads 0 and costs
nothing; an access is aligned to its width and below the size, else AddressError naming
the address in hex; values must fit their width; little-endian like every x86.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.hw import CPU, Access, AddressError, HwError, PageFault, PhysicalMemory

import hw_harness as h
import hw_oracle as o

MAX = 1 << 36


def test_untouched_memory_reads_zero_and_reading_materialises_nothing():
    mem = PhysicalMemory(MAX)
    assert mem.size == MAX
    assert mem.read_u64(0) == 0 and mem.read_u64(MAX - 8) == 0 and mem.read_u32(0x1234) == 0
    assert mem.frame_count() == 0


def test_a_write_materialises_exactly_the_frame_it_touches():
    mem = PhysicalMemory(MAX)
    mem.write_u64(MAX - 8, 0xDEADBEEF)
    mem.write_u32(0x5004, 7)
    mem.write_u64(0x5FF8, 1)
    assert mem.frame_count() == 2
    assert mem.read_u64(MAX - 8) == 0xDEADBEEF


def test_a_64_gib_memory_is_cheap_because_it_is_sparse():
    mems = [PhysicalMemory(MAX) for _ in range(100)]
    assert all(m.frame_count() == 0 for m in mems)


@pytest.mark.parametrize("size", [4096, 1 << 20, 3 * 4096, MAX])
def test_any_whole_number_of_frames_up_to_64_gib_is_a_valid_size(size):
    assert PhysicalMemory(size).size == size


@pytest.mark.parametrize("size", [1, 4095, 4097, (1 << 20) + 8, MAX + 4096, 1 << 40])
def test_a_size_that_is_not_whole_frames_or_is_above_64_gib_is_refused(size):
    with pytest.raises(ValueError):
        PhysicalMemory(size)


@pytest.mark.parametrize("method, paddr", [
    ("read_u64", 0x1003), ("read_u64", 0x1004), ("write_u64", 0x1001), ("read_u32", 0x1002),
    ("write_u32", 0x1003), ("read_u64", 1 << 20), ("write_u64", 1 << 20),
    ("read_u32", (1 << 20) + 4), ("write_u32", 1 << 21)])
def test_a_misaligned_or_out_of_range_access_raises_address_error_naming_the_address(
        method, paddr):
    mem = PhysicalMemory(1 << 20)
    args = (paddr, 0) if method.startswith("write") else (paddr,)
    with pytest.raises(AddressError) as info:
        getattr(mem, method)(*args)
    assert f"{paddr:#x}" in str(info.value).lower()
    assert isinstance(info.value, HwError) and isinstance(info.value, ValueError)
    assert mem.frame_count() == 0


def test_the_last_aligned_slots_below_the_size_are_accessible():
    mem = PhysicalMemory(1 << 20)
    mem.write_u64((1 << 20) - 8, 1)
    mem.write_u32((1 << 20) - 4, 2)
    assert mem.read_u64((1 << 20) - 8) == (2 << 32) | 1


@pytest.mark.parametrize("value", [-1, 1 << 64, (1 << 64) + 5])
def test_a_u64_write_outside_0_to_2_pow_64_is_refused_not_masked(value):
    mem = PhysicalMemory(1 << 20)
    with pytest.raises(ValueError):
        mem.write_u64(0x100, value)
    assert mem.read_u64(0x100) == 0


@pytest.mark.parametrize("value", [-1, 1 << 32])
def test_a_u32_write_outside_0_to_2_pow_32_is_refused_not_masked(value):
    mem = PhysicalMemory(1 << 20)
    with pytest.raises(ValueError):
        mem.write_u32(0x100, value)
    assert mem.read_u64(0x100) == 0


def test_the_largest_values_fit():
    mem = PhysicalMemory(1 << 20)
    mem.write_u64(0, (1 << 64) - 1)
    mem.write_u32(8, (1 << 32) - 1)
    assert (mem.read_u64(0), mem.read_u32(8), mem.read_u32(12)) == ((1 << 64) - 1, (1 << 32) - 1, 0)


def test_memory_is_little_endian_like_x86():
    mem = PhysicalMemory(1 << 20)
    mem.write_u64(0x2000, 0x1122334455667788)
    assert (mem.read_u32(0x2000), mem.read_u32(0x2004)) == (0x55667788, 0x11223344)
    mem.write_u32(0x2004, 0xAABBCCDD)
    assert mem.read_u64(0x2000) == 0xAABBCCDD55667788


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, (1 << 17) - 1), st.integers(0, 2**64 - 1)),
                max_size=40))
def test_memory_behaves_like_a_dict_of_u32_halves(ops):
    """Property: any mix of u32/u64 writes reads back as a little-endian byte store."""
    mem, model = PhysicalMemory(1 << 20), {}
    for wide, slot, value in ops:
        if wide:
            paddr = slot * 8
            mem.write_u64(paddr, value)
            model[paddr], model[paddr + 4] = value & 0xFFFFFFFF, value >> 32
        else:
            paddr = slot * 4 % (1 << 20)
            mem.write_u32(paddr, value & 0xFFFFFFFF)
            model[paddr] = value & 0xFFFFFFFF
    for paddr, value in model.items():
        assert mem.read_u32(paddr) == value
    frames = {paddr >> 12 for paddr in model}
    assert mem.frame_count() == len(frames)


def test_cpu_write_then_read_goes_through_the_translation_to_the_frame():
    """The CPU's read_u64/write_u64 translate and then access memory at the paddr."""
    mem, cpu = h.machine(h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P | o.RW))
    cpu.write_u64(h.LA & ~7, 0xCAFE)
    assert mem.read_u64((h.FRAME_4K | 0xABC) & ~7) == 0xCAFE
    assert cpu.read_u64(h.LA & ~7) == 0xCAFE


def test_a_cpu_write_implies_a_write_access_and_faults_on_a_read_only_page_with_wp():
    """pae.md §6/§7: the write is checked as a write; error code P|W = 0x3."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P)
    mem, cpu = h.machine(entries, o.Env(wp=True))
    with pytest.raises(PageFault) as info:
        cpu.write_u64(h.LA & ~7, 1)
    assert (info.value.vaddr, int(info.value.error_code)) == (h.LA & ~7, 0x3)
    assert mem.read_u64((h.FRAME_4K | 0xABC) & ~7) == 0
    assert mem.read_u64(h.PTE_ADDR) == entries[h.PTE_ADDR]


def test_a_cpu_u32_write_is_a_write_access_that_changes_only_its_half_and_sets_d():
    """CPU.write_u32 (half of a PAE entry, as Linux's set_pte stores one): translated as a
    write (D set in the leaf, pae.md §8), then the 4 bytes at the physical address."""
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P | o.RW)
    mem, cpu = h.machine(entries, o.Env(wp=True))
    pa = (h.FRAME_4K | 0xABC) & ~7
    mem.write_u64(pa, 0x1111111122222222)
    cpu.write_u32((h.LA & ~7) + 4, 0xCAFE)
    assert mem.read_u64(pa) == 0x0000CAFE22222222
    assert mem.read_u64(h.PTE_ADDR) & o.D
    ro = h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P)
    mem, cpu = h.machine(ro, o.Env(wp=True))
    with pytest.raises(PageFault) as info:
        cpu.write_u32(h.LA & ~3, 1)
    assert int(info.value.error_code) == 0x3


def test_a_cpu_user_read_of_a_supervisor_page_faults_with_u_set():
    entries = h.standard_tables(h.PT_BASE | o.P | o.RW | o.US, h.FRAME_4K | o.P)
    mem, cpu = h.machine(entries)
    with pytest.raises(PageFault) as info:
        cpu.read_u64(h.LA & ~7, Access.USER)
    assert int(info.value.error_code) == 0x5


def test_a_cpu_access_to_a_frame_beyond_memory_raises_address_error():
    """Translation succeeds; the memory access then refuses the paddr."""
    mem = PhysicalMemory(1 << 20)
    h.write_entries(mem, h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P | o.RW))
    cpu = CPU(mem)
    cpu.load_cr3(h.PDPT_BASE)
    with pytest.raises(AddressError):
        cpu.read_u64(h.LA & ~7)


def test_a_misaligned_cpu_access_raises_address_error():
    mem, cpu = h.machine(h.standard_tables(h.PT_BASE | o.P | o.RW, h.FRAME_4K | o.P | o.RW))
    with pytest.raises(AddressError):
        cpu.read_u64(h.LA)  # LA ends in 0xabc: 4-aligned, not 8-aligned
