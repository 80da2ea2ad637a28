"""The numbers behind the dashboards, computed from a race's records (no formatting here).

Vocabulary (osstest's, see reference/ray.md §4): a *job* is one configuration (engine
entry + options + the matrix axes that vary for it); its *seeds* repeat it; a *point* is
one combination of the matrix axes (profile, VCPUs, memory, ...) at which jobs race each
other. Time is simulated: cycles / the cost table's MHz, in microseconds, so jobs on
different reference CPUs compare fairly. Wrong is worse than slow: only a job whose every
seed finished `ok` may win a milestone.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from .results import AXIS_WORDS, Results, costs_key, job_namer

REFERENCE_ENGINE = "native"      # bare hardware: the yardstick, not a contender
POINT_AXES = ("profile", "vcpus", "memory_mib", "machine_memory_mib", "flush_filter")


def point_namer(points: list[tuple]):
    """A function point -> its name from the axes that vary among `points` ("1v", "2v"),
    as the dashboard titles its leaderboards (and the live display its points); "all"
    when there is one point."""
    varying = [i for i, _ in enumerate(POINT_AXES) if len({p[i] for p in points}) > 1]
    return lambda point: " ".join(AXIS_WORDS[POINT_AXES[i]](point[i])
                                  for i in varying) or "all"


@dataclass
class Job:
    name: str
    label: str
    engine: str
    point: tuple
    ident: str = ""          # the configuration minus the seed: the same job in any race
    keys: list[str] = field(default_factory=list)        # one per seed, plan order
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def reference(self) -> bool:
        return self.engine == REFERENCE_ENGINE

    @property
    def eligible(self) -> bool:
        """Every seed recorded and finished ok: only such a job may win."""
        return len(self.records) == len(self.keys) and all(
            r["status"] == "ok" for r in self.records.values())


@dataclass
class Stat:
    """A milestone (or phase) of one job over its seeds."""
    values: list[float]           # simulated us, one per seed that reached it
    seeds: int                    # seeds recorded
    planned: int

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def spread(self) -> float | None:
        """Half the range over seeds, relative to the median."""
        if len(self.values) < 2 or not self.median:
            return None
        return (max(self.values) - min(self.values)) / 2 / self.median


class Board:
    def __init__(self, results: Results):
        self.results, self.manifest = results, results.manifest
        cells = self.manifest.get("cells", [])
        namer = job_namer(cells)
        self.mhz = {k: t.get("mhz") for k, t in self.manifest.get("cost_tables", {}).items()}
        self.jobs: dict[str, Job] = {}
        self.job_of: dict[str, Job] = {}
        for c in cells:
            cfg = c["config"]
            name = namer(cfg, c["label"])
            ident = json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True)
            job = self.jobs.setdefault(name, Job(name, c["label"], cfg["engine"],
                                                 tuple(cfg.get(a) for a in POINT_AXES), ident))
            job.keys.append(c["key"])
            self.job_of[c["key"]] = job
        self.records = {r["cell"]: r for r in results.records}
        for key, rec in self.records.items():
            if key in self.job_of:
                self.job_of[key].records[key] = rec
        self.ladder = self._ladder()
        self.points = list(dict.fromkeys(j.point for j in self.jobs.values()))
        self.timings = {t["cell"]: t for t in results.timings if "cell" in t}

    def _ladder(self) -> list[str]:
        seen: dict[str, int] = {}
        for rec in self.records.values():
            for s in rec.get("milestones", []):
                seen.setdefault(s["milestone"], s.get("index", len(seen)))
        return sorted(seen, key=lambda m: seen[m])

    # -- time --------------------------------------------------------------------------------
    def _mhz(self, key: str) -> float | None:
        cfg = self.records[key]["config"]
        return self.mhz.get(costs_key(cfg["costs"], cfg.get("cost_overrides", {})))

    def us(self, key: str, cycles: int) -> float:
        mhz = self._mhz(key)
        return cycles / mhz if mhz else float(cycles)

    def has_mhz(self) -> bool:
        return bool(self.mhz) and all(self.mhz.values())

    def stamp(self, key: str, milestone: str) -> float | None:
        for s in self.records[key].get("milestones", []):
            if s["milestone"] == milestone:
                return self.us(key, s["cycles"])
        return None

    def stat(self, job: Job, milestone: str) -> Stat:
        vals = [t for k in job.keys if k in job.records
                for t in [self.stamp(k, milestone)] if t is not None]
        return Stat(vals, len(job.records), len(job.keys))

    def phase(self, job: Job, i: int) -> Stat:
        """The step from ladder[i-1] (or boot start) to ladder[i]."""
        vals = []
        for k in job.keys:
            if k not in job.records:
                continue
            end = self.stamp(k, self.ladder[i])
            start = self.stamp(k, self.ladder[i - 1]) if i else 0.0
            if end is not None and start is not None:
                vals.append(end - start)
        return Stat(vals, len(job.records), len(job.keys))

    # -- who wins ------------------------------------------------------------------------------
    def jobs_at(self, point: tuple) -> list[Job]:
        return [j for j in self.jobs.values() if j.point == point]

    def race_at(self, point: tuple, milestone: str) -> dict:
        """Winner among the hypervisors that finished every seed (bare hardware only when
        none did), runner-up, margin, and the reference's time beside them. Margins come
        as a ratio (None when the winner's time is 0: PV guests start with paging on) and
        as an absolute gap: `margin_us` in the board's unit, `margin_cycles` in the
        winner's clock cycles; `vs_reference_us` likewise beside `vs_reference`."""
        jobs = self.jobs_at(point)
        finishers = [j for j in jobs if j.eligible and self.stat(j, milestone).median is not None]
        contenders = [j for j in finishers if not j.reference] or finishers
        ranked = sorted((self.stat(j, milestone).median, j.name) for j in contenders)
        ref = next((j for j in jobs if j.reference), None)
        out = {"milestone": milestone, "winner": None, "tie": [], "time_us": None,
               "runner_up": None, "margin": None, "margin_us": None, "margin_cycles": None,
               "reference": ref.name if ref else None,
               "reference_us": self.stat(ref, milestone).median if ref else None,
               "vs_reference": None, "vs_reference_us": None}
        if not ranked:
            return out
        best = ranked[0][0]
        tied = [name for t, name in ranked if t == best]   # the simulation is exact
        out["time_us"] = best
        if len(tied) > 1:
            out["tie"] = tied
        else:
            out["winner"] = tied[0]
            if len(ranked) > 1:
                gap = ranked[1][0] - best
                out.update(runner_up=ranked[1][1],
                           margin=ranked[1][0] / best - 1 if best else None,
                           margin_us=gap, margin_cycles=self.cycles(self.jobs[tied[0]], gap))
        if out["reference_us"] is not None and out["reference"] not in tied:
            out["vs_reference_us"] = best - out["reference_us"]
            if out["reference_us"]:
                out["vs_reference"] = best / out["reference_us"] - 1
        return out

    def cycles(self, job: Job, us: float) -> int:
        """A span of simulated time in `job`'s clock cycles (the board's unit is cycles
        already when no MHz is known)."""
        mhz = self._mhz(next(iter(job.records))) if job.records else None
        return round(us * mhz) if mhz else round(us)

    def point_name(self, point: tuple) -> str:
        return point_namer(self.points)(point)

    # -- osstest grid ---------------------------------------------------------------------------
    def grid_cell(self, job: Job, i: int) -> dict:
        """Time reached and step duration (medians), or a status word: fail (the boot
        stopped here: a DNF), blocked (an earlier milestone failed), broken (the harness or
        the infrastructure lost the boot), queued (not recorded yet)."""
        m = self.ladder[i]
        st = self.stat(job, m)
        words = []
        for k in job.keys:
            rec = job.records.get(k)
            if rec is None:
                words.append("queued")
            elif self.stamp(k, m) is None:
                reached = {s["milestone"] for s in rec.get("milestones", [])}
                first_missing = next((x for x in self.ladder if x not in reached), None)
                bad = "broken" if rec["status"] == "broken" else "fail"
                words.append(bad if first_missing == m else "blocked")
        out = {"reached": len(st.values), "seeds": len(job.keys), "words": words,
               "at_us": st.median, "step_us": self.phase(job, i).median}
        return out

    def retried(self, job: Job) -> int:
        return sum(1 for k in job.keys if self.timings.get(k, {}).get("retried"))

    # -- costs --------------------------------------------------------------------------------
    def final_values(self, job: Job, section: str) -> dict[str, float]:
        """Median over the seeds that finished ok of a final-record mapping (counters,
        cycle_breakdown, gauges)."""
        recs = [r for r in job.records.values() if r["status"] == "ok"]
        names = sorted({n for r in recs for n in r.get(section, {})})
        return {n: statistics.median(r.get(section, {}).get(n, 0) for r in recs)
                for n in names}

    def blame(self, limit: int = 10) -> list[dict]:
        rows = []
        for job in self.jobs.values():
            total = self.stat(job, self.ladder[-1]).median if self.ladder else None
            for i, m in enumerate(self.ladder):
                st = self.phase(job, i)
                if st.median is not None:
                    rows.append({"job": job.name, "phase": m,
                                 "from": self.ladder[i - 1] if i else "start",
                                 "us": st.median,
                                 "share": st.median / total if total else None})
        rows.sort(key=lambda r: (-r["us"], r["job"], r["phase"]))
        return rows[:limit]
