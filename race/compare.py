"""Comparison with a baseline race, as asv compares benchmarks (reference/ray.md §4).

Jobs are matched by configuration (engine, options and matrix axes, seed excluded), seeds
by number. A change is *significant* when every shared seed moves the same way (the
simulation is exact, so a lone seed's change is real too); asv's marks: `+` slower, `-`
faster, blank unchanged, `~` before the ratio when not significant, `x` incomparable (a job
new in this race, a milestone reached only now or never), `!` reached on the baseline but
not now (REGR.), as is every milestone a baseline job reached when this race lacks the job
or recorded none of its boots. A milestone reached at 0 on the baseline (a PV guest's
paging_on) and later now has no ratio but is a slow-down beyond any threshold. `--fail-on
multiuser:+5%` turns a significant slow-down beyond 5% (or a REGR.) into exit status 1.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from .board import Board, Job

MARK_FACTOR = 0.01       # ratios within 1% are shown unmarked


@dataclass(frozen=True)
class FailOn:
    milestone: str       # or "*" for every milestone
    threshold: float     # 0.05 for +5%

    @classmethod
    def parse(cls, text: str) -> "FailOn":
        m = re.fullmatch(r"\s*([\w*.-]+)\s*:\s*\+?(\d+(?:\.\d+)?)\s*%\s*", text)
        if not m:
            raise ValueError(f"--fail-on: value {text!r} is not MILESTONE:+N% "
                             f"(e.g. multiuser:+5%, or *:+5% for every milestone)")
        return cls(m.group(1), float(m.group(2)) / 100)


def _by_seed(board: Board, job: Job, milestone: str) -> dict[int, float | None]:
    out = {}
    for k, rec in job.records.items():
        out[rec["config"]["seed"]] = board.stamp(k, milestone)
    return out


def compare(base: Board, new: Board) -> list[dict]:
    """One row per job and milestone of either race. Jobs are matched by configuration (a
    job's name depends on what else is in its race); a baseline job this race lacks is
    compared as reaching nothing, so `--fail-on` sees it; a job new in this race is shown
    as new."""
    ladder = list(dict.fromkeys(new.ladder + base.ladder))
    base_of = {j.ident: j for j in base.jobs.values()}
    rows = []
    for job in new.jobs.values():
        bjob = base_of.pop(job.ident, None)
        rows += [_row(base, new, bjob, job, m) for m in ladder]
    for bjob in base_of.values():
        rows += [_missing_row(base, bjob, m) for m in ladder]
    return rows


def pricing_notes(base_manifest: dict, new_manifest: dict) -> list[str]:
    """A line per cost table both races used under one name but with different contents
    (a retuned table between two commits): their times are priced differently, so a ratio
    mixes the engines' work with the prices. Overrides change a job's configuration, so
    such jobs are not matched at all (shown missing and new)."""
    base, new = base_manifest.get("cost_tables", {}), new_manifest.get("cost_tables", {})
    return [f"note: cost table {k} differs (digest {base[k].get('digest')} on the baseline, "
            f"{new[k].get('digest')} now): times are priced differently"
            for k in sorted(set(base) & set(new))
            if base[k].get("digest") != new[k].get("digest")]


def _missing_row(base: Board, bjob: Job, m: str, why: str = "job not in this race") -> dict:
    """A baseline job with no boot in this race: each milestone it reached is lost."""
    before = [v for v in _by_seed(base, bjob, m).values() if v is not None]
    row = {"job": bjob.name, "milestone": m, "before": None, "after": None, "ratio": None,
           "significant": False, "mark": "", "note": f"never reached; {why}"}
    if before:
        row.update(before=statistics.median(before), mark="!", note=f"REGR. missing ({why})")
    return row


def _row(base: Board, new: Board, bjob: Job | None, job: Job, m: str) -> dict:
    row = {"job": job.name, "milestone": m, "before": None, "after": None, "ratio": None,
           "significant": False, "mark": "x", "note": ""}
    after = _by_seed(new, job, m)
    a_vals = [v for v in after.values() if v is not None]
    row["after"] = statistics.median(a_vals) if a_vals else None
    if bjob is None:
        row["note"] = "new job (not in the baseline)"
        return row
    if not after:
        why = "no boot recorded in this race"
        return {**_missing_row(base, bjob, m, why), "job": job.name}
    before = _by_seed(base, bjob, m)
    b_vals = [v for v in before.values() if v is not None]
    row["before"] = statistics.median(b_vals) if b_vals else None
    if not b_vals and not a_vals:
        row["note"] = "like baseline (never reached)" if before else "never reached"
        return row
    lost = {s for s, v in after.items() if v is None and before.get(s) is not None}
    if lost or (b_vals and not a_vals):      # (or the seeds differ and none reached it)
        row.update(mark="!", note="REGR." if not a_vals else
                   f"REGR. flaky (reached in {len(a_vals)}/{len(after)} seeds)")
        return row
    if not b_vals:
        row["note"] = "reached now, not on the baseline"
        return row
    row["ratio"] = row["after"] / row["before"] if row["before"] else None
    pairs = [(before[s], after[s]) for s in after
             if s in before and before[s] is not None and after[s] is not None]
    signs = {(a > b) - (a < b) for b, a in pairs}
    row["significant"] = bool(pairs) and len(signs) == 1 and 0 not in signs
    if len(a_vals) < len(after):
        row["note"] = f"like baseline (reached in {len(a_vals)}/{len(after)} seeds)"
    row["mark"] = _mark(_slowdown(row), row["significant"])
    if row["before"] == 0 and row["after"]:
        row["note"] = "at 0 on the baseline, later now" + (f"; {row['note']}" if row["note"]
                                                          else "")
    return row


def _mark(r: float | None, significant: bool) -> str:
    if r is None or abs(r - 1) < MARK_FACTOR:
        return ""
    if significant:
        return "+" if r > 1 else "-"
    return "~"


def _slowdown(row: dict) -> float | None:
    """after / before; infinite when a milestone reached at time 0 (a PV guest's
    paging_on) is reached later now: no ratio, but a slow-down all the same."""
    if row["ratio"] is None and row["before"] == 0 and row["after"]:
        return math.inf
    return row["ratio"]


def verdict(rows: list[dict]) -> str:
    worse = any(r["mark"] in ("+", "!") for r in rows)
    better = any(r["mark"] == "-" for r in rows)
    if worse:
        return "SOME MILESTONES HAVE CHANGED SIGNIFICANTLY. PERFORMANCE DECREASED."
    if better:
        return "SOME MILESTONES HAVE CHANGED SIGNIFICANTLY. PERFORMANCE INCREASED."
    return "MILESTONES NOT SIGNIFICANTLY CHANGED."


def failures(rows: list[dict], rules: list[FailOn]) -> list[str]:
    out = []
    for rule in rules:
        for r in rows:
            if rule.milestone not in ("*", r["milestone"]):
                continue
            if r["mark"] == "!":
                out.append(f"{r['job']} {r['milestone']}: {r['note']} vs baseline "
                           f"(--fail-on {rule.milestone}:+{rule.threshold:.0%})")
            elif r["significant"] and (_slowdown(r) or 0) - 1 > rule.threshold:
                how = (f"{r['ratio'] - 1:+.1%} slower" if r["ratio"] else r["note"])
                out.append(f"{r['job']} {r['milestone']}: {how} "
                           f"(--fail-on {rule.milestone}:+{rule.threshold:.1%})")
    return out
