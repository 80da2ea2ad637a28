"""Cluster mode (slow; named to run last, after the session's embedded Ray is done):

- a two-node `ray.cluster_utils.Cluster` loses its worker node in the middle of a race:
  every record still arrives exactly once (a retry replays a deterministic boot and Ray
  drops the events already delivered), the retry is reported as such, and the records
  equal a serial run's byte for byte;
- `ray start --head` on 127.0.0.1 and a free port, then `ray job submit -- pae-race run`:
  the race runs as a job on that head and its results are read back; then a driver on
  this side attaches with `--address` (packages shipped as py_modules). The head is stopped
  by ending the processes that carry its own temp dir (never `ray stop`, which would end
  every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fakeboot
from race_helpers import _Session, write_spec
from race.results import ResultStore, load_results
from race.runner import RayExecutor, SerialExecutor, _refresh_auth_config, run_race
from race.spec import load_spec
from test_runner_serial import Recorder

VENV_BIN = Path(sys.executable).parent
SLOW = """\
name: slow
seeds: [1, 2, 3]
matrix: {profile: slow, vcpus: [1, 2]}
engines: [native]
"""


@pytest.fixture
def two_nodes(monkeypatch):
    import ray
    from ray import cloudpickle
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    if _Session.executor is not None:             # the session's embedded Ray ends here
        _Session.executor.__exit__(None, None, None)
        _Session.executor = None
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    _refresh_auth_config()
    cloudpickle.register_pickle_by_value(fakeboot)
    temp = tempfile.mkdtemp(prefix="prclu-")              # not Ray's shared /tmp/ray:
    os.mkdir(os.path.join(temp, "ray"))                   # the head writes its address
    monkeypatch.setenv("RAY_TMPDIR", temp)                # file under $RAY_TMPDIR/ray
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20,
        "temp_dir": temp, "_system_config": {"health_check_period_ms": 500,
                                             "health_check_failure_threshold": 3}})
    worker = cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20, temp_dir=temp)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()
    deadline = time.time() + 20                # its processes may still be writing logs
    while _own_pids(temp) and time.time() < deadline:
        time.sleep(0.2)
    shutil.rmtree(temp, ignore_errors=True)


class KillOnFirstStamp(Recorder):
    """Removes the worker node (no grace) at the first milestone of a boot running on it."""

    def __init__(self, cluster, worker):
        super().__init__()
        self.cluster, self.worker, self.on_worker, self.killed = cluster, worker, set(), False

    def started(self, key, run):
        super().started(key, run)
        if run["node"] == self.worker.node_id:
            self.on_worker.add(key)

    def milestone(self, ev):
        super().milestone(ev)
        if not self.killed and ev["cell"] in self.on_worker:
            self.killed = True
            self.cluster.remove_node(self.worker, allow_graceful=False)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_node_lost_mid_race_costs_a_retry_not_a_record(tmp_path, catalog, two_nodes):
    cluster, worker = two_nodes
    race = load_spec(str(write_spec(tmp_path, SLOW)), catalog)
    progress = KillOnFirstStamp(cluster, worker)
    with RayExecutor() as ex:
        assert ex.shape()["nodes"] == 2
        store = ResultStore.create(tmp_path / "ray", race, ex.shape(), catalog)
        run_race(race, ex, store, progress, catalog.run_boot)
    assert progress.killed
    journal = [json.loads(x)["cell"] for x in
               (store.dir / "records.jsonl").read_text().splitlines()]
    assert journal == race.keys()                       # every record, exactly once
    results = [c[1] for c in progress.calls if c[0] == "result"]
    assert sorted(results) == sorted(race.keys())
    timings = load_results(store.dir).timings
    assert any(t.get("retried") for t in timings)
    assert not any(t.get("lost") for t in timings)
    with SerialExecutor() as ex:
        serial = ResultStore.create(tmp_path / "serial", race, ex.shape(), catalog)
        run_race(race, ex, serial, Recorder(), catalog.run_boot)
    assert (store.dir / "records.jsonl").read_bytes() == \
        (serial.dir / "records.jsonl").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_pids(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _stop_own_head(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _own_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _own_pids(marker) and time.time() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_job_submit_runs_a_race_on_a_ray_start_head(tmp_path):
    pytest.importorskip("race.boot")
    temp = tempfile.mkdtemp(prefix="prjob-")           # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") or k == "RAY_USAGE_STATS_ENABLED"}
    os.mkdir(os.path.join(temp, "ray"))
    env.update(HOME=str(tmp_path / "home"), RAY_AUTH_MODE="disabled", RAY_TMPDIR=temp,
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    port, dash = _free_port(), _free_port()
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    write_spec(jobdir, "name: job\nseeds: [1]\nmatrix: {profile: tiny, vcpus: [1, 2], "
                       "memory_mib: 64}\nengines: [native]\n")
    out = tmp_path / "results"
    try:
        subprocess.run([str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
                        f"--port={port}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={dash}", "--disable-usage-stats",
                        f"--temp-dir={temp}"], env=env, check=True, capture_output=True,
                       timeout=120)
        # the head's job agent registers a few seconds after `ray start` returns (longer on
        # a loaded machine): Ray answers "No available agent" until then, so wait for it
        deadline = time.time() + 90
        while True:
            job = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address",
                 f"http://127.0.0.1:{dash}", "--working-dir", str(jobdir), "--",
                 sys.executable, "-m", "race.cli", "run", "spec.yaml", "--out", str(out),
                 "--quiet", "--format", "json"],
                env=env, capture_output=True, text=True, timeout=200)
            if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr \
                    or time.time() > deadline:
                break
            time.sleep(3)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout + job.stderr
        # a driver here attaching with --address: the packages go over as py_modules
        attach = subprocess.run(
            [sys.executable, "-m", "race.cli", "run", str(jobdir / "spec.yaml"), "--address",
             f"127.0.0.1:{port}", "--out", str(tmp_path / "attached"), "--quiet",
             "--format", "json"], env=env, capture_output=True, text=True, timeout=200,
            cwd=str(tmp_path))
        assert attach.returncode == 0, attach.stderr[-3000:]
        assert json.loads(attach.stdout)["header"]["counts"] == {"ok": 2}
    finally:
        _stop_own_head(temp)
        shutil.rmtree(temp, ignore_errors=True)
    res = load_results(out)
    assert res.manifest["status"] == "complete"
    assert res.manifest["cluster"]["executor"] == "ray"
    assert res.manifest["cluster"]["address"].endswith(str(port))
    assert sorted(r["status"] for r in res.records) == ["ok", "ok"]
    attached = load_results(tmp_path / "attached")
    assert (attached.dir / "records.jsonl").read_bytes() == \
        (res.dir / "records.jsonl").read_bytes()
    assert not _own_pids(temp)
