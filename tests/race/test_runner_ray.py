"""The race on the session's embedded Ray: identical records to a serial run, events
streamed while boots run, and the embedded instance's settings (reference/ray.md)."""
from __future__ import annotations

import os
import shutil

import pytest

import fakeboot
from race_helpers import _Session, write_spec
from race.results import ResultStore
from race.runner import RayExecutor, SerialExecutor, run_race
from race.spec import load_spec
from test_runner_serial import SPEC, Recorder

REAL_SPEC = """\
name: real
seeds: [1]
matrix: {profile: tiny, vcpus: [1, 2], memory_mib: 64}
engines: [native]
"""


def run(executor, race, catalog, out, progress=None):
    with executor as ex:
        store = ResultStore.create(out, race, ex.shape(), catalog)
        run_race(race, ex, store, progress or Recorder(), catalog.run_boot)
    return store


def test_ray_and_serial_give_byte_identical_records(tmp_path, catalog, ray_local):
    race = load_spec(str(write_spec(tmp_path, SPEC)), catalog)
    serial = run(SerialExecutor(), race, catalog, tmp_path / "serial")
    on_ray = run(RayExecutor(), race, catalog, tmp_path / "ray")
    assert on_ray.manifest["cluster"]["executor"] == "ray"
    assert (on_ray.dir / "records.jsonl").read_bytes() == \
        (serial.dir / "records.jsonl").read_bytes()


def test_real_boots_are_byte_identical_on_ray_and_serially(tmp_path, ray_local):
    pytest.importorskip("race.boot")
    from race.spec import Catalog
    catalog = Catalog.installed()
    race = load_spec(str(write_spec(tmp_path, REAL_SPEC)), catalog)
    serial = run(SerialExecutor(), race, catalog, tmp_path / "serial")
    on_ray = run(RayExecutor(), race, catalog, tmp_path / "ray")
    assert (on_ray.dir / "records.jsonl").read_bytes() == \
        (serial.dir / "records.jsonl").read_bytes()
    assert on_ray.manifest["counts"] == {"ok": 2}


def test_milestones_stream_in_while_boots_still_run(tmp_path, catalog, ray_local):
    """Two slow boots on two CPUs: stamps of both arrive before either result."""
    text = "seeds: [1, 2]\nmatrix: {profile: slow}\nengines: [native]\n"
    race = load_spec(str(write_spec(tmp_path, text)), catalog)
    rec = Recorder()
    run(RayExecutor(), race, catalog, tmp_path / "out", rec)
    first_result = next(i for i, c in enumerate(rec.calls) if c[0] == "result")
    before = {c[1] for c in rec.calls[:first_result] if c[0] == "milestone"}
    assert before == set(race.keys())


def test_the_embedded_ray_is_local_only_and_leaves_home_alone(ray_local):
    nodes = [n for n in ray_local.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert _Session.home is not None
    assert not (_Session.home / ".ray").exists()
    assert "RAY_AUTH_TOKEN_PATH" in os.environ    # this session's own token, not ~/.ray

    @ray_local.remote
    def niceness():
        return os.nice(0)
    assert ray_local.get(niceness.remote()) == 0  # boots run at the driver's priority


def _descendants(root: int) -> dict[int, str]:
    """The command line of every process started, directly or not, by `root`."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    out = {}
    for pid in tree - {root}:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return out


def test_the_embedded_ray_runs_none_of_the_housekeeping_a_local_race_does_not_need(ray_local):
    from race.runner import LOCAL_ENV
    procs = _descendants(os.getpid())
    cmds = list(procs.values())
    assert any("raylet" in c for c in cmds)            # the walk does see Ray's processes
    for gone in ("log_monitor.py", "autoscaler/_private/monitor.py", "dashboard/dashboard.py"):
        assert not [c for c in cmds if gone in c], gone
    # the agents' node-stats reporter and metrics recorder run on LOCAL_ENV's periods: the
    # raylet, which starts them, has them in its environment (an agent's own
    # /proc/PID/environ is no witness: its setproctitle may write over that memory)
    raylet = next(p for p, c in procs.items() if c.split()[0].endswith("/raylet"))
    with open(f"/proc/{raylet}/environ", "rb") as f:
        env = dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)
    for key, value in LOCAL_ENV.items():
        assert env.get(key) == value, key


def _dies_on_seed_2(cell):
    """A boot whose worker process dies (as a lost node or an OOM kill would end it)."""
    if cell.seed == 2:
        os._exit(3)
    yield from fakeboot.run_boot(cell)


def test_a_worker_that_dies_for_good_is_a_lost_boot_and_the_race_goes_on(tmp_path, catalog,
                                                                         ray_local):
    import dataclasses
    import sys
    from ray import cloudpickle
    from race.results import load_results
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    text = "seeds: [1, 2]\nmatrix: {profile: tiny, vcpus: 1}\nengines: [native]\n"
    race = load_spec(str(write_spec(tmp_path, text)), catalog)
    dying = dataclasses.replace(catalog, run_boot=_dies_on_seed_2)
    with RayExecutor(max_retries=0) as ex:
        store = ResultStore.create(tmp_path / "out", race, ex.shape(), dying)
        run_race(race, ex, store, Recorder(), dying.run_boot)
    res = load_results(store.dir)
    by_seed = {r["config"]["seed"]: r for r in res.records}
    assert by_seed[1]["status"] == "ok"
    assert by_seed[2]["status"] == "broken"
    assert by_seed[2]["reason"].startswith("lost: ") and "retries exhausted" in by_seed[2]["reason"]
    assert [t.get("lost", False) for t in res.timings if t["cell"] == race.cells[1].key()] == [True]


def test_a_second_embedded_ray_in_one_process_starts_from_the_same_settings(monkeypatch):
    """ray.init writes its object-spilling settings into the _system_config it is given: the
    module's LOCAL_SYSTEM_CONFIG must not be that dict, or a second embedded Ray in the same
    process (a notebook, the tests after the cluster ones) would spill into the first run's
    deleted temp dir, with a warning on stderr."""
    import types
    from race import runner
    before = dict(runner.LOCAL_SYSTEM_CONFIG)
    seen = []

    def fake_init(**kw):             # what Ray 2.60's ray.init does to _system_config
        seen.append(dict(kw["_system_config"]))
        kw["_system_config"]["object_spilling_config"] = f'{{"directory": "{kw["_temp_dir"]}"}}'

    fake_ray = types.SimpleNamespace(init=fake_init, _private=types.SimpleNamespace(
        worker=types.SimpleNamespace(_global_node=None)))
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
    for _ in range(2):
        ex = RayExecutor(num_cpus=2)
        try:
            ex._start_local(fake_ray)
        finally:
            for k, v in ex.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(ex.tmp, ignore_errors=True)
        assert runner.LOCAL_SYSTEM_CONFIG == before
    assert seen[0] == before and seen[1] == before    # each init gets the settings afresh
