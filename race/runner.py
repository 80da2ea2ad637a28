"""Running a race: every boot cell through one function, serially or on Ray.

`drive(run_boot, cell)` is a boot as the race sees it, the same in every executor: a
`start` event (where it runs), the boot's milestone events, and one final result carrying
how it ran (`run`: wall and CPU seconds, node, pid) beside the simulated record. An exception out of
`run_boot` is a harness bug, turned here into a `broken` result, so serial and Ray runs give
byte-identical records.

On Ray there is one streaming task per boot (Ray 2.60 streaming generator; no task per
milestone); the driver multiplexes the streams with `ray.wait`. A lost worker or node is
retried by Ray (`max_retries`): the boot is deterministic, so the replay yields the same
events and Ray drops those already delivered. Only when the retries run out is the boot
`broken` ("lost"). Rankings use the simulated cycles in the events, never arrival order.
See ../shared/reference/ray.md for the measurements behind every setting below.
"""
from __future__ import annotations

import gc
import logging
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .results import ResultStore, make_record

MAX_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0     # a cluster's GCS answers in ms; ray.init would retry for minutes
INLINE_BOOT_BYTES = 4096
OBJECT_STORE_BYTES = 128 * 2**20        # events are tiny; 100 MB was plenty when measured
SHIPPED_PACKAGES = ("engines", "guestkit", "milestones", "race")
# Ray starts workers at nice 15 so that they never starve its own daemons; here the workers
# *are* the race, and at 15 a machine shared with anything else runs the boots many times
# slower than the serial executor (measured: 17.8 min for the default race under load).
WORKER_NICENESS = 0
# Ray's own housekeeping, sized for clusters and dashboards that a local race does not have;
# each runs on a timer in some Ray process, and its CPU comes out of the boots' share of this
# 2-core machine. Measured idle here (benchmarks/bench_race.py --idle, ms of CPU per second
# over all of Ray's processes): 61 with Ray's defaults, 55 without the metrics and task-event
# reports (every 10 minutes instead) and the log monitor (killed once started: log_to_driver
# is off), and 42 also without the rest below:
# - the raylet's checks for a big object store and a multi-node cluster: disk space for
#   spilling (100 ms), object store pressure for a global GC (100 ms), resource and backlog
#   reports for the autoscaler (100 ms, 1 s), idle-worker trimming (200 ms): every 10 s;
#   its memory monitor (the OOM killer's eyes) every second instead of every 250 ms;
# - the dashboard agent's node-stats reporter and metrics recorder (every 5 s: a psutil scan
#   of every Ray process), every 10 minutes;
# - the dashboard head, which here serves only usage statistics (switched off), and the
#   autoscaler's monitor, which has no cluster to scale: killed once started.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": WORKER_NICENESS,
                       "metrics_report_interval_ms": 600_000,
                       "task_events_report_interval_ms": 600_000,
                       "local_fs_monitor_interval_ms": 10_000,
                       "raylet_check_gc_period_milliseconds": 10_000,
                       "raylet_report_resources_period_milliseconds": 10_000,
                       "report_worker_backlog_interval_ms": 10_000,
                       "kill_idle_workers_interval_ms": 10_000,
                       "memory_monitor_refresh_ms": 1_000}
LOCAL_ENV = {"REPORTER_UPDATE_INTERVAL_MS": "600000", "METRICS_RECORD_INTERVAL_S": "600"}
LOCAL_KILLED = ("log_monitor", "dashboard", "monitor")


def drive(run_boot: Callable, cell: Any, node: str = "local") -> Iterator[dict]:
    """The boot's events one by one (the serial executor's view)."""
    for ev in _events(run_boot, cell, node):
        ev.pop("more", None)
        yield ev


def drive_bursts(run_boot: Callable, cell: Any, node: str = "local") -> Iterator[list[dict]]:
    """The boot's events in bursts: a run of events that `run_boot` yields back to back
    (marked `more`, race/boot.py) is one list, one message on Ray; the start event goes
    with the first burst."""
    burst: list[dict] = []
    for ev in _events(run_boot, cell, node):
        burst.append(ev)
        if not ev.pop("more", False):
            yield burst
            burst = []
    if burst:
        yield burst


def _events(run_boot: Callable, cell: Any, node: str) -> Iterator[dict]:
    key = cell.key()
    where = {"node": node, "pid": os.getpid()}
    t0, c0 = time.perf_counter(), time.process_time()
    # the start travels with the first milestones (a boot's setup takes tens of ms)
    yield {"type": "start", "cell": key, "run": where, "more": True}
    final, stamps = None, []
    try:
        for ev in run_boot(cell):
            if ev.get("type") == "result":
                final = ev
                break
            stamps.append({k: v for k, v in ev.items() if k not in ("type", "cell", "more")})
            yield ev
    except Exception as e:  # noqa: BLE001 -- a harness bug is reported, not raised
        final = broken_result(key, _describe(e), stamps)
    if final is None:
        final = broken_result(key, "run_boot ended without a result", stamps)
    yield {**final, "run": {**where, "wall_s": round(time.perf_counter() - t0, 6),
                            "cpu_s": round(time.process_time() - c0, 6)}}


def broken_result(key: str, reason: str, stamps: list | None = None) -> dict:
    return {"type": "result", "cell": key, "status": "broken", "reason": reason,
            "milestones": list(stamps or []), "cycles": None, "counters": {},
            "cycle_breakdown": {}, "gauges": {}}


def lost_reason(err: BaseException) -> str:
    """A lost boot's reason: the error's type and the first line of what it says (for a
    RayTaskError, of its cause: a worker that died, a module a worker could not import)."""
    first = _first_line(getattr(err, "cause", None) or err)
    return f"lost: {type(err).__name__} (retries exhausted)" + (f": {first[:200]}" if first else "")


def _first_line(err: BaseException) -> str:
    return next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")


def _describe(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" \
        if frames else ""
    return f"harness: {type(e).__name__}: {e}{at}"


# -- executors ---------------------------------------------------------------------------
class ExecutorError(RuntimeError):
    """The executor cannot start: a cluster address that is malformed or does not answer."""


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ExecutorError unless something accepts a TCP connection at `address`
    (host:port, [v6]:port, or ray://host:port). Ray's own connect retries for minutes,
    printing a line every ~40 s, and rewrites 127.0.0.1 as the node's IP; a race should say
    at once that the cluster is not there. "auto" is left to Ray (it reads the address of
    a local `ray start` from a file)."""
    import socket
    if address == "auto":
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExecutorError(f"{address!r} is not a Ray address (choices: host:port, "
                            f"ray://host:port, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise ExecutorError(f"cannot reach Ray at {address}: {why}") from None


class SerialExecutor:
    """The race in this process, in plan order: for tests, debugging and profiling."""
    name = "serial"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def shape(self) -> dict:
        return {"executor": "serial", "nodes": 1, "cpus": [1], "ray": None}

    def run(self, run_boot: Callable, cells: Iterable) -> Iterator[tuple[str, Any]]:
        for cell in cells:
            for ev in drive(run_boot, cell):
                yield "event", ev


class RayExecutor:
    """One streaming task per boot on an embedded Ray (address None/"local"), or on an
    existing cluster (`address` or RAY_ADDRESS; "auto" finds a local `ray start`)."""
    name = "ray"
    parallel = True          # run_race submits the longest boots first

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = MAX_RETRIES):
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self.num_cpus, self.max_retries = num_cpus, max_retries
        self.owned, self.tmp, self.saved_env = False, None, {}

    def __enter__(self):
        already = sys.modules.get("ray")
        if already is not None and already.is_initialized():
            return self                        # a driver connection made by the caller
        self.owned = True
        if "RAY_USAGE_STATS_ENABLED" not in os.environ:
            self._setenv("RAY_USAGE_STATS_ENABLED", "0")
        if self.local:
            # Ray reads this when imported; with it, every Ray process binds 127.0.0.1
            if "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ:
                self._setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
        from ray._private import ray_constants
        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
            ray_constants.ENABLE_RAY_CLUSTER = False     # in case Ray was imported before
        try:
            self._start_local(ray) if self.local else self._attach(ray)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        # importing and starting Ray leaves ~100k objects in this process that every full
        # collection would scan again (92 ms each, measured); they live as long as Ray does
        gc.freeze()
        return self

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")

    def __exit__(self, *exc):
        import ray
        if self.owned:
            ray.shutdown()
            gc.unfreeze()
            for k, v in self.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if "RAY_AUTH_MODE" in self.saved_env:
                _refresh_auth_config()
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def _setenv(self, key: str, value: str) -> None:
        self.saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _attach(self, ray) -> None:
        from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
        check_reachable(self.address)
        runtime_env = None
        if RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:   # a job ships its working dir
            import importlib
            mods = []
            for name in SHIPPED_PACKAGES:
                try:
                    mods.append(importlib.import_module(name))
                except ModuleNotFoundError:
                    pass
            runtime_env = {"py_modules": mods, "excludes": ["__pycache__", "*.pyc"]}
        try:
            ray.init(address=self.address, log_to_driver=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError) as e:   # e.g. "auto" with no local cluster
            raise ExecutorError(f"cannot attach to Ray at {self.address}: "
                                f"{_first_line(e)}") from None

    def _start_local(self, ray) -> None:
        """Embedded Ray: 127.0.0.1 only, no dashboard, quiet, small object store, its own
        temp dir, workers at the driver's priority, no housekeeping that a local race does
        not need (LOCAL_SYSTEM_CONFIG, LOCAL_ENV, LOCAL_KILLED); token auth on with a
        per-run token unless RAY_AUTH_MODE says otherwise, so ~/.ray/auth_token is not
        created and a later `ray start` is not switched to token mode behind the user's
        back (reference/ray.md, pitfall 1)."""
        self.tmp = tempfile.mkdtemp(prefix="pae-race-ray-")
        if "RAY_AUTH_MODE" not in os.environ:
            token = Path(self.tmp) / "auth_token"
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
            self._setenv("RAY_AUTH_TOKEN_PATH", str(token))
            self._setenv("RAY_AUTH_MODE", "token")
            _refresh_auth_config()
        for key, value in LOCAL_ENV.items():       # read by the processes Ray starts
            if key not in os.environ:
                self._setenv(key, value)
        # a copy: ray.init writes this run's spilling directory into the dict it is given
        ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(),
                 include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES, _temp_dir=self.tmp,
                 logging_level=logging.WARNING, _system_config=dict(LOCAL_SYSTEM_CONFIG))
        node = getattr(ray._private.worker, "_global_node", None)   # private: best effort
        for name in LOCAL_KILLED:
            try:
                getattr(node, f"kill_{name}")(check_alive=False)
            except Exception:  # noqa: BLE001 -- an API change costs a few ms/s, not the race
                pass

    def shape(self) -> dict:
        import ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"executor": "ray", "nodes": len(nodes),
                "cpus": sorted((int(n["Resources"].get("CPU", 0)) for n in nodes), reverse=True),
                "ray": ray.__version__, "address": self.address or "local"}

    def run(self, run_boot: Callable, cells: Iterable) -> Iterator[tuple[str, Any]]:
        """Submit every boot, then read the streams: one daemon thread per stream iterates it
        (a blocking `next` costs the driver far less per event than a `ray.wait` over all the
        streams, measured in benchmarks/bench_race.py) and posts to one inbox, which this
        generator drains in arrival order."""
        import ray
        task = _remote_boot(ray, self.max_retries)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        # run_boot rides in each task's spec when it pickles small (a module's function goes
        # by name): a worker then reads no object store for it (measured: about 3 ms of CPU
        # less per boot over Ray's processes); a big one (a closure pickled by value) is put
        # in the object store once
        from ray import cloudpickle
        boot = run_boot if len(cloudpickle.dumps(run_boot)) <= INLINE_BOOT_BYTES \
            else ray.put(run_boot)
        readers = [threading.Thread(target=_read_stream, args=(ray, task.remote(boot, cell),
                                                               cell, inbox),
                                    name=f"pae-race-stream-{i}", daemon=True)
                   for i, cell in enumerate(cells)]
        for reader in readers:
            reader.start()
        left = len(readers)
        while left:
            try:
                kind, payload = inbox.get(timeout=0.5)
            except queue.Empty:
                yield "tick", None
                continue
            if kind == "closed":
                left -= 1
            else:
                yield kind, payload


def _read_stream(ray, gen, cell, inbox: queue.SimpleQueue) -> None:
    """Post every event of one boot's stream to `inbox`, then ("closed", None). The result is
    the stream's last event, so reading stops there (waiting for the end of the stream would
    cost a round trip). A stream that fails once Ray's retries are exhausted, or that ends
    without a result, is posted as ("lost", (cell, error))."""
    try:
        for ref in gen:
            for ev in ray.get(ref):
                inbox.put(("event", ev))
                if ev.get("type") == "result":
                    return
        inbox.put(("lost", (cell, RuntimeError("the boot's stream ended without a result"))))
    except Exception as e:  # noqa: BLE001 -- RayError once retries are exhausted, or any
        inbox.put(("lost", (cell, e)))   # failure to read: the race goes on, the boot is lost
    finally:
        inbox.put(("closed", None))


def _refresh_auth_config() -> None:
    """Make this process see the auth settings just put in its environment: Ray reads them
    once, when it is imported (Ray's own token setup refreshes the same way)."""
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_REMOTE: dict[int, Any] = {}


def _remote_boot(ray, max_retries: int):
    if max_retries not in _REMOTE:
        def ray_boot(run_boot, cell):
            yield from drive_bursts(run_boot, cell, node=ray.get_runtime_context().get_node_id())
        _REMOTE[max_retries] = ray.remote(num_cpus=1, max_retries=max_retries,
                                          retry_exceptions=False)(ray_boot)
    return _REMOTE[max_retries]


def make_executor(kind: str, address: str | None = None, num_cpus: int | None = None):
    if kind == "serial":
        return SerialExecutor()
    return RayExecutor(address=address, num_cpus=num_cpus)


# -- the race loop -----------------------------------------------------------------------
def longest_first(cells: list, walls: dict[str, float]) -> list:
    """The order to hand boots to a parallel executor: cells never timed first (in plan
    order: they may be long, and they are the news), then the others longest first, as
    earlier runs in the same results root timed them (LPT: the last boots to start are the
    short ones, so the workers finish together). Only the schedule changes: records are
    keyed and written in plan order."""
    unknown = [c for c in cells if c.key() not in walls]
    known = sorted((c for c in cells if c.key() in walls), key=lambda c: -walls[c.key()])
    return unknown + known


def run_race(race, executor, store: ResultStore, progress, run_boot: Callable) -> ResultStore:
    """Run every cell not yet recorded in `store`; each record is journaled as it arrives.
    Ctrl-C leaves the journal intact and the manifest marked 'interrupted'."""
    cells = {c.key(): c for c in race.cells}
    todo = [c for c in race.cells if c.key() not in store.done]
    if getattr(executor, "parallel", False):
        todo = longest_first(todo, store.past_walls())
    first_seen: dict[str, dict] = {}
    progress.begin(race, store, todo)
    try:
        for kind, payload in executor.run(run_boot, todo):
            if kind == "tick":
                progress.tick()
            elif kind == "lost":
                cell, err = payload
                rec = make_record(cell, race.labels[cell.key()],
                                  broken_result(cell.key(), lost_reason(err)))
                store.append(rec, {"cell": cell.key(), "lost": True})
                progress.finished(rec, {"lost": True})
            elif payload["type"] == "start":
                first_seen.setdefault(payload["cell"], payload["run"])
                progress.started(payload["cell"], payload["run"])
            elif payload["type"] == "milestone":
                progress.milestone(payload)
            else:
                key = payload["cell"]
                run = dict(payload["run"])
                start = first_seen.get(key, run)
                run["retried"] = (start["node"], start["pid"]) != (run["node"], run["pid"])
                rec = make_record(cells[key], race.labels[key], payload)
                store.append(rec, {"cell": key, **run})
                progress.finished(rec, run)
    except KeyboardInterrupt:
        store.finish("interrupted")
        progress.end(store, interrupted=True)
        raise
    store.finish("complete")
    progress.end(store)
    return store

