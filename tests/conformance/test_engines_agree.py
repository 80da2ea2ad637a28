"""One conformance suite run against every engine (in the manner of py65's CPU mixins): the
same guest, profile and seed must read back exactly the same data on every engine as on
bare hardware, reach every milestone in ladder order, and pass every audit — except where an
engine documents a design as broken (`KNOWN_BROKEN`), which must then fail visibly with a
reason, never pass silently.

Engines join this suite when they land (race.boot.ENGINES); their variants are the defaults
plus each option changed one at a time (engine module OPTIONS/DEFAULTS).
"""
from __future__ import annotations

import functools

import pytest

from race.boot import ENGINES, BootCell, run_boot


def variants() -> list[tuple[str, tuple]]:
    out = []
    for name, module in ENGINES.items():
        out.append((name, ()))
        defaults = getattr(module, "DEFAULTS", {})
        for key, choices in getattr(module, "OPTIONS", {}).items():
            if not isinstance(choices, tuple):
                continue
            for choice in choices:
                if choice != defaults.get(key):
                    out.append((name, ((key, choice),)))
    return out


def expected_failure(engine: str, options: tuple, vcpus: int) -> str | None:
    judge = getattr(ENGINES[engine], "KNOWN_BROKEN", None)
    return judge(dict(options), vcpus) if judge else None


@functools.lru_cache(maxsize=None)
def result(engine: str, options: tuple, profile: str, vcpus: int, seed: int = 0) -> dict:
    events = list(run_boot(BootCell(engine, options, profile=profile, vcpus=vcpus,
                                    memory_mib=64, seed=seed)))
    return events[-1]


VARIANTS = variants()
IDS = [f"{e}{''.join(f'-{k}={v}' for k, v in o)}" for e, o in VARIANTS]


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("engine, options", VARIANTS, ids=IDS)
def test_tiny_boot_reads_back_what_bare_hardware_reads(engine, options, vcpus):
    """Every process reads back the same words (keyed by its place in the workload) as on
    native, and the boot reaches multiuser with engine and ledger audits passing."""
    got = result(engine, options, "tiny", vcpus)
    broken = expected_failure(engine, options, vcpus)
    if broken:
        assert got["status"] == "dnf", f"{engine} {options}: expected to fail ({broken})"
        assert got["reason"], "a failed boot must say why"
        return
    assert got["status"] == "ok", got["reason"]
    native = result("native", (), "tiny", vcpus)
    assert got["readback"] == native["readback"]
    assert [m["milestone"] for m in got["milestones"]] == \
        [m["milestone"] for m in native["milestones"]]


@pytest.mark.parametrize("engine, options", VARIANTS, ids=IDS)
def test_milestone_cycles_increase_up_the_ladder(engine, options):
    got = result(engine, options, "tiny", 1)
    if got["status"] != "ok":
        pytest.skip(f"boot failed: {got['reason']}")
    cycles = [m["cycles"] for m in got["milestones"]]
    assert cycles == sorted(cycles)


LMBENCH = ["lmbench-fork", "lmbench-exec", "lmbench-sh", "lmbench-ctx", "lmbench-pagefault",
           "lmbench-mmap", "lmbench-prot"]


@pytest.mark.parametrize("profile", LMBENCH)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_lmbench_micro_profiles_agree_with_bare_hardware(engine, profile):
    got = result(engine, (), profile, 1)
    assert got["status"] == "ok", got["reason"]
    assert got["readback"] == result("native", (), profile, 1)["readback"]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_boot_is_deterministic(engine):
    """Same cell, same seed: the same events, field for field."""
    cell = BootCell(engine, (), profile="tiny", vcpus=2, memory_mib=64, seed=3)
    assert list(run_boot(cell)) == list(run_boot(cell))
