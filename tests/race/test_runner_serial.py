"""The race loop without Ray: records, DNF and broken boots, the journal, resume."""
from __future__ import annotations

import json

import pytest

from race_helpers import write_spec
from race.progress import PlainProgress
from race.results import ResultsError, ResultStore, load_results
from race.runner import SerialExecutor, drive, run_race
from race.spec import load_spec

SPEC = """\
name: t
seeds: [1, 2]
matrix: {profile: [tiny, buggy], vcpus: [1, 2]}
engines:
  - engine: native
  - engine: paravirt
    options: {strategy: [shared, walk]}
"""


class Recorder(PlainProgress):
    """Progress that keeps (what, key) calls and can stop the race after N results."""

    def __init__(self, stop_after=None):
        super().__init__(open("/dev/null", "w"))
        self.calls, self.stop_after = [], stop_after

    def started(self, key, run):
        super().started(key, run)
        self.calls.append(("start", key))

    def milestone(self, ev):
        super().milestone(ev)
        self.calls.append(("milestone", ev["cell"]))

    def finished(self, rec, run):
        super().finished(rec, run)
        self.calls.append(("result", rec["cell"]))
        if self.stop_after and sum(c[0] == "result" for c in self.calls) >= self.stop_after:
            raise KeyboardInterrupt


def race_of(tmp_path, catalog, text=SPEC):
    return load_spec(str(write_spec(tmp_path, text)), catalog)


def run_serial(race, catalog, out, progress=None, resume=False):
    with SerialExecutor() as ex:
        store = (ResultStore.resume(out, race, ex.shape()) if resume
                 else ResultStore.create(out, race, ex.shape(), catalog))
        run_race(race, ex, store, progress or Recorder(), catalog.run_boot)
    return store


def test_every_cell_gets_one_record_in_plan_order(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    store = run_serial(race, catalog, tmp_path / "out")
    lines = (store.dir / "records.jsonl").read_text().splitlines()
    assert [json.loads(x)["cell"] for x in lines] == race.keys()
    assert store.manifest["status"] == "complete"
    assert store.manifest["counts"] == {"broken": 6, "dnf": 3, "ok": 15}


def test_a_guest_failure_is_a_dnf_record_with_its_reason(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    res = load_results(run_serial(race, catalog, tmp_path / "out").dir)
    dnf = [r for r in res.records if r["status"] == "dnf"]
    assert {r["config"]["options"]["strategy"] for r in dnf} == {"shared"}
    assert all(r["config"]["vcpus"] == 2 for r in dnf)
    assert all(r["reason"].startswith("audit failed") for r in dnf)
    assert [s["milestone"] for s in dnf[0]["milestones"]][-1] == "smp_online"


def test_an_exception_out_of_run_boot_is_a_broken_record_not_a_crash(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    res = load_results(run_serial(race, catalog, tmp_path / "out").dir)
    broken = [r for r in res.records if r["status"] == "broken"]
    assert {r["config"]["seed"] for r in broken} == {2}
    assert {r["config"]["profile"] for r in broken} == {"buggy"}
    assert broken[0]["reason"].startswith("harness: RuntimeError: fake harness bug "
                                          "(at fakeboot.py:")
    assert broken[0]["reason"].endswith(" in run_boot)")
    assert [s["milestone"] for s in broken[0]["milestones"]] == ["kernel_entry", "paging_on"]


def test_records_carry_no_wall_clock_and_timings_do(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    store = run_serial(race, catalog, tmp_path / "out")
    for line in (store.dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert "run" not in rec and "wall_s" not in json.dumps(rec)
    timings = [json.loads(x) for x in (store.dir / "timings.jsonl").read_text().splitlines()]
    assert len(timings) == len(race.cells)
    assert all(t["wall_s"] >= 0 and t["retried"] is False for t in timings)


def test_each_milestone_reaches_progress_before_its_boot_ends(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    rec = Recorder()
    run_serial(race, catalog, tmp_path / "out", rec)
    key = race.keys()[0]
    mine = [c[0] for c in rec.calls if c[1] == key]
    assert mine == ["start"] + ["milestone"] * 7 + ["result"]


def test_drive_reports_a_boot_that_yields_no_result_as_broken(catalog):
    cell = load_spec("quick", catalog).cells[0]
    events = list(drive(lambda c: iter(()), cell))
    assert events[-1]["status"] == "broken"
    assert events[-1]["reason"] == "run_boot ended without a result"


def test_resume_after_ctrl_c_finishes_with_the_same_records(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    whole = run_serial(race, catalog, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_serial(race, catalog, tmp_path / "out", Recorder(stop_after=5))
    first = load_results(tmp_path / "out")
    assert first.manifest["status"] == "interrupted" and len(first.records) == 5
    rec = Recorder()
    store = run_serial(race, catalog, tmp_path / "out", rec, resume=True)
    ran = [c[1] for c in rec.calls if c[0] == "result"]
    finished_first = [r["cell"] for r in first.records if r["status"] in ("ok", "dnf")]
    assert not set(ran) & set(finished_first)
    assert len(ran) == len(race.cells) - len(finished_first)
    assert (store.dir / "records.jsonl").read_bytes() == \
        (whole.dir / "records.jsonl").read_bytes()
    assert store.manifest["resumed"][0]["skipped"] == len(finished_first)


def test_resume_runs_broken_boots_again(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    run_serial(race, catalog, tmp_path / "out")
    rec = Recorder()
    run_serial(race, catalog, tmp_path / "out", rec, resume=True)
    again = {c[1] for c in rec.calls if c[0] == "result"}
    assert again == {k for k in race.keys() if "/buggy/" in k and k.endswith("/s2")}


def test_a_record_cut_short_by_a_crash_is_dropped_and_run_again(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    store = run_serial(race, catalog, tmp_path / "out")
    path = store.dir / "records.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 40])  # last line torn
    rec = Recorder()
    store = run_serial(race, catalog, tmp_path / "out", rec, resume=True)
    assert race.keys()[-1] in {c[1] for c in rec.calls if c[0] == "result"}
    assert [json.loads(x)["cell"] for x in path.read_text().splitlines()] == race.keys()


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    with pytest.raises(ResultsError, match="no earlier race of spec 't'"):
        run_serial(race, catalog, tmp_path / "empty", resume=True)


def test_a_results_root_opens_its_newest_race(tmp_path, catalog):
    race = race_of(tmp_path, catalog)
    store = run_serial(race, catalog, tmp_path / "out")
    assert load_results(tmp_path / "out").dir.resolve() == store.dir.resolve()


def test_a_boot_lost_after_all_retries_is_broken_and_marked_lost(tmp_path, catalog):
    """What the Ray executor reports when a worker or node is lost for good."""
    race = race_of(tmp_path, catalog, "engines: [native]\nmatrix: {profile: tiny}\n")

    class LosesEverything(SerialExecutor):
        def run(self, run_boot, cells):
            for cell in cells:
                yield "lost", (cell, RuntimeError("node died"))

    with LosesEverything() as ex:
        store = ResultStore.create(tmp_path / "out", race, ex.shape(), catalog)
        run_race(race, ex, store, Recorder(), catalog.run_boot)
    res = load_results(store.dir)
    assert [r["status"] for r in res.records] == ["broken"]
    assert res.records[0]["reason"] == "lost: RuntimeError (retries exhausted): node died"
    assert res.timings[0]["lost"] is True


# -- bursts: how a boot's events travel (race/boot.py HOLD_CYCLES) ----------------------
def test_milestones_reached_close_together_travel_as_one_burst_and_the_key_never_reaches_a_record():
    from race.boot import HOLD_CYCLES, BootCell, run_boot
    from race.runner import drive_bursts
    cell = BootCell(engine="native", profile="tiny", vcpus=2, memory_mib=64, seed=1)
    bursts = list(drive_bursts(run_boot, cell))
    flat = [ev for b in bursts for ev in b]
    assert [ev["type"] for ev in flat] == [ev["type"] for ev in drive(run_boot, cell)]
    assert not any("more" in ev for ev in flat)
    assert bursts[0][0] == flat[0] and flat[0]["type"] == "start"
    assert [e["type"] for e in flat[1:-1]] == ["milestone"] * (len(flat) - 2)
    assert bursts[-1][-1]["type"] == "result"
    assert not any("more" in s for s in flat[-1]["milestones"])
    # within a burst every milestone is within HOLD_CYCLES of the burst's first one; the first
    # milestone of the next burst is not (the fastest VCPU's clock may be further on)
    ms = [[e for e in b if e["type"] == "milestone"] for b in bursts]
    ms = [b for b in ms if b]
    for b in ms:
        assert all(e["cycles"] - b[0]["cycles"] < HOLD_CYCLES for e in b)
    # a real saving: the 7 milestones of the default ladder in fewer messages
    assert len(bursts) < len(flat) - 2
    # deterministic, as Ray's replay of a retried stream needs
    again = list(drive_bursts(run_boot, cell))
    assert [[(e["type"], e.get("milestone")) for e in b] for b in again] == \
           [[(e["type"], e.get("milestone")) for e in b] for b in bursts]


def test_a_boot_that_fails_mid_burst_still_ends_its_last_burst_with_the_result():
    from race.runner import drive_bursts

    def boot(cell):
        yield {"type": "milestone", "cell": cell.key(), "milestone": "a", "index": 0, "vcpu": 0,
               "cycles": 0, "counters": {}, "more": True}
        raise RuntimeError("harness bug")

    class Cell:
        def key(self):
            return "c"

    bursts = list(drive_bursts(boot, Cell()))
    assert [[e["type"] for e in b] for b in bursts] == [["start", "milestone", "result"]]
    assert bursts[-1][-1]["status"] == "broken"
    assert bursts[-1][-1]["milestones"][0] == {"milestone": "a", "index": 0, "vcpu": 0,
                                               "cycles": 0, "counters": {}}


# -- scheduling: longest first on a parallel executor -----------------------------------
class Order(SerialExecutor):
    """A serial executor that records the order boots are handed to it."""

    def __init__(self, parallel):
        self.parallel, self.order = parallel, []

    def run(self, run_boot, cells):
        cells = list(cells)
        self.order = [c.key() for c in cells]
        yield from super().run(run_boot, cells)


def test_a_parallel_executor_gets_the_boots_earlier_runs_found_longest_first(tmp_path,
                                                                             catalog):
    race = race_of(tmp_path, catalog, "engines: [native]\nmatrix: {profile: tiny, "
                                      "vcpus: [1, 2, 3]}\n")
    keys = race.keys()
    with SerialExecutor() as ex:                         # an earlier race: its timings
        old = ResultStore.create(tmp_path / "out", race, ex.shape(), catalog)
        run_race(race, ex, old, Recorder(), catalog.run_boot)
    timings = (old.dir / "timings.jsonl").read_text().splitlines()
    fake = {keys[0]: 0.1, keys[1]: 0.9, keys[2]: 0.5}   # rewrite them: a known order
    (old.dir / "timings.jsonl").write_text("".join(
        json.dumps({**json.loads(t), "wall_s": fake[json.loads(t)["cell"]]}) + "\n"
        for t in timings if json.loads(t)["cell"] in fake))
    orders = {}
    for parallel in (True, False):
        ex = Order(parallel)
        store = ResultStore.create(tmp_path / "out", race, ex.shape(), catalog)
        run_race(race, ex, store, Recorder(), catalog.run_boot)
        orders[parallel] = ex.order
        assert [r["cell"] for r in load_results(store.dir).records] == keys   # plan order
    untimed = [k for k in keys if k not in fake]
    assert orders[True] == untimed + [keys[1], keys[2], keys[0]]
    assert orders[False] == keys                          # serial: plan order
