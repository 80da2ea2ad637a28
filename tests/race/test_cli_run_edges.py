"""`pae-race run` at its edges: a Ray address that does not answer, CPUs that make no
sense, a resume with nothing left, Ctrl-C before the race loop, and a plot that cannot be
written. Each must end with one clear line and the documented exit status."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from race_helpers import write_spec
from race import cli, runner
from race.results import load_results

SMALL = """\
name: small
seeds: [1]
matrix: {profile: tiny, vcpus: [1, 2]}
engines: [native]
"""


def _finished_race(tmp_path):
    """A small race run serially to the end: (its spec, its results root)."""
    spec, out = write_spec(tmp_path, SMALL), tmp_path / "res"
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out),
                     "--quiet"]) == 0
    return spec, out


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                      # nothing listens there now
    return port


def test_an_address_nobody_answers_at_is_refused_at_once():
    port = _closed_port()
    for addr in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(runner.ExecutorError, match=f"cannot reach Ray at {addr}: "):
            runner.check_reachable(addr)


@pytest.mark.parametrize("addr", ["garbage", "host:", ":6379", "host:99999", "host:port"])
def test_a_malformed_address_names_the_forms_allowed(addr):
    with pytest.raises(runner.ExecutorError, match="is not a Ray address \\(choices: "
                                                   "host:port, ray://host:port, auto\\)"):
        runner.check_reachable(addr)


def test_a_listening_address_and_auto_pass():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        runner.check_reachable(f"127.0.0.1:{srv.getsockname()[1]}")
        runner.check_reachable("auto")          # Ray looks for a local `ray start` itself
    finally:
        srv.close()


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_run_with_an_unreachable_cluster_exits_2_naming_the_address(tmp_path, how):
    """The real command in a fresh process (no Ray of the test session in it): before the
    check, Ray retried for minutes and printed a line every ~40 s."""
    addr = f"127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "race.cli", "run", "quick", "--out", str(tmp_path / "r")]
    if how == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = addr
    else:
        cmd += ["--address", addr]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"pae-race: cannot reach Ray at {addr}: Connection refused "
        f"(from {'--address' if how == '--address' else '$RAY_ADDRESS'})")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, said", [
    (["--cpus", "0"], "--cpus 0: value must be a whole number >= 1"),
    (["--cpus", "-2"], "--cpus -2: value must be a whole number >= 1"),
    (["--cpus", "4", "--executor", "serial"], "--cpus 4: sizes the embedded Ray only"),
    (["--cpus", "4", "--address", "auto"], "--cpus 4: sizes the embedded Ray only"),
])
def test_cpus_that_make_no_sense_are_a_mistake(tmp_path, fake_installed, capsys, argv, said):
    assert cli.main(["run", "quick", "--out", str(tmp_path / "r"), *argv]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resuming_a_finished_race_starts_no_executor(tmp_path, fake_installed, capsys,
                                                     monkeypatch):
    spec, out = _finished_race(tmp_path)
    before = (load_results(out).dir / "timings.jsonl").read_text()
    capsys.readouterr()

    def no_executor(*a, **k):
        raise AssertionError("an executor was started with nothing to run")
    monkeypatch.setattr(runner, "make_executor", no_executor)
    assert cli.main(["run", str(spec), "--out", str(out), "--resume"]) == 0
    out_text, err = capsys.readouterr()
    assert "pae-race: nothing to resume: all 2 boots of small-" in err
    assert "Leaderboard" in out_text                    # the dashboard all the same
    res = load_results(out)
    assert (res.dir / "timings.jsonl").read_text() == before   # no start-up cost logged
    assert res.manifest["status"] == "complete" and "resumed" not in res.manifest


def test_ctrl_c_before_the_race_loop_marks_the_race_interrupted(tmp_path, fake_installed,
                                                                capsys, monkeypatch):
    """Ctrl-C between the store's creation and the race loop (the window where the
    progress display starts) left the manifest 'running' and said nothing."""
    from race import progress
    real = progress.make_progress

    def interrupted(**kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(progress, "make_progress", interrupted)
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "res"
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    res = load_results(out)
    assert res.manifest["status"] == "interrupted"
    assert (f"pae-race: interrupted: 0/2 boots recorded in {res.dir.resolve()}; run again "
            f"with --resume to finish") in err
    monkeypatch.setattr(progress, "make_progress", real)
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out),
                     "--resume", "--quiet"]) == 0
    assert load_results(out).manifest["status"] == "complete"


def test_ctrl_c_while_the_executor_starts_records_nothing(tmp_path, fake_installed, capsys,
                                                          monkeypatch):
    class Interrupted:
        def __enter__(self):
            raise KeyboardInterrupt

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(runner, "make_executor", lambda *a, **k: Interrupted())
    assert cli.main(["run", "quick", "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err == \
        "pae-race: interrupted before the race started: nothing recorded\n"
    assert not (tmp_path / "r").exists()


def test_a_plot_that_cannot_be_written_fails_the_report(tmp_path, fake_installed, capsys,
                                                        monkeypatch):
    from race import plot
    spec, out = _finished_race(tmp_path)

    def missing(results, path):
        raise plot.PlotUnavailable("the timeline needs matplotlib: pip install matplotlib")
    monkeypatch.setattr(plot, "write_timeline", missing)
    capsys.readouterr()
    assert cli.main(["report", str(out), "--plot", str(tmp_path / "t.png")]) == 1
    assert "pae-race: the timeline needs matplotlib" in capsys.readouterr().err
    assert cli.main(["run", str(spec), "--executor", "serial", "--out", str(out)]) == 0
    assert "pae-race: no timeline.svg: it needs matplotlib" in capsys.readouterr().err
