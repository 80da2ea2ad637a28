"""Live progress of a race, on stderr (stdout stays for the dashboards).

A driver-side tally (boots queued / running / done / DNF / broken / retried, milestones
reached, the leading hypervisor of each milestone by *simulated* time, bare hardware's time
beside it) drawn with `rich.live` when stderr is a terminal, or as one plain line per event
when it is not (CI logs, pipes).

Leaders are picked the way the final leaderboard picks winners (race/board.py), with what is
known so far: jobs race only at their own *point* (the matrix axes: profile, VCPUs,
memory, ...), a job's time is the median over its seeds that have reached the milestone so
far, a job with a DNF or broken seed is out (only a job whose every seed finishes ok may
win), and bare hardware is the yardstick beside them, never the leader. After `--resume`
the boots kept from the earlier run count in every number, their stamps included.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from typing import TextIO

from .board import POINT_AXES, REFERENCE_ENGINE, point_namer
from .results import costs_key, job_namer

STATUS_WORD = {"ok": "done", "dnf": "DNF", "broken": "BROKEN"}


def fmt_time(us: float | None) -> str:
    """Simulated time (microseconds) with three significant digits in a unit a reader
    takes in at once: 2.47 us, 184 us, 4.96 ms, 1.23 s."""
    if us is None:
        return "-"
    for scale, unit in ((1e6, "s"), (1e3, "ms"), (1.0, "us")):
        if abs(us) >= scale or unit == "us":
            v = us / scale
            return f"{v:.3g} {unit}" if abs(v) < 1000 else f"{v:.0f} {unit}"
    return "-"


@dataclass(frozen=True)
class Standing:
    """One milestone at one point, so far: the best median among the hypervisor jobs still
    in the running, the jobs holding it (more than one: a tie), bare hardware's median."""
    time_us: float | None
    leaders: tuple[str, ...]
    reference_us: float | None


class Tally:
    """What the driver knows of the race so far, from the events and (after --resume) the
    records kept from the earlier run."""

    def __init__(self, race, manifest: dict, todo: list, records: dict | None = None):
        self.total = len(race.cells)
        self.queued = len(todo)
        self.running: dict[str, str] = {}        # key -> last milestone reached
        self.counts = {"ok": 0, "dnf": 0, "broken": 0}
        self.kept = 0                            # boots recorded before a --resume
        self.retried = 0
        self.order: dict[str, int] = {}          # milestone -> its index on the ladder
        self.times: dict[tuple, dict[str, list[float]]] = {}   # (point, m) -> job -> us
        self.out: set[str] = set()               # jobs with a DNF or broken seed
        self._cells(manifest)
        todo_keys = {c.key() for c in todo}
        for c in manifest["cells"]:
            rec = (records or {}).get(c["key"])
            if c["key"] not in todo_keys and rec is not None:
                self._keep(rec)

    def _cells(self, manifest: dict) -> None:
        namer = job_namer(manifest["cells"])
        tables = manifest.get("cost_tables", {})
        self.name, self.job, self.point, self.mhz = {}, {}, {}, {}
        self.label: dict[str, str] = {}          # job -> its label (a point names the rest)
        self.reference: dict[tuple, str] = {}    # point -> its bare-hardware job
        self.yardsticks: set[str] = set()        # bare-hardware jobs: never leaders
        self.planned: dict[tuple, int] = {}      # point -> boots
        for c in manifest["cells"]:
            cfg, key = c["config"], c["key"]
            job = self.job[key] = namer(cfg, c["label"])
            point = self.point[key] = tuple(cfg.get(a) for a in POINT_AXES)
            self.label[job] = c["label"]
            self.name[key] = f"{job} s{cfg['seed']}"
            self.mhz[key] = tables.get(costs_key(cfg["costs"], cfg["cost_overrides"]),
                                       {}).get("mhz")
            self.planned[point] = self.planned.get(point, 0) + 1
            if cfg["engine"] == REFERENCE_ENGINE:
                self.reference.setdefault(point, job)
                self.yardsticks.add(job)
        self.points = list(self.planned)
        self.point_name = point_namer(self.points)

    def _keep(self, rec: dict) -> None:
        """A boot recorded before --resume: its stamps and its status, as if seen now."""
        for s in rec.get("milestones", []):
            self._stamp(rec["cell"], s["milestone"], s.get("index"), s["cycles"])
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        self.kept += 1
        if rec["status"] != "ok":
            self.out.add(self.job[rec["cell"]])

    @property
    def ladder(self) -> list[str]:
        return sorted(self.order, key=self.order.__getitem__)

    def sim_us(self, key: str, cycles: int) -> float:
        mhz = self.mhz.get(key)
        return cycles / mhz if mhz else float(cycles)

    def at(self, key: str) -> str:
        """' at 1v' where the race has several points, '' where it has one."""
        return f" at {self.point_name(self.point[key])}" if len(self.points) > 1 else ""

    def reached(self, point: tuple, m: str) -> int:
        return sum(len(v) for v in self.times.get((point, m), {}).values())

    def standing(self, point: tuple, m: str) -> Standing:
        medians = {j: statistics.median(v) for j, v in self.times.get((point, m), {}).items()}
        ref = self.reference.get(point)
        never = self.yardsticks | self.out
        contenders = {j: t for j, t in medians.items() if j not in never}
        best = min(contenders.values(), default=None)
        return Standing(best, tuple(sorted(j for j, t in contenders.items() if t == best)),
                        medians.get(ref))

    def _stamp(self, key: str, m: str, index: int | None, cycles: int) -> None:
        self.order.setdefault(m, len(self.order) if index is None else index)
        runs = self.times.setdefault((self.point[key], m), {})
        runs.setdefault(self.job[key], []).append(self.sim_us(key, cycles))

    def start(self, key: str) -> None:
        if key not in self.running:
            self.queued -= 1
            self.running[key] = "started"

    def milestone(self, ev: dict) -> str | None:
        """Counts a stamp; says what it did to the lead of its milestone at its point: its
        job leads or ties, or its job's median fell behind and the lead passed on."""
        key, m = ev["cell"], ev["milestone"]
        self.running[key] = m
        before = self.standing(self.point[key], m).leaders
        self._stamp(key, m, ev.get("index"), ev["cycles"])
        after = self.standing(self.point[key], m).leaders
        job = self.job[key]
        if job in after:
            return ("leads" if len(after) == 1 else "ties the lead") + self.at(key)
        if job in before:
            return f"lead{self.at(key)} passes to {self.who(after)}"
        return None

    def who(self, jobs: tuple[str, ...]) -> str:
        names = ", ".join(self.label[j] for j in jobs) or "nobody"
        return names + (" (tie)" if len(jobs) > 1 else "")

    def finish(self, rec: dict, run: dict) -> list[str]:
        """Counts a record; a DNF or broken boot puts its job out of the running: the
        milestones whose lead passes on, as 'm to job'."""
        key = rec["cell"]
        if key not in self.running:
            self.queued -= 1
        self.running.pop(key, None)
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        self.retried += bool(run.get("retried"))
        job, point = self.job[key], self.point[key]
        if rec["status"] == "ok" or job in self.out:
            return []
        led = [m for m in self.ladder if job in self.standing(point, m).leaders]
        self.out.add(job)
        return [f"{m} to {self.who(self.standing(point, m).leaders)}" for m in led]

    def summary(self) -> str:
        done = sum(self.counts.values())
        kept = f" ({self.kept} kept from the earlier run)" if self.kept else ""
        return (f"queued {self.queued} · running {len(self.running)} · "
                f"done {self.counts['ok']} · DNF {self.counts['dnf']} · "
                f"broken {self.counts['broken']} · retried {self.retried} "
                f"· {done}/{self.total}{kept}")


class PlainProgress:
    """One line per event, for logs."""

    def __init__(self, stream: TextIO | None = None):
        self.out = stream or sys.stderr
        self.tally = None
        self.n = 0

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self, race, store, todo) -> None:
        self.tally = Tally(race, store.manifest, todo, store.records)
        shape = store.manifest["cluster"]
        kept = self.tally.kept
        self._say(f"race {store.race_id}: {len(todo)} boots to run"
                  + (f" ({kept} already done)" if kept else "")
                  + f" on {shape['executor']} ({shape['nodes']} node(s), "
                    f"{sum(shape['cpus'])} CPUs) -> {store.dir}")
        points = ", ".join(map(self.tally.point_name, self.tally.points))
        self._say(("leads: at each point (" + points + "), " if len(self.tally.points) > 1
                   else "leads: ")
                  + "a job's median over its seeds so far; a job with a DNF or broken seed "
                    "and bare hardware never lead")
        for note in race.notes:
            self._say(f"note: {note}")

    def tick(self) -> None:
        pass

    def started(self, key: str, run: dict) -> None:
        self.tally.start(key)
        self._say(f"start  {self.tally.name[key]}")

    def milestone(self, ev: dict) -> None:
        lead = self.tally.milestone(ev)
        t = fmt_time(self.tally.sim_us(ev["cell"], ev["cycles"]))
        self._say(f"  {self.tally.name[ev['cell']]}: {ev['milestone']} @ {t}"
                  + (f"  ({lead})" if lead else ""))

    def finished(self, rec: dict, run: dict) -> None:
        passed = self.tally.finish(rec, run)
        self.n += 1
        word = STATUS_WORD.get(rec["status"], rec["status"])
        extra = f": {rec['reason']}" if rec.get("reason") else ""
        retried = " (retried)" if run.get("retried") else ""
        wall = f" [{run['wall_s']:.1f} s wall]" if "wall_s" in run else ""
        self._say(f"{word:6} {self.tally.name[rec['cell']]}{extra}{retried}{wall}  "
                  f"-- {self.tally.summary()}")
        if passed:
            self._say(f"  lead{self.tally.at(rec['cell'])} passes: " + ", ".join(passed))

    def end(self, store, interrupted: bool = False) -> None:
        if interrupted:
            self._say(f"interrupted: {len(store.done)}/{self.tally.total} boots recorded in "
                      f"{store.dir}; run again with --resume to finish")


class LiveProgress(PlainProgress):
    """A rich live table: counts, then each milestone at each point with how many of the
    point's boots reached it, its leader and bare hardware's time; the boots running now
    and the last milestone each reached."""

    LEGEND = ("leader: the fastest hypervisor job at its point by the median of its seeds "
              "so far; a job with a DNF or broken seed is out, as on the dashboard")

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        from rich.console import Console
        self.console = Console(file=self.out)
        self.live = None

    def begin(self, race, store, todo) -> None:
        from rich.live import Live
        self.tally = Tally(race, store.manifest, todo, store.records)
        self.race_id = store.race_id
        for note in race.notes:
            self.console.print(f"[dim]note: {note}[/dim]")
        self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                         transient=False)
        self.live.start()

    def _rows(self) -> list[tuple[list[str], bool]]:
        """Each point's milestones, a section per point when there are several."""
        tally, rows = self.tally, []
        several = len(tally.points) > 1
        for p in tally.points:
            for i, m in enumerate(tally.ladder):
                s = tally.standing(p, m)
                lead = (tally.label[s.leaders[0]] if len(s.leaders) == 1 else
                        f"tie ({len(s.leaders)})" if s.leaders else "-")
                head = [tally.point_name(p) if i == 0 else ""] if several else []
                rows.append((head + [m, f"{tally.reached(p, m)}/{tally.planned[p]}", lead,
                                     fmt_time(s.time_us), fmt_time(s.reference_us)],
                             several and i == len(tally.ladder) - 1))
        return rows

    def _render(self):
        from rich.table import Table
        t = Table(title=f"race {self.race_id} — {self.tally.summary()}", title_justify="left",
                  expand=False)
        cols = ("milestone", "reached", "leader", "sim time", REFERENCE_ENGINE)
        for col in (("point",) if len(self.tally.points) > 1 else ()) + cols:
            t.add_column(col)
        for cells, last in self._rows():
            t.add_row(*cells, end_section=last)
        running = ", ".join(f"{self.tally.name[k]} ({m})"
                            for k, m in list(self.tally.running.items())[:6])
        t.caption = f"[dim]{self.LEGEND}[/dim]" + (f"\nrunning: {running}" if running else "")
        t.caption_justify = "left"
        return t

    def _update(self) -> None:
        if self.live:
            self.live.update(self._render())

    def tick(self) -> None:
        self._update()

    def started(self, key: str, run: dict) -> None:
        self.tally.start(key)
        self._update()

    def milestone(self, ev: dict) -> None:
        self.tally.milestone(ev)
        self._update()

    def finished(self, rec: dict, run: dict) -> None:
        self.tally.finish(rec, run)
        if rec["status"] != "ok":
            self.live.console.print(f"{STATUS_WORD.get(rec['status'])}: "
                                    f"{self.tally.name[rec['cell']]}: {rec.get('reason')}")
        self._update()

    def end(self, store, interrupted: bool = False) -> None:
        if self.live:
            self._update()
            self.live.stop()
        super().end(store, interrupted)


class NoProgress(PlainProgress):
    def _say(self, text: str) -> None:
        pass


def make_progress(stream: TextIO | None = None, quiet: bool = False):
    stream = stream or sys.stderr
    if quiet:
        return NoProgress(stream)
    return LiveProgress(stream) if stream.isatty() else PlainProgress(stream)
