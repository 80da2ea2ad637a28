"""How a #PF leaves the CPU model: raised by `translate` (and the accessors built on it) as
`PageFault`, or handed back by `try_translate` as the complement of the error code, with the
same walk, A/D updates, TLB effect and counters either way (SDM §4.7, §4.10.4.1: a #PF
invalidates the faulting page's TLB entries). Also `PhysicalMemory.frame`, the read-only
view of a frame's words, and `load_frame`, a whole frame written at once.
"""
import pickle

import pytest

from engines.hw import Access, PageFault, PhysicalMemory

import hw_harness as h
import hw_oracle as o
from test_hw_walk_grid import ENVS, SMALL_CASES


def outcome_by_try(cpu, la: int, access: int) -> tuple:
    r = cpu.try_translate(la, Access(access))
    return ("ok", r) if r >= 0 else ("fault", la, ~r)


def replay(entries: dict[int, int], env: o.Env, use_try: bool, preload: bool) -> tuple:
    mem, cpu = h.machine(entries, env)
    if preload:           # a cached read-only translation the write must miss and drop
        h.attempt(cpu, h.LA, 0)
    got = outcome_by_try(cpu, h.LA, env.access) if use_try else h.attempt(cpu, h.LA, env.access)
    return (got, [mem.read_u64(pa) for pa in entries], h.tlb_view(cpu), cpu.counters())


@pytest.mark.parametrize("case", SMALL_CASES[::7], ids=lambda c: f"pde={c[0]:#x}")
def test_try_translate_does_exactly_what_translate_does_but_returns_the_fault(case):
    pde, _core, ptes = case
    for pte in ptes[:2]:
        entries = h.standard_tables(h.PT_BASE | pde, h.FRAME_4K | pte)
        for env in ENVS:
            for preload in (False, True):
                raised = replay(entries, env, use_try=False, preload=preload)
                returned = replay(entries, env, use_try=True, preload=preload)
                assert returned == raised, (env, hex(pde), hex(pte), preload)


def test_a_returned_fault_is_the_complement_of_a_plain_int_error_code():
    _mem, cpu = h.machine({h.PDPTE_ADDR: 0})
    r = cpu.try_translate(0x7FFF_FFFF, Access.USER | Access.WRITE)
    assert r == ~0x6 and type(r) is int


def test_a_page_fault_keeps_its_values_in_args_and_survives_pickling():
    pf = PageFault(0x1234, 0x7, "why")
    assert (pf.vaddr, pf.error_code, pf.detail) == (0x1234, 0x7, "why")
    assert PageFault(0x1234, 0x5).detail == ""
    back = pickle.loads(pickle.dumps(pf))
    assert (back.vaddr, back.error_code, str(back)) == (0x1234, 0x7, str(pf))
    assert "0x00001234" in str(pf) and "why" in str(pf)


def test_frame_reads_the_live_words_of_a_frame_and_none_while_untouched():
    mem = PhysicalMemory(1 << 36)
    assert mem.frame(0x5) is None
    mem.write_u64(0x5008, 0xABC)
    words = mem.frame(0x5)
    assert len(words) == 512 and words[1] == 0xABC and words[0] == 0
    mem.write_u32(0x500C, 0x8000_0000)
    assert mem.frame(0x5)[1] == (0x8000_0000 << 32) | 0xABC
    mem.zero_frame(0x5)
    assert mem.frame(0x5) is None


def test_load_frame_leaves_what_a_write_u64_per_word_leaves_and_notifies_watchers():
    words = [(i * 0x1001) | (1 << 63 if i % 3 else 0) for i in range(300)]
    by_word, loaded = PhysicalMemory(1 << 36), PhysicalMemory(1 << 36)
    for i, w in enumerate(words):
        by_word.write_u64((0x77 << 12) + 8 * i, w)
    seen = []
    loaded.watch[(0x77 << 6) + 63] = {lambda: seen.append("disarmed")}
    loaded.load_frame(0x77, words)
    assert loaded.frame_words(0x77) == by_word.frame_words(0x77)
    assert loaded.frame_count() == 1 and seen == ["disarmed"]


@pytest.mark.parametrize("words", [[0] * 513, [1 << 64], [-1]])
def test_load_frame_refuses_too_many_words_or_values_beyond_64_bits(words):
    mem = PhysicalMemory(1 << 36)
    with pytest.raises(ValueError):
        mem.load_frame(0x5, words)
    assert mem.frame(0x5) is None
