"""`pae-race run` end to end (serial executor, fake boots), exit statuses, and plain
progress lines when stderr is not a terminal."""
from __future__ import annotations

import io
import json

from race_helpers import write_spec
from race import cli
from race.progress import LiveProgress, PlainProgress, make_progress
from race.results import load_results

SMALL = """\
name: small
seeds: [1, 2]
matrix: {profile: tiny, vcpus: [1, 2]}
engines:
  - engine: native
  - engine: paravirt
    options: {strategy: [shared, walk]}
  - engine: shadow
"""


def test_run_serial_prints_the_dashboard_and_keeps_the_results(tmp_path, fake_installed,
                                                               capsys):
    spec = write_spec(tmp_path, SMALL)
    assert cli.main(["run", str(spec), "--executor", "serial", "--out",
                     str(tmp_path / "res")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("\nRace small-") or out.startswith("Race small-")
    assert "Leaderboard — 1v" in out and "Grid" in out
    assert "note: engine 'shadow' (spec.yaml line 8) is not installed yet" in err
    assert "DNF    paravirt(shared) 2v s1: audit failed" in err
    res = load_results(tmp_path / "res")
    assert len(res.records) == 12 and res.manifest["status"] == "complete"
    try:
        import matplotlib  # noqa: F401  (the optional `plot` extra)
    except ImportError:
        return
    assert (res.dir / "timeline.svg").exists()


def test_run_with_spec_mistakes_exits_2_before_starting_anything(tmp_path, fake_installed,
                                                                 capsys):
    spec = write_spec(tmp_path, "engines:\n  - engine: native\n    options: {ptwr: yes}\n")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "res")]) == 2
    assert capsys.readouterr().err == (
        f"pae-race: {spec}:3: engines[0].options.ptwr: unknown key (allowed: none)\n")
    assert not (tmp_path / "res").exists()


def test_run_resume_finishes_an_interrupted_race(tmp_path, fake_installed, capsys):
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "res"
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out),
                     "--quiet"]) == 0
    first = load_results(out)
    lines = (first.dir / "records.jsonl").read_text().splitlines()
    (first.dir / "records.jsonl").write_text("\n".join(lines[:5]) + "\n")   # as if killed
    capsys.readouterr()
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out),
                     "--resume", "--format", "json"]) == 0
    out_text, err = capsys.readouterr()
    assert "7 boots to run (5 already done)" in err
    assert json.loads(out_text)["header"]["counts"] == {"dnf": 2, "ok": 10}
    assert len(load_results(out).records) == 12


def test_address_with_the_serial_executor_is_a_mistake(tmp_path, fake_installed, capsys):
    assert cli.main(["run", "quick", "--executor", "serial", "--address", "auto"]) == 2
    assert "--address auto: value needs --executor ray" in capsys.readouterr().err


def test_a_broken_boot_makes_run_exit_1(tmp_path, fake_installed, capsys):
    spec = write_spec(tmp_path, "seeds: [2]\nmatrix: {profile: buggy}\nengines: [native]\n")
    assert cli.main(["run", str(spec), "--executor", "serial", "--out",
                     str(tmp_path / "r"), "--quiet"]) == 1
    assert "0 ok, 0 DNF, 1 broken" in capsys.readouterr().out


def test_progress_is_plain_lines_off_a_terminal_and_live_on_one():
    assert type(make_progress(io.StringIO())) is PlainProgress

    class TTY(io.StringIO):
        def isatty(self):
            return True
    assert type(make_progress(TTY())) is LiveProgress


def test_the_live_display_draws_counts_and_leaders(tmp_path, catalog):
    from race.runner import SerialExecutor, run_race
    from race.results import ResultStore
    from race.spec import load_spec
    race = load_spec(str(write_spec(tmp_path, SMALL)), catalog)
    buf = io.StringIO()
    live = LiveProgress(buf)
    live.console.force_terminal = True
    with SerialExecutor() as ex:
        store = ResultStore.create(tmp_path / "o", race, ex.shape(), catalog)
        run_race(race, ex, store, live, catalog.run_boot)
    text = buf.getvalue()
    assert "multiuser" in text and "done 10" in text and "DNF 2" in text


def test_the_lead_s_subcommands_are_registered_when_present():
    parser = cli.make_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"run", "report"} <= set(choices)
    try:
        import race.bootcmd  # noqa: F401
    except ModuleNotFoundError:
        return
    assert {"boot", "list"} <= set(choices)


def test_plain_progress_crowns_only_hypervisors_and_counts_by_simulated_time(tmp_path,
                                                                             catalog):
    from race.runner import SerialExecutor, run_race
    from race.results import ResultStore
    from race.spec import load_spec
    race = load_spec(str(write_spec(tmp_path, SMALL)), catalog)
    buf = io.StringIO()
    progress = PlainProgress(buf)
    with SerialExecutor() as ex:
        store = ResultStore.create(tmp_path / "o", race, ex.shape(), catalog)
        run_race(race, ex, store, progress, catalog.run_boot)
    lines = buf.getvalue().splitlines()
    assert not [x for x in lines if x.startswith("  native") and "lead" in x]
    assert [x for x in lines if x.startswith("  paravirt") and "(leads at 1v)" in x]
    tally = progress.tally
    one = tally.points[0]                                   # 1v: leaders race per point
    assert tally.standing(one, "multiuser").leaders == ("paravirt(shared) 1v",)
    assert tally.standing(one, "multiuser").reference_us is not None
    assert "done 10 · DNF 2 · broken 0 · retried 0 · 12/12" in lines[-1]
