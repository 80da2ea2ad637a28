"""Live progress of a race, on stderr (stdout stays for the dashboards).

A driver-side tally (boots queued / running / done / DNF / broken / retried, milestones
reached, the leading hypervisor of each milestone by *simulated* time, bare hardware's time
beside it) drawn with `rich.live` when
stderr is a terminal, or as one plain line per event when it is not (CI logs, pipes).
"""
from __future__ import annotations

import sys
from typing import TextIO

from .board import REFERENCE_ENGINE
from .results import job_namer

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


class Tally:
    def __init__(self, race, manifest: dict, todo: list):
        self.total = len(race.cells)
        self.skipped = self.total - len(todo)
        self.queued = len(todo)
        self.running: dict[str, str] = {}        # key -> last milestone reached
        self.counts = {"ok": 0, "dnf": 0, "broken": 0}
        self.retried = 0
        self.ladder: list[str] = []
        self.reached: dict[str, int] = {}
        self.leader: dict[str, tuple[float, str]] = {}      # among the hypervisors
        self.reference: dict[str, tuple[float, str]] = {}   # bare hardware, beside them
        namer = job_namer(manifest["cells"])
        tables = manifest.get("cost_tables", {})
        self.name, self.mhz, self.engine = {}, {}, {}
        for c in manifest["cells"]:
            cfg = c["config"]
            self.engine[c["key"]] = cfg["engine"]
            self.name[c["key"]] = f"{namer(cfg, c['label'])} s{cfg['seed']}"
            key = cfg["costs"] + "".join(f"+{k}={v}" for k, v in
                                         sorted(cfg["cost_overrides"].items()))
            self.mhz[c["key"]] = tables.get(key, {}).get("mhz")

    def sim_us(self, key: str, cycles: int) -> float:
        mhz = self.mhz.get(key)
        return cycles / mhz if mhz else float(cycles)

    def start(self, key: str) -> None:
        if key not in self.running:
            self.queued -= 1
            self.running[key] = "started"

    def milestone(self, ev: dict) -> bool:
        """Counts a stamp; True when it takes the lead of its milestone."""
        key, m = ev["cell"], ev["milestone"]
        self.running[key] = m
        if m not in self.ladder:
            self.ladder.append(m)
        self.reached[m] = self.reached.get(m, 0) + 1
        t = self.sim_us(key, ev["cycles"])
        board = self.reference if self.engine[key] == REFERENCE_ENGINE else self.leader
        best = board.get(m)
        if best is None or (t, self.name[key]) < best:
            board[m] = (t, self.name[key])
            return board is self.leader
        return False

    def finish(self, rec: dict, run: dict) -> None:
        if rec["cell"] not in self.running:
            self.queued -= 1
        self.running.pop(rec["cell"], None)
        self.counts[rec["status"]] = self.counts.get(rec["status"], 0) + 1
        self.retried += bool(run.get("retried"))

    def summary(self) -> str:
        done = sum(self.counts.values())
        return (f"queued {self.queued} · running {len(self.running)} · "
                f"done {self.counts['ok']} · DNF {self.counts['dnf']} · "
                f"broken {self.counts['broken']} · retried {self.retried} "
                f"· {done + self.skipped}/{self.total}")


class PlainProgress:
    """One line per event, for logs."""

    def __init__(self, stream: TextIO | None = None):
        self.out = stream or sys.stderr
        self.tally = None
        self.n = 0

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self, race, store, todo) -> None:
        self.tally = Tally(race, store.manifest, todo)
        shape = store.manifest["cluster"]
        self._say(f"race {store.race_id}: {len(todo)} boots to run"
                  + (f" ({self.tally.skipped} already done)" if self.tally.skipped else "")
                  + f" on {shape['executor']} ({shape['nodes']} node(s), "
                    f"{sum(shape['cpus'])} CPUs) -> {store.dir}")
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
                  + ("  (leads)" if lead else ""))

    def finished(self, rec: dict, run: dict) -> None:
        self.tally.finish(rec, run)
        self.n += 1
        word = STATUS_WORD.get(rec["status"], rec["status"])
        extra = f": {rec['reason']}" if rec.get("reason") else ""
        retried = " (retried)" if run.get("retried") else ""
        wall = f" [{run['wall_s']:.1f} s wall]" if "wall_s" in run else ""
        self._say(f"{word:6} {self.tally.name[rec['cell']]}{extra}{retried}{wall}  "
                  f"-- {self.tally.summary()}")

    def end(self, store, interrupted: bool = False) -> None:
        if interrupted:
            self._say(f"interrupted: {len(store.done)}/{self.tally.total} boots recorded in "
                      f"{store.dir}; run again with --resume to finish")


class LiveProgress(PlainProgress):
    """A rich live table: counts, then each milestone with how many boots reached it and
    its leader; the boots running now and the last milestone each reached."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream)
        from rich.console import Console
        self.console = Console(file=self.out)
        self.live = None

    def begin(self, race, store, todo) -> None:
        from rich.live import Live
        self.tally = Tally(race, store.manifest, todo)
        self.race_id = store.race_id
        for note in race.notes:
            self.console.print(f"[dim]note: {note}[/dim]")
        self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                         transient=False)
        self.live.start()

    def _render(self):
        from rich.table import Table
        t = Table(title=f"race {self.race_id} — {self.tally.summary()}", title_justify="left",
                  expand=False)
        for col in ("milestone", "reached", "leader", "sim time", REFERENCE_ENGINE):
            t.add_column(col)
        for m in self.tally.ladder:
            lead, ref = self.tally.leader.get(m), self.tally.reference.get(m)
            t.add_row(m, str(self.tally.reached.get(m, 0)), lead[1] if lead else "-",
                      fmt_time(lead[0]) if lead else "-", fmt_time(ref[0]) if ref else "-")
        running = ", ".join(f"{self.tally.name[k]} ({m})"
                            for k, m in list(self.tally.running.items())[:6])
        if running:
            t.caption = f"running: {running}"
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
