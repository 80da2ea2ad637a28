"""fork, COW, exec and exit, checked through the data ledger: each process writes tokens
that depend only on its place in the workload; every read is compared with the ledger and
the audit reads every live page back through the MMU (guestkit.audit).

Rules (reference/linux-guest.md §1.4, mm/memory.c of 2.6): copy_page_range copies the
present PTEs and write-protects COW pages in the parent and the child, then
flush_tlb_mm(parent); a write to a COW page copies it unless the writer is its only user
(do_wp_page reuse); exec builds a new mm and drops the old one; exit_mmap clears every PTE
and frees the page tables, and pgd_free returns the PMDs.
"""
from __future__ import annotations

import re

import pytest

from engines.hw import A_USER
from guestkit.syscalls import DATA_WORD
from guestkit.tokens import data_token
from race.boot import BootCell, run_boot

import guest_harness as h

LEDGER_MISMATCH = re.compile(r"data ledger: .* expected (0x[0-9a-f]{16}), found (0x[0-9a-f]{16})")


def _result(cell: BootCell, sabotage=frozenset()) -> dict:
    return list(run_boot(cell, sabotage=frozenset(sabotage)))[-1]


# ----------------------------------------------------------------------- whole boots

def test_a_tiny_boot_forks_execs_and_exits_with_a_clean_ledger():
    res = _result(BootCell(engine="native", profile="tiny", vcpus=2, memory_mib=64))
    assert res["status"] == "ok" and res["reason"] is None
    c = res["counters"]
    assert c["guest.forks"] >= 20 and c["guest.execs"] >= 20 and c["guest.exits"] >= 20
    assert c["guest.cow_copy"] > 0 and c["guest.fork_ptes_copied"] > 0
    assert res["readback"]["reads"] > 1000


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("hook", ["skip_fork_flush", "skip_cow_wrprotect"])
def test_a_sabotaged_fork_ends_the_boot_dnf_naming_the_ledger_mismatch(hook, vcpus):
    """A fork without its TLB flush (the parent keeps a writable translation) or without
    write-protecting the parent's PTEs lets the parent write into its child's page: the
    boot is a DNF whose reason names the data ledger, the address, expected and found."""
    res = _result(BootCell(engine="native", profile="tiny", vcpus=vcpus, memory_mib=64),
                  sabotage={hook})
    assert res["status"] == "dnf"
    m = LEDGER_MISMATCH.search(res["reason"])
    assert m, res["reason"]
    assert m.group(1) != m.group(2)
    assert re.search(r"va 0x[0-9a-f]{8}", res["reason"])
    assert [s["milestone"] for s in res["milestones"]][-1] != "multiuser"


# ------------------------------------------------------ hand-written programs as init

def _image(guest, path="/bin/cowtest"):
    return guest.workload.image("cmd", path)


def _heap(guest, task, page=0) -> int:
    return task.image.region(task.mm, "heap").start + (page << 12)


def _cow_program(guest):
    """init writes two heap pages, forks; the parent writes page 0 again; the child reads
    both (it must see the pre-fork values), writes page 0 and wakes the parent, which
    reads both back. Both stay alive asleep so their mms can be inspected."""
    def child(parent_pid):
        yield ("touch", "heap", 0, 2, "r")
        yield ("touch", "heap", 0, 1, "w")
        yield ("touch", "heap", 0, 2, "r")
        yield ("wake", parent_pid)
        yield ("sleep",)

    def parent():
        yield ("exec", _image(guest))
        yield ("brk", 2)
        yield ("touch", "heap", 0, 2, "w")
        me = yield ("getpid",)
        yield ("fork", child(me), "child")
        yield ("touch", "heap", 0, 1, "w")
        yield ("sleep",)
        yield ("touch", "heap", 0, 2, "r")
        yield ("sleep",)
    return parent()


def test_after_fork_parent_and_child_each_read_their_own_data():
    engine, guest = h.run_init(_cow_program)
    k = guest.kernel
    parent, child = h.task_by_place(guest, "init"), h.task_by_place(guest, "child")
    page0, page1 = _heap(guest, parent, 0), _heap(guest, parent, 1)
    assert guest.audit() == []
    assert k.ledger_checks == 6                       # every read above was checked
    want = {
        (parent, page0): data_token("init", page0 + DATA_WORD, 2),
        (parent, page1): data_token("init", page1 + DATA_WORD, 1),
        (child, page0): data_token("child", page0 + DATA_WORD, 2),
        (child, page1): data_token("init", page1 + DATA_WORD, 1),
    }
    for (task, page), token in want.items():
        cpu = h.fresh_cpu(engine, task.mm.pgd_pa)
        assert engine.memory.read_u64(cpu.translate(page + DATA_WORD, A_USER)) == token
    assert parent.mm.pages[page0 >> 12] != child.mm.pages[page0 >> 12]
    assert parent.mm.pages[page1 >> 12] == child.mm.pages[page1 >> 12]
    assert k.stats["cow_copy"] == 1 and k.stats["cow_reuse"] == 1


def test_a_cow_page_still_shared_is_read_only_in_parent_and_child():
    """copy_one_pte: the parent's PTE is write-protected and the child's copy too."""
    engine, guest = h.run_init(_cow_program)
    parent, child = h.task_by_place(guest, "init"), h.task_by_place(guest, "child")
    page1 = _heap(guest, parent, 1)
    for task in (parent, child):
        walk = h.soft_walk(engine.memory, task.mm.pgd_pa, page1)
        assert walk.paddr is not None and walk.user and not walk.writable


def _write_after_fork_program(guest):
    """init writes a heap page (its TLB caches the translation writable and dirty),
    forks a child that only sleeps, then writes the page again and never reads it. Only
    the audit can notice if that write lands in the child's frame."""
    def parent():
        yield ("exec", _image(guest))
        yield ("brk", 1)
        yield ("touch", "heap", 0, 1, "w")
        yield ("fork", _sleep_forever(), "child")
        yield ("touch", "heap", 0, 1, "w")
        yield ("sleep",)
    return parent()


def _sleep_forever():
    yield ("sleep",)


def test_without_sabotage_the_parents_write_after_fork_leaves_the_child_alone():
    engine, guest = h.run_init(_write_after_fork_program)
    assert guest.audit() == []
    assert guest.kernel.stats["cow_copy"] == 1


@pytest.mark.parametrize("hook", ["skip_fork_flush", "skip_cow_wrprotect"])
def test_the_audit_catches_a_parent_writing_into_its_childs_page(hook):
    """The ledger audit reads the child's page back through the MMU and names the child,
    the address, the token it must hold (the parent's first write) and what it found
    (the parent's second write, which went to the shared frame)."""
    engine, guest = h.run_init(_write_after_fork_program, sabotage={hook})
    parent = h.task_by_place(guest, "init")
    va = _heap(guest, parent) + DATA_WORD
    problems = guest.audit()
    assert problems == [f"child (mm {h.task_by_place(guest, 'child').mm.id}): va {va:#010x} "
                        f"expected {data_token('init', va, 1):#018x}, "
                        f"found {data_token('init', va, 2):#018x}"]


def test_the_audit_reports_a_page_corrupted_behind_the_kernels_back():
    engine, guest = h.run_init(_cow_program)
    child = h.task_by_place(guest, "child")
    va = _heap(guest, child, 0) + DATA_WORD
    paddr = h.soft_walk(engine.memory, child.mm.pgd_pa, va).paddr
    engine.memory.write_u64(paddr, 0xDEAD)
    problems = guest.audit()
    assert len(problems) == 1
    assert f"va {va:#010x}" in problems[0] and "found 0x000000000000dead" in problems[0]


def test_the_audit_is_not_charged_to_the_race():
    """Engine.unaccounted: the audit's reads change no clock and no counter."""
    engine, guest = h.run_init(_cow_program)
    before = ([engine.clock(v) for v in range(engine.spec.vcpus)], engine.counters(),
              dict(guest.kernel.stats))
    assert guest.audit() == []
    after = ([engine.clock(v) for v in range(engine.spec.vcpus)], engine.counters(),
             dict(guest.kernel.stats))
    assert after == before


# --------------------------------------------------------------------- exec and exit

def _exec_program(guest, seen):
    """init writes its heap and forks a child that execs another program, touches its
    own heap and exits; init waits and writes its heap page again."""
    k = guest.kernel

    def child():
        me = yield ("getpid",)
        seen["forked_mm"] = k.tasks[me].mm
        yield ("exec", _image(guest, "/bin/other"))
        seen["exec_mm"] = k.tasks[me].mm
        yield ("brk", 1)
        yield ("touch", "heap", 0, 1, "w")
        yield ("touch", "text", 0, 2, "x")
        yield ("exit", 0)

    def parent():
        yield ("exec", _image(guest))
        yield ("brk", 1)
        yield ("touch", "heap", 0, 1, "w")
        me = yield ("getpid",)
        mm = k.tasks[me].mm
        seen["parent_pfn"] = mm.pages[_heap(guest, k.tasks[me]) >> 12]
        seen["used_before_fork"] = k.alloc.used
        seen["cache_before_fork"] = len(k.mmm.pagecache)
        yield ("fork", child(), "child")
        code = yield ("wait",)
        seen["exit_code"] = code
        seen["used_after_wait"] = k.alloc.used
        seen["cache_after_wait"] = len(k.mmm.pagecache)
        seen["cow_before_write"] = dict(k.stats)
        yield ("touch", "heap", 0, 1, "w")
        yield ("touch", "heap", 0, 1, "r")
        yield ("sleep",)
    return parent()


@pytest.fixture(scope="module")
def exec_run():
    seen: dict = {}
    engine, guest = h.run_init(lambda g: _exec_program(g, seen))
    return engine, guest, seen


def test_exec_replaces_the_forked_mm_and_the_old_one_is_torn_down(exec_run):
    engine, guest, seen = exec_run
    old, new = seen["forked_mm"], seen["exec_mm"]
    assert old is not new and old.id != new.id
    assert old.dead and old.freed and old.pages == {} and old.pt == {}
    assert new.dead and new.freed                      # the child exited since
    assert seen["exit_code"] == 0


def test_exit_and_wait_give_back_every_frame_fork_exec_and_the_child_took(exec_run):
    """After the child is reaped, the only frames still in use beyond those before the
    fork are the page-cache pages its exec read in (no page-table page, pgd or anon page
    leaks)."""
    engine, guest, seen = exec_run
    grown = seen["cache_after_wait"] - seen["cache_before_fork"]
    assert grown > 0
    assert seen["used_after_wait"] - seen["used_before_fork"] == grown


def test_a_cow_page_whose_sharer_exec_d_away_is_reused_not_copied(exec_run):
    """do_wp_page: when the faulting mm is the page's only user, the PTE is made writable
    again in place (no copy) and the page keeps its frame."""
    engine, guest, seen = exec_run
    k = guest.kernel
    before = seen["cow_before_write"]
    assert k.stats["cow_reuse"] == before.get("cow_reuse", 0) + 1
    assert k.stats["cow_copy"] == before.get("cow_copy", 0)
    parent = h.task_by_place(guest, "init")
    assert parent.mm.pages[_heap(guest, parent) >> 12] == seen["parent_pfn"]
    assert guest.audit() == []


def test_page_table_pages_in_use_are_exactly_those_of_the_mms_still_loaded():
    """exit_mmap frees every L1 of the mm, pgd_free its three user PMDs: at the end of a
    boot, page-table pages allocated minus freed equals what the live (or lazily still
    loaded) mms and the vmalloc area hold."""
    engine, guest = h.boot("tiny", vcpus=2)
    k = guest.kernel
    mms = {id(t.mm): t.mm for t in k.tasks.values() if t.mm is not None}
    mms.update({id(mm): mm for mm in k.active_mm if mm is not None})
    held = sum(3 + len(mm.pt) for mm in mms.values() if not mm.freed) + len(k.vmalloc_pt)
    assert k.stats["pt_pages_allocated"] - k.stats["pt_pages_freed"] == held
    assert all(not mm.pt and not mm.pages for mm in mms.values() if mm.dead)
