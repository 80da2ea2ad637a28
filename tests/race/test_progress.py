"""The live display (race/progress.py) ranks the way the dashboard does: per point, by a
job's median over its seeds so far, DNF jobs out; and its counts add up after --resume."""
from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from race_helpers import write_spec
from race.board import Board
from race.progress import LiveProgress, PlainProgress, Standing, Tally
from race.results import ResultStore, load_results
from race.runner import SerialExecutor, run_race
from race.spec import load_spec
from test_cli import SMALL   # (its shadow entry is skipped: not in the fake catalog)

SUMMARY = re.compile(r"queued (\d+) · running (\d+) · done (\d+) · DNF (\d+) · broken (\d+) "
                     r"· retried \d+ · (\d+)/(\d+)")


def race_small(tmp_path, catalog):
    return load_spec(str(write_spec(tmp_path, SMALL)), catalog)


def run_small(race, catalog, out, progress, resume=False):
    with SerialExecutor() as ex:
        store = (ResultStore.resume(out, race, ex.shape()) if resume
                 else ResultStore.create(out, race, ex.shape(), catalog))
        run_race(race, ex, store, progress, catalog.run_boot)
    return store


def dashboard_winners(store) -> dict[tuple[str, str], str | None]:
    """(point name, milestone) -> the final leaderboard's winning label, 'tie' or None."""
    b = Board(load_results(store.dir))
    out = {}
    for p in b.points:
        for m in b.ladder:
            row = b.race_at(p, m)
            out[b.point_name(p), m] = (b.jobs[row["winner"]].label if row["winner"] else
                                       "tie" if row["tie"] else None)
    return out


def tally_winners(tally: Tally) -> dict[tuple[str, str], str | None]:
    out = {}
    for p in tally.points:
        for m in tally.ladder:
            lead = tally.standing(p, m).leaders
            out[tally.point_name(p), m] = (tally.label[lead[0]] if len(lead) == 1 else
                                           "tie" if lead else None)
    return out


# -- a tiny scenario: stamps by hand ---------------------------------------------------------
def tally_of(jobs: list[tuple[str, str, int, int]]) -> Tally:
    """Cells (engine, label, vcpus, seed); times are cycles (no cost table: 1 cycle = 1 us)."""
    cells = []
    for engine, label, vcpus, seed in jobs:
        cfg = {"engine": engine, "options": {}, "profile": "tiny", "vcpus": vcpus,
               "memory_mib": 64, "machine_memory_mib": None, "flush_filter": False,
               "seed": seed, "costs": "c", "cost_overrides": {}, "ladder": "default"}
        cells.append({"key": f"{label}/{vcpus}v/s{seed}", "label": label, "config": cfg})
    todo = [SimpleNamespace(key=lambda k=c["key"]: k) for c in cells]
    return Tally(SimpleNamespace(cells=todo), {"cells": cells}, todo)


def stamp(tally: Tally, key: str, us: int, m: str = "multiuser"):
    return tally.milestone({"cell": key, "milestone": m, "index": 0, "cycles": us})


def test_a_job_leads_by_its_median_over_the_seeds_so_far():
    t = tally_of([("paravirt", "pv", 1, 1), ("paravirt", "pv", 1, 2),
                  ("shadow", "sh", 1, 1), ("shadow", "sh", 1, 2)])
    log = [stamp(t, "pv/1v/s1", 500), stamp(t, "sh/1v/s1", 600),
           stamp(t, "pv/1v/s2", 900),          # pv's median 700: behind sh's 600
           stamp(t, "sh/1v/s2", 650)]          # sh's median 625
    assert log == ["leads", None, "lead passes to sh", "leads"]
    assert t.standing(t.points[0], "multiuser").time_us == 625


def test_bare_hardware_and_hypervisors_race_only_at_their_own_point():
    t = tally_of([("native", "native", 1, 1), ("native", "native", 2, 1),
                  ("paravirt", "pv", 1, 1), ("shadow", "sh", 2, 1)])
    log = [stamp(t, "native/1v/s1", 5), stamp(t, "native/2v/s1", 3000),
           stamp(t, "pv/1v/s1", 8770), stamp(t, "sh/2v/s1", 6970)]
    assert log == [None, None, "leads at 1v", "leads at 2v"]
    one, two = t.points
    assert t.standing(one, "multiuser") == Standing(8770, ("pv",), 5)
    assert t.standing(two, "multiuser") == Standing(6970, ("sh",), 3000)


def test_a_job_with_a_dnf_seed_drops_out_and_its_leads_pass_on():
    t = tally_of([("paravirt", "pv", 1, 1), ("paravirt", "pv", 1, 2),
                  ("shadow", "sh", 1, 1)])
    stamp(t, "pv/1v/s1", 500), stamp(t, "sh/1v/s1", 600)
    t.start("pv/1v/s2")
    passed = t.finish({"cell": "pv/1v/s2", "status": "dnf"}, {})
    assert passed == ["multiuser to sh"]
    assert stamp(t, "pv/1v/s1", 100, "kernel_entry") is None      # out: never leads again


def test_ties_name_no_leader():
    t = tally_of([("paravirt", "pv", 1, 1), ("shadow", "sh", 1, 1)])
    assert [stamp(t, "pv/1v/s1", 0), stamp(t, "sh/1v/s1", 0)] == ["leads", "ties the lead"]
    assert t.standing(t.points[0], "multiuser").leaders == ("pv", "sh")


# -- whole races (serial, fake boots) ---------------------------------------------------------
def test_plain_lines_name_the_point_and_end_on_the_dashboards_winners(tmp_path, catalog):
    """The 2v winner (paravirt(walk): shared fails its audit on 2 VCPUs) is slower than 1v
    boots; it must lead at 2v all the same, and the leads said last are the dashboard's."""
    buf = io.StringIO()
    progress = PlainProgress(buf)
    store = run_small(race_small(tmp_path, catalog), catalog, tmp_path / "o", progress)
    lines = buf.getvalue().splitlines()
    assert [x for x in lines if x.startswith("  paravirt(walk) 2v s")
            and ": multiuser @ " in x and x.endswith("(leads at 2v)")]
    assert not [x for x in lines if x.startswith("  native") and "lead" in x]
    assert tally_winners(progress.tally) == dashboard_winners(store)


def test_the_live_table_has_a_leader_and_bare_hardware_per_point(tmp_path, catalog):
    live = LiveProgress(io.StringIO())
    live.console.force_terminal = True
    store = run_small(race_small(tmp_path, catalog), catalog, tmp_path / "o", live)
    out = io.StringIO()
    Console(file=out, width=120).print(live._render())
    rows = [x for x in out.getvalue().splitlines() if " multiuser " in x]
    b = Board(load_results(store.dir))
    native = [b.race_at(p, "multiuser")["reference_us"] for p in b.points]
    assert len(rows) == 2
    assert "paravirt(shared)" in rows[0] and "6/6" in rows[0]
    assert "paravirt(walk)" in rows[1] and "4/6" in rows[1]     # shared 2v: DNF twice
    assert f"{native[0] / 1000:.3g} ms" in rows[0] and f"{native[1] / 1000:.3g} ms" in rows[1]


def test_after_resume_the_counts_include_the_kept_boots_and_add_up(tmp_path, catalog):
    race = race_small(tmp_path, catalog)
    first = run_small(race, catalog, tmp_path / "o", PlainProgress(io.StringIO()))
    journal = first.dir / "records.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:5]))
    buf = io.StringIO()
    progress = PlainProgress(buf)
    store = run_small(race, catalog, tmp_path / "o", progress, resume=True)
    lines = buf.getvalue().splitlines()
    assert "7 boots to run (5 already done)" in lines[0]
    summaries = [SUMMARY.search(x) for x in lines if SUMMARY.search(x)]
    assert summaries
    for s in summaries:
        queued, running, ok, dnf, broken, recorded, total = map(int, s.groups())
        assert ok + dnf + broken == recorded and queued + running + recorded == total
    assert lines[-1].endswith("done 10 · DNF 2 · broken 0 · retried 0 · 12/12 "
                              "(5 kept from the earlier run)")
    assert tally_winners(progress.tally) == dashboard_winners(store)
    one = progress.tally.points[0]
    assert progress.tally.reached(one, "multiuser") == 6        # 4 of them kept
