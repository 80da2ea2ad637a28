"""The race's executors on this machine: the same small race of real boots run serially (one
process, no Ray), on an embedded Ray with 2 workers, and on 2 plain processes (a
`multiprocessing` pool: the speed-up the machine itself allows at that moment, with no
harness at all). Prints the speed-ups, and Ray's overhead per boot three ways:
- Ray's CPU per boot: the CPU time of every process of the Ray run (the driver and all it
  started: GCS, raylet, workers, agents) less the boots' own, per boot. Contention from
  other work on the machine hardly moves it, so it is the steady figure;
- the CPU lost in the parallel run: (elapsed x workers - the boots' own wall time) / boots;
- the latency Ray adds to one boot sent alone: the one-boot race's time beyond the boot's
  own wall time, on Ray, less the same on the serial executor (which pays the journal and
  the manifest too).
Beside them, Ray's floor on this machine: the CPU per task, over the same processes, of bare
Ray streaming tasks (the shape the race must use: one streaming task per boot) that only
wait a boot's wall time and yield one item, with no code of pae-race in them. Ray's own CPU
per boot less that floor is what pae-race's executor adds; with `--sleeping` both are
measured on waiting boots, like for like.
Not a test: it prints figures.

Targets (issue 4, 2-core machine): speed-up >= 1.8x; overhead per boot < 5% of a `tiny`
boot. Two vCPUs of a VM do not always give 2x to two busy processes, and the machine may be
shared, so the plain-process speed-up and the load average are printed beside the figures.

    python -m benchmarks.bench_race [--boots N] [--profile tiny|sarge] [--sleeping]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from tabulate import tabulate

from race.progress import NoProgress
from race.results import ResultStore, load_results
from race.runner import RayExecutor, SerialExecutor, drive, run_race
from race.spec import Catalog, parse_spec


def spec_text(boots: int, profile: str) -> str:
    seeds = list(range(1, boots // 2 + 1))
    return (f"name: bench\nseeds: {seeds}\nmatrix: {{profile: {profile}, vcpus: [1, 2], "
            f"memory_mib: {64 if profile == 'tiny' else 512}}}\nengines: [native]\n")


# a sleeping boot's event pattern, after a real `tiny` boot's (race/boot.py HOLD_CYCLES):
# (wall seconds before the burst, milestones in it); the last burst carries the result
SLEEPING_BURSTS = ((0.22, ("kernel_entry", "paging_on", "direct_map", "smp_online",
                           "init_exec", "single_user", "multiuser")),)


def sleeping_boot(cell):
    """A boot that only waits, with a real tiny boot's timing and bursts of events: Ray's own
    cost per boot without CPU contention, on a machine shared with other work."""
    key, stamps = cell.key(), []
    for n, (pause, names) in enumerate(SLEEPING_BURSTS):
        time.sleep(pause)
        for i, m in enumerate(names):
            stamps.append({"milestone": m, "index": len(stamps), "vcpu": 0,
                           "cycles": len(stamps), "counters": {}})
            more = i < len(names) - 1 or n == len(SLEEPING_BURSTS) - 1
            yield {"type": "milestone", "cell": key, **stamps[-1], **({"more": True} if more else {})}
    yield {"type": "result", "cell": key, "status": "ok", "reason": None,
           "milestones": stamps, "cycles": len(stamps), "counters": {}, "cycle_breakdown": {},
           "gauges": {}}


def bare_stream(pause: float):
    """Ray's floor: a streaming task that only waits and yields one small item."""
    time.sleep(pause)
    yield [None]


def ray_floor(n: int, pause: float) -> float:
    """CPU seconds per task, over this process and every process it started, of `n` bare
    streaming tasks that wait `pause` seconds each, submitted at once and read in order."""
    import ray
    task = ray.remote(num_cpus=1)(bare_stream)
    cpu0 = process_cpu(os.getpid())
    for gen in [task.remote(pause) for _ in range(n)]:
        for ref in gen:
            ray.get(ref)
    return cpu_spent(cpu0, process_cpu(os.getpid())) / n


def timed_race(executor, race, catalog, out: str) -> tuple[float, list[dict]]:
    store = ResultStore.create(out, race, executor.shape(), catalog)
    t0 = time.perf_counter()
    run_race(race, executor, store, NoProgress(), catalog.run_boot)
    elapsed = time.perf_counter() - t0
    res = load_results(store.dir)
    broken = [r for r in res.records if r["status"] == "broken"]
    if broken:              # a figure over lost boots would mean nothing: say why, stop
        raise SystemExit(f"bench_race: {len(broken)} of {len(res.records)} boots broke "
                         f"on the {executor.name} executor, e.g. {broken[0]['reason']}")
    return elapsed, [t for t in res.timings if "wall_s" in t]


def process_cpu(root: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of `root` and every process it started, by pid."""
    tick = os.sysconf("SC_CLK_TCK")
    stat = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name, rest = st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()
            stat[int(pid)] = (name, int(rest[1]), (int(rest[11]) + int(rest[12])) / tick)
    tree, grew = {root}, True
    while grew:
        more = {p for p, (_, ppid, _) in stat.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return {p: (stat[p][0], stat[p][2]) for p in tree if p in stat}


def cpu_spent(before: dict, after: dict) -> float:
    """CPU seconds spent between two `process_cpu` samples, processes started between them
    included (they all outlive a race: Ray's workers and daemons)."""
    return sum(c - before.get(p, (None, 0.0))[1] for p, (_, c) in after.items())


def _pool_boot(cell) -> float:
    from race.boot import run_boot
    for ev in drive(run_boot, cell):
        if ev["type"] == "result":
            return ev["run"]["wall_s"]
    raise RuntimeError("no result")


def pool_race(pool, cells) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    walls = list(pool.map(_pool_boot, cells))
    return time.perf_counter() - t0, walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=16)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--alone", type=int, default=8, help="boots sent one at a time")
    ap.add_argument("--repeat", type=int, default=3,
                    help="best of N, serial, Ray and plain processes in turn")
    ap.add_argument("--sleeping", action="store_true",
                    help="boots that only wait (Ray's own cost, immune to CPU contention)")
    args = ap.parse_args()
    catalog = Catalog.installed()
    import sys
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers may not import it
    if args.sleeping:
        from dataclasses import replace
        catalog = replace(catalog, run_boot=sleeping_boot)
    race = parse_spec(spec_text(args.boots, args.profile), "bench.yaml", catalog)
    n = len(race.cells)
    out = tempfile.mkdtemp(prefix="bench-race-")
    load0 = os.getloadavg()[0]
    serial_runs, ray_runs, pool_runs, alone, floors = [], [], [], [], []
    me = os.getpid()

    pool = None if args.sleeping else ProcessPoolExecutor(2, mp_context=get_context("spawn"))
    if pool:
        pool_race(pool, race.cells[:2] * 2)                     # start both processes
    t0 = time.perf_counter()
    with RayExecutor(num_cpus=2) as ray_ex:
        t_init = time.perf_counter() - t0
        warm = parse_spec(spec_text(2, "tiny"), "warm.yaml", catalog)
        timed_race(ray_ex, warm, catalog, out)                  # start both workers
        for _ in range(args.repeat):                            # the machine may be shared:
            with SerialExecutor() as ex:                        # alternate, keep the best
                c0 = time.process_time()
                elapsed, timings = timed_race(ex, race, catalog, out)
                harness_cpu = time.process_time() - c0 - sum(t["cpu_s"] for t in timings)
                serial_runs.append((elapsed, timings, harness_cpu))
            cpu0 = process_cpu(me)
            elapsed, timings = timed_race(ray_ex, race, catalog, out)
            ray_cpu = cpu_spent(cpu0, process_cpu(me)) - sum(t["cpu_s"] for t in timings)
            ray_runs.append((elapsed, timings, ray_cpu))
            if pool:
                pool_runs.append(pool_race(pool, race.cells))
            pause = SLEEPING_BURSTS[0][0] if args.sleeping else \
                statistics.median(t["wall_s"] for t in serial_runs[0][1])
            floors.append(ray_floor(n, pause))
        for cell in race.cells[: args.alone]:
            one = parse_spec(spec_text(2, args.profile), "one.yaml", catalog)
            one.cells, one.labels = [cell], race.labels
            t_one, timing = timed_race(ray_ex, one, catalog, out)
            with SerialExecutor() as ex:
                t_ser, timing_ser = timed_race(ex, one, catalog, out)
            # the round trip beyond the boot, less what the harness costs a serial run of
            # the same one-boot race (journal, fsync, manifest): Ray's own part
            alone.append((t_one - timing[0]["wall_s"], t_ser - timing_ser[0]["wall_s"]))
    t_total = time.perf_counter() - t0
    if pool:
        pool.shutdown()

    t_serial, serial, _ = min(serial_runs, key=lambda r: r[0])
    t_ray, on_ray, _ = min(ray_runs, key=lambda r: r[0])
    boot_wall = statistics.median(t["wall_s"] for t in serial)
    boot_cpu = statistics.median(t["cpu_s"] for t in serial)
    harness = (t_serial - sum(t["wall_s"] for t in serial)) / n   # journal, fsync, progress
    cpu_overhead = (t_ray * 2 - sum(t["wall_s"] for t in on_ray)) / n
    ray_cpu = statistics.median(r[2] for r in ray_runs) / n
    harness_cpu = statistics.median(r[2] for r in serial_runs) / n
    own_cpu = ray_cpu - harness_cpu
    floor = statistics.median(floors)
    latency = statistics.median(a - s for a, s in alone)
    round_trip = statistics.median(a for a, _ in alone)
    harness_one = statistics.median(s for _, s in alone)
    rows = [
        ["boots", f"{n} x {'sleeping (220 ms, 1 message)' if args.sleeping else args.profile} on "
                  f"native; best of {args.repeat} runs each"],
        ["median boot (serial, in-process)", f"{boot_wall * 1000:.0f} ms wall, "
                                              f"{boot_cpu * 1000:.0f} ms CPU"],
        ["serial race", f"{t_serial:.2f} s ({harness * 1000:.1f} ms per boot outside "
                        f"the boot: journal, fsync, progress)"],
        ["Ray race, 2 workers (warm)", f"{t_ray:.2f} s"],
        ["speed-up", f"{t_serial / t_ray:.2f}x  (target >= 1.8x)"],
    ]
    if pool_runs:
        t_pool = min(r[0] for r in pool_runs)
        rows += [["2 plain processes, no harness (the machine's own)",
                  f"{t_pool:.2f} s: {t_serial / t_pool:.2f}x; Ray reaches "
                  f"{t_pool / t_ray:.0%} of it"]]
    rows += [
        ["Ray's own CPU per boot (median)",
         f"{own_cpu * 1000:.1f} ms = {own_cpu / boot_wall:.1%} of a boot's wall  (target < 5%)"],
        ["  = all processes of the Ray run, less the harness",
         f"{ray_cpu * 1000:.1f} ms - {harness_cpu * 1000:.1f} ms (the serial race's CPU "
         f"outside the boots: journal, progress)"],
        ["  Ray's floor: a bare streaming task (median)",
         f"{floor * 1000:.1f} ms = {floor / boot_wall:.1%} of a boot's wall (waits a boot's "
         f"wall, yields one item; no pae-race code)"],
        ["  pae-race's part: own CPU less the floor",
         f"{(own_cpu - floor) * 1000:.1f} ms" + ("" if args.sleeping else
                                                 " (own CPU under contention: see --sleeping)")],
        ["Ray overhead per boot, CPU lost in the parallel run",
         f"{cpu_overhead * 1000:.1f} ms = {cpu_overhead / boot_wall:.1%} of a boot"],
        ["Ray overhead per boot, one boot alone (median)",
         f"{latency * 1000:.1f} ms = {latency / boot_wall:.1%} of a boot's wall"],
        ["  = round trip beyond the boot, less the harness",
         f"{round_trip * 1000:.1f} ms - {harness_one * 1000:.1f} ms (a serial one-boot race)"],
        ["Ray start (ray.init, embedded)", f"{t_init:.1f} s"],
        ["Ray session in total (start .. shutdown)", f"{t_total:.1f} s"],
        ["load average before / after", f"{load0:.2f} / {os.getloadavg()[0]:.2f} "
                                         f"on {os.cpu_count()} CPUs"],
    ]
    print(tabulate(rows, tablefmt="simple", headers=["bench_race", ""]))


if __name__ == "__main__":
    main()
