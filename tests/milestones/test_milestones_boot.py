"""Milestones of real boots: reached in ladder order, stamped at non-decreasing simulated
times, and deterministic (DESIGN.md: same spec and seed, same numbers, on any machine, in
any process, in any order). The seed moves the workload's jitter (each program's
computation is +-25% by seed), so different seeds give different stamps.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.api import DomainSpec, load_cost_table
from engines.native import NativeEngine
from guestkit import Guest, load_profile
from milestones.ladder import DATA_VALUES, GUEST_EVENTS, RUNLEVELS
from race.boot import BootCell, run_boot

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ["kernel_entry", "paging_on", "direct_map", "smp_online", "init_exec",
           "single_user", "multiuser"]


def tiny(seed: int = 0, vcpus: int = 2) -> BootCell:
    return BootCell(engine="native", profile="tiny", vcpus=vcpus, memory_mib=64, seed=seed)


def events(cell: BootCell) -> list[dict]:
    return list(run_boot(cell))


@pytest.mark.parametrize("vcpus", [1, 2, 3])
def test_a_boot_stamps_every_milestone_in_ladder_order_at_growing_times(vcpus):
    evs = events(tiny(vcpus=vcpus))
    result = evs[-1]
    stamps = [e for e in evs if e["type"] == "milestone"]
    assert result["status"] == "ok"
    assert [s["milestone"] for s in stamps] == DEFAULT
    assert [s["index"] for s in stamps] == list(range(len(DEFAULT)))
    assert result["milestones"] == [{k: v for k, v in s.items() if k != "more"} for s in stamps]
    cycles = [s["cycles"] for s in stamps]
    assert cycles == sorted(cycles) and cycles[0] == 0 and cycles[-1] > 0
    assert all(0 <= s["vcpu"] < vcpus for s in stamps)


def test_the_stamps_carry_counters_that_only_grow():
    stamps = events(tiny())[:-1]
    for key in ("hw.cr3_loads", "hw.walks", "guest.forks", "guest.page_faults"):
        seq = [s["counters"].get(key, 0) for s in stamps]
        assert seq == sorted(seq), key
    assert stamps[-1]["counters"]["guest.execs"] > 0
    assert stamps[DEFAULT.index("init_exec")]["counters"]["guest.execs"] == 1


def test_milestones_come_out_while_the_boot_runs_not_after_it():
    """run_boot is a generator: the first stamp is available before the boot ends."""
    gen = run_boot(tiny())
    first = next(gen)
    assert first["type"] == "milestone" and first["milestone"] == "kernel_entry"
    rest = list(gen)
    assert rest[-1]["type"] == "result"


def test_the_same_seed_gives_identical_stamps_and_results_twice_in_one_process():
    first, second = events(tiny(seed=7)), events(tiny(seed=7))
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_a_boot_in_between_does_not_change_the_next_one():
    """No state leaks between boots (caches, counters, allocators): run order is free."""
    a = events(tiny(seed=1))
    events(tiny(seed=2, vcpus=3))
    assert events(tiny(seed=1)) == a


def test_different_seeds_move_the_workload_but_not_the_kernels_own_boot():
    a, b = events(tiny(seed=0))[-1], events(tiny(seed=1))[-1]
    ca = {m["milestone"]: m["cycles"] for m in a["milestones"]}
    cb = {m["milestone"]: m["cycles"] for m in b["milestones"]}
    for name in ("kernel_entry", "paging_on", "direct_map", "smp_online", "init_exec"):
        assert ca[name] == cb[name], name
    assert ca["single_user"] != cb["single_user"] and ca["multiuser"] != cb["multiuser"]
    assert a["cycles"] != b["cycles"]


def test_what_the_processes_read_back_does_not_depend_on_vcpus_or_the_flush_filter():
    """The read-back digest sums a hash per (place, va, value): the interleaving of VCPUs
    and TLB behaviour change the timing, never what a process reads."""
    digests = set()
    for vcpus, ff in ((1, False), (2, False), (3, True)):
        cell = BootCell(engine="native", profile="tiny", vcpus=vcpus, memory_mib=64,
                        flush_filter=ff)
        digests.add(json.dumps(events(cell)[-1]["readback"], sort_keys=True))
    assert len(digests) == 1


def test_the_guest_emits_every_event_a_ladder_may_name():
    """milestones.ladder.GUEST_EVENTS is exactly what guestkit emits during a boot, so a
    user ladder can only name events that happen."""
    seen: dict[str, set] = {}
    engine = NativeEngine(DomainSpec(vcpus=2, memory_mib=64), load_cost_table())
    Guest(engine, load_profile("tiny"),
          emit=lambda e, v, d: seen.setdefault(e, set()).add(tuple(d))).boot()
    assert set(seen) == set(GUEST_EVENTS)
    # ... with exactly the data keys a ladder's match may name
    assert {e: keys for e, keys in seen.items()} == {e: {k} for e, k in GUEST_EVENTS.items()}


def test_every_datum_the_guest_emits_is_a_value_a_ladder_may_match():
    """milestones.ladder.DATA_VALUES admits what guestkit emits (so a ladder refused as
    impossible really is), and the runlevels are exactly those init runs."""
    seen: list[tuple[str, dict]] = []
    engine = NativeEngine(DomainSpec(vcpus=2, memory_mib=64), load_cost_table())
    Guest(engine, load_profile("tiny"), emit=lambda e, v, d: seen.append((e, dict(d)))).boot()
    for event, data in seen:
        for key, value in data.items():
            assert DATA_VALUES[event, key][0](value), (event, key, value)
    assert {d["runlevel"] for e, d in seen if e == "rc_done"} == set(RUNLEVELS)


def test_a_boot_in_another_process_with_another_hash_seed_gives_the_same_record():
    """Determinism across processes: string hashing (PYTHONHASHSEED; random in this
    process) must not reach the simulation. The CLI's --json record from a fresh
    interpreter equals the one built here."""
    here = events(tiny(seed=3))[-1]
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", "import sys; from race.bootcmd import main; "
                          "sys.exit(main(sys.argv[1:]))", "boot", "--engine", "native",
                          "--profile", "tiny", "--seed", "3", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(here))
