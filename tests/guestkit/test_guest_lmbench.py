"""Each lmbench micro-profile exercises the mechanism it names. A profile's counters are
compared with the same profile run with `iterations: 0` (the boot around the benchmark
is identical), so the difference is what the benchmark loop itself did.

lmbench's lat_proc fork/exec/shell, lat_ctx, lat_pagefault, lat_mmap and lat_sig prot
(McVoy & Staelin, USENIX'96) measure one mechanism each; guestkit.workload.lmbench is the
model of their loops.
"""
from __future__ import annotations

import pytest

from guestkit import load_profile
from race.boot import BootCell, run_boot

MECHANISMS = ("fork", "exec", "sh", "ctx", "pagefault", "mmap", "prot")
_runs: dict = {}


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmbench0")
    paths = {}
    for mech in MECHANISMS:
        path = root / f"lmbench-{mech}-0.yaml"
        path.write_text(f"name: lmbench-{mech}-0\ninherits: lmbench-{mech}\n"
                        f"lmbench:\n  iterations: 0\n")
        paths[mech] = str(path)
    return paths


def _run(profile: str) -> dict:
    if profile not in _runs:
        prof = load_profile(profile)
        cell = BootCell(engine="native", profile=profile, vcpus=prof.vcpus,
                        memory_mib=prof.memory_mib)
        _runs[profile] = list(run_boot(cell))[-1]
        assert _runs[profile]["status"] == "ok", _runs[profile]["reason"]
    return _runs[profile]


def measured(mech: str, baselines) -> tuple[dict, dict, dict]:
    """(delta counters, the run's counters, the profile's lmbench knobs)."""
    run, base = _run(f"lmbench-{mech}"), _run(baselines[mech])
    c, b = run["counters"], base["counters"]
    delta = {k: c.get(k, 0) - b.get(k, 0) for k in set(c) | set(b)}
    return delta, c, load_profile(f"lmbench-{mech}").lmbench


def test_every_micro_profile_is_packaged_on_one_vcpu_with_its_mechanism():
    for mech in MECHANISMS:
        prof = load_profile(f"lmbench-{mech}")
        assert prof.workload == "lmbench" and prof.vcpus == 1
        assert prof.lmbench["mechanism"] == mech and prof.lmbench["iterations"] > 0


def test_lmbench_fork_forks_once_per_iteration_copying_the_parents_ptes(baselines):
    d, c, lm = measured("fork", baselines)
    n = lm["iterations"]
    assert c["guest.forks"] >= n
    assert d["guest.forks"] == n and d["guest.exits"] == n and d["guest.pgd_alloc"] == n
    assert d["guest.execs"] == 0
    assert d["guest.fork_ptes_copied"] >= n * 50          # a whole process image each time
    assert d["guest.exit_mmap"] == n and d["guest.pgd_free"] == n


def test_lmbench_exec_execs_once_per_iteration(baselines):
    d, c, lm = measured("exec", baselines)
    n = lm["iterations"]
    assert c["guest.execs"] >= n
    assert d["guest.execs"] == n and d["guest.forks"] == n
    assert d["guest.faults_file"] >= n * 10              # demand paging of the new image


def test_lmbench_sh_forks_and_execs_a_shell_and_its_command_per_iteration(baselines):
    d, c, lm = measured("sh", baselines)
    n = lm["iterations"]
    assert d["guest.execs"] == 2 * n and d["guest.forks"] == 2 * n


def test_lmbench_ctx_loads_cr3_on_every_switch_between_the_two_processes(baselines):
    """switch_mm loads CR3 only when the mm changes: two processes passing a token switch
    mm twice per round trip."""
    d, c, lm = measured("ctx", baselines)
    n = lm["iterations"]
    assert c["hw.cr3_loads"] >= 2 * n
    assert d["hw.cr3_loads"] >= 2 * n and d["guest.context_switches"] >= 2 * n
    assert d["guest.cr3_switches"] >= 2 * n
    assert d["guest.forks"] == 0                         # the partner is forked either way


def test_lmbench_pagefault_takes_a_file_fault_per_page_per_iteration(baselines):
    d, c, lm = measured("pagefault", baselines)
    n, pages = lm["iterations"], lm["pages"]
    assert c["guest.page_faults"] >= n * pages
    assert d["guest.faults_file"] == n * pages
    assert d["pf_delivery"] == d["guest.page_faults"]    # native: every fault reaches the guest
    assert d["hw.faults_not_present"] >= n * pages


def test_lmbench_mmap_zero_fills_every_page_and_flushes_at_each_munmap(baselines):
    """i386 flush_tlb_range is flush_tlb_mm: one full flush (a CR3 reload) per munmap."""
    d, c, lm = measured("mmap", baselines)
    n, pages = lm["iterations"], lm["pages"]
    assert d["guest.faults_anon"] == n * pages
    assert d["guest.flush_tlb_mm"] == n
    assert d["hw.cr3_loads"] >= n


def test_lmbench_prot_takes_one_sigsegv_per_iteration_from_a_protection_fault(baselines):
    d, c, lm = measured("prot", baselines)
    n = lm["iterations"]
    assert c["guest.sigsegv"] == n
    assert d["hw.faults_protection"] >= n
    assert d["guest.flush_tlb_mm"] >= 2 * n              # mprotect on and off each time
