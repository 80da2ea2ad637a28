"""Dashboards: golden terminal and markdown output of a fixed race, the rules behind the
leaderboard (simulated time only; a DNF never wins), the asv-style comparison and its exit
status, JSON, the GitHub step summary and the timeline picture."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from race_helpers import write_spec
from race import cli
from race.board import Board
from race.report import build, render
from race.results import load_results
from test_runner_serial import SPEC, run_serial
from race.spec import load_spec

GOLDEN = Path(__file__).with_name("golden")
FIXED = {"race_id": "t-20050301-000000", "created": "2005-03-01T00:00:00Z",
         "package": {"name": "pae-race", "version": "0.1.0", "commit": "0123456789ab"},
         "python": "3.11.7",
         "cluster": {"executor": "ray", "nodes": 2, "cpus": [1, 1], "ray": "2.60.0",
                     "address": "local"},
         # pinned, so that retuning the packaged tables does not move the golden files
         "cost_tables": {"p4-xeon-2005": {"name": "p4-xeon-2005", "cpu": "P4 Xeon",
                                          "mhz": 2400, "digest": "0" * 16, "overrides": {}}}}


def fixed_results(tmp_path, catalog, name="out", text=SPEC):
    race = load_spec(str(write_spec(tmp_path, text)), catalog)
    store = run_serial(race, catalog, tmp_path / name)
    res = load_results(store.dir)
    res.manifest.update(FIXED)
    res.manifest["spec"]["path"] = "spec.yaml"
    res.timings = [{"cell": r["cell"], "wall_s": 1.0, "node": "n", "pid": 1,
                    "retried": i == 3} for i, r in enumerate(res.records)]
    res.timings.append({"race_elapsed_s": 12.0, "executor": "ray"})
    return res


@pytest.mark.parametrize("fmt", ["terminal", "markdown"])
def test_the_dashboard_matches_its_golden_file(tmp_path, catalog, fmt):
    text = render(build(fixed_results(tmp_path, catalog)), fmt)
    golden = GOLDEN / f"dashboard.{fmt}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_a_job_with_a_dnf_seed_never_wins(tmp_path, catalog):
    doc = build(fixed_results(tmp_path, catalog))
    for section in doc["leaderboard"]:
        for row in section["rows"]:
            if row["winner"]:
                assert row["jobs"][row["winner"]]["eligible"]
    # shared is fastest on 2 VCPUs in the fake until it fails at init_exec: never crowned
    two = next(s for s in doc["leaderboard"] if s["point"] == "tiny 2v")
    assert all(r["winner"] != "paravirt(shared)" for r in two["rows"])
    assert two["rows"][0]["jobs"]["paravirt(shared)"]["eligible"] is False


def test_the_ranking_uses_simulated_time_not_arrival_order(tmp_path, catalog):
    res = fixed_results(tmp_path, catalog)
    before = build(res)
    random.Random(7).shuffle(res.records)
    assert build(res)["leaderboard"] == before["leaderboard"]


def test_the_verdict_names_the_winner_margin_and_failures(tmp_path, catalog):
    doc = build(fixed_results(tmp_path, catalog))
    assert doc["verdict"].startswith("race t-20050301-000000: ")
    # shared wins on 1 VCPU but fails its audit on 2: the verdict says so beside the win
    assert "multiuser tiny 1v: paravirt(shared) (DNF at buggy 2v, tiny 2v), +" in doc["verdict"]
    assert "multiuser tiny 2v: paravirt(walk), " in doc["verdict"]     # walk: no DNF
    assert "vs native" in doc["verdict"]
    assert doc["verdict"].endswith("15 ok, 3 DNF, 6 broken, 1 retried")


def test_the_grid_says_fail_then_blocked_after_a_dnf_and_broken_for_a_harness_bug(
        tmp_path, catalog):
    doc = build(fixed_results(tmp_path, catalog))
    rows = {j["job"]: j for j in doc["grid"]["jobs"]}
    shared = rows["paravirt(shared) tiny 2v"]["cells"]
    assert [c["words"] for c in shared[4:]] == [["fail", "fail"], ["blocked", "blocked"],
                                               ["blocked", "blocked"]]
    buggy = rows["native buggy 1v"]["cells"]
    assert buggy[2]["words"] == ["broken"] and buggy[2]["reached"] == 1


def _scale(results_dir: Path, job_prefix: str, factor: float) -> None:
    path = results_dir / "records.jsonl"
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["cell"].startswith(job_prefix):
            for s in rec["milestones"]:
                s["cycles"] = int(s["cycles"] * factor)
        out.append(json.dumps(rec, sort_keys=True))
    path.write_text("\n".join(out) + "\n")


def test_a_baseline_comparison_flags_a_slowdown_and_fail_on_exits_1(tmp_path, catalog,
                                                                     capsys):
    base = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    b = run_serial(base, catalog, tmp_path / "base")
    n = run_serial(base, catalog, tmp_path / "new")
    _scale(n.dir, "paravirt[strategy=walk]", 1.08)
    assert cli.main(["report", str(n.dir), "--baseline", str(b.dir), "--fail-on",
                     "multiuser:+5%"]) == 1
    out = capsys.readouterr().out
    assert "PERFORMANCE DECREASED" in out
    assert "FAIL: paravirt(walk) tiny 1v multiuser: +8.0% slower" in out
    assert cli.main(["report", str(n.dir), "--baseline", str(b.dir), "--fail-on",
                     "multiuser:+10%"]) == 0
    assert cli.main(["report", str(b.dir), "--baseline", str(b.dir), "--fail-on",
                     "*:+0%"]) == 0
    assert "MILESTONES NOT SIGNIFICANTLY CHANGED" in capsys.readouterr().out


def test_a_milestone_no_longer_reached_is_a_regression(tmp_path, catalog):
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    b = run_serial(race, catalog, tmp_path / "base")
    n = run_serial(race, catalog, tmp_path / "new")
    path = n.dir / "records.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[0]["status"], recs[0]["reason"] = "dnf", "GuestPanic: oops"
    recs[0]["milestones"] = recs[0]["milestones"][:3]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    doc = build(load_results(n.dir), load_results(b.dir), [cli.FailOn.parse("*:+5%")])
    bad = [r for r in doc["comparison"]["rows"] if r["mark"] == "!"]
    assert {r["milestone"] for r in bad} == {"smp_online", "init_exec", "single_user",
                                            "multiuser"}
    assert bad[0]["note"] == "REGR. flaky (reached in 1/2 seeds)"
    assert len(doc["comparison"]["failures"]) == 4


def test_fail_on_mistakes_exit_2_with_one_line(tmp_path, catalog, capsys):
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    b = run_serial(race, catalog, tmp_path / "base")
    assert cli.main(["report", str(b.dir), "--fail-on", "multiuser:+5%"]) == 2
    assert cli.main(["report", str(b.dir), "--baseline", str(b.dir), "--fail-on",
                     "multiuser:5"]) == 2
    assert cli.main(["report", str(b.dir), "--baseline", str(b.dir), "--fail-on",
                     "multi-user:+5%"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "pae-race: --fail-on multiuser:+5%: needs --baseline OTHER",
        "pae-race: --fail-on: value 'multiuser:5' is not MILESTONE:+N% (e.g. multiuser:+5%, "
        "or *:+5% for every milestone)",
        "pae-race: --fail-on multi-user: value 'multi-user' is not a milestone of these races "
        "(choices: *, direct_map, init_exec, kernel_entry, multiuser, paging_on, "
        "single_user, smp_online)"]


def test_json_format_is_one_json_document(tmp_path, catalog, capsys):
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    b = run_serial(race, catalog, tmp_path / "base")
    assert cli.main(["report", str(b.dir), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"verdict", "header", "leaderboard", "grid", "costs", "blame",
                        "footnotes"}


def test_github_step_summary_receives_the_markdown(tmp_path, catalog, monkeypatch, capsys):
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    b = run_serial(race, catalog, tmp_path / "base")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert cli.main(["report", str(b.dir)]) == 0
    text = summary.read_text()
    assert text.startswith("## Race t-") and "| milestone" in text


def test_the_timeline_is_an_svg_with_a_bar_per_job(tmp_path, catalog):
    pytest.importorskip("matplotlib")
    from race.plot import write_timeline
    res = fixed_results(tmp_path, catalog)
    svg = write_timeline(res, tmp_path / "t.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for job in Board(res).jobs:
        assert job.split("(")[0] in svg


def test_an_interrupted_race_reports_what_it_has_and_what_is_queued(tmp_path, catalog):
    from test_runner_serial import Recorder
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    with pytest.raises(KeyboardInterrupt):
        run_serial(race, catalog, tmp_path / "out", Recorder(stop_after=3))
    doc = build(load_results(tmp_path / "out"))
    assert doc["verdict"].endswith("21 not run (interrupted)")
    words = {w for j in doc["grid"]["jobs"] for c in j["cells"] for w in c["words"]}
    assert "queued" in words
    assert "queued" in render(doc, "terminal")


def test_a_resumed_race_counts_each_session_on_its_own_cpus(tmp_path, catalog):
    """A race interrupted after 4 s on 1 CPU and resumed for 6 s on 2 CPUs had 4 + 12 = 16
    CPU-seconds of room; the footnote divided all the boots' wall by the last session's
    elapsed time alone, or by the sum of elapsed times on the last shape."""
    from race.report import _footnotes
    from race.board import Board
    res = fixed_results(tmp_path, catalog)
    walls = sum(t["wall_s"] for t in res.timings if "wall_s" in t)
    res.timings = [t for t in res.timings if "race_elapsed_s" not in t]
    res.timings += [{"race_elapsed_s": 4.0, "executor": "ray", "cpus": 1, "interrupted": True},
                    {"race_elapsed_s": 6.0, "executor": "ray", "cpus": 2}]
    line = next(n for n in _footnotes(Board(res)) if n.startswith("wall time"))
    assert "in 10.0 s elapsed over 2 sessions" in line
    assert line.endswith(f"boots kept {walls / 16:.0%} of the CPUs busy")


def test_an_engine_entry_s_cost_overrides_show_in_the_header(tmp_path, catalog):
    text = SPEC.replace("  - engine: paravirt\n",
                        "  - engine: paravirt\n    cost_overrides: {trap: 4000}\n", 1)
    assert text != SPEC
    doc = build(fixed_results(tmp_path, catalog, text=text))
    costs = doc["header"]["matrix"]["costs"]
    assert any("trap=4000" in c and "(paravirt" in c for c in costs), costs
    assert "trap=4000" in render(doc, "terminal")


def test_a_baseline_priced_by_another_version_of_a_cost_table_is_said(tmp_path, catalog):
    base = fixed_results(tmp_path, catalog, "base")
    new = fixed_results(tmp_path, catalog, "new")
    same = build(new, base)["comparison"]
    assert same["notes"] == []
    base.manifest["cost_tables"] = {k: {**v, "digest": "1" * 16}
                                    for k, v in base.manifest["cost_tables"].items()}
    cmp = build(new, base)["comparison"]
    assert cmp["notes"] == [f"note: cost table p4-xeon-2005 differs (digest {'1' * 16} on "
                            f"the baseline, {'0' * 16} now): times are priced differently"]
    assert cmp["notes"][0] in render(build(new, base), "terminal")
