"""Dashboards of a race, in the conventions its readers know (reference/ray.md §4):

  header      race id, commit, engines, matrix, seeds, cluster, and a one-line verdict
  leaderboard per milestone, each job's simulated time (median over seeds, ±half range),
              the winner among the hypervisors, its margin, and bare hardware beside them
  grid        osstest's results grid: jobs x milestones, time reached (@t) and step (+d),
              or fail / blocked / broken / queued; retried boots counted per job
  costs       at multiuser per job: cycles by category, counters, gauges; and a
              systemd-analyze "blame" of the costliest phases
  comparison  asv-style against a baseline race, with --fail-on thresholds
  footnotes   how it ran: executor, nodes x CPUs, retries, wall vs simulated time

`build()` computes one JSON-able document; `render()` prints it with tabulate as terminal
text or GitHub markdown; `--format json` prints the document itself.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Any

from tabulate import tabulate

from .board import REFERENCE_ENGINE, Board
from .compare import FailOn, compare, failures, pricing_notes, verdict as compare_verdict
from .progress import fmt_time
from .results import Results, costs_key

FORMATS = ("terminal", "markdown", "json")
# counters shown in the cost tables (all of them are in --format json): hypercalls, traps,
# bounces, emulated writes, hidden and true faults, TLB misses and flushes, validation...
TOP_CATEGORIES = 12       # cycle categories shown one per row; the rest summed
KEY_COUNTERS = re.compile(r"hypercall|trap|bounce|emulat|^sh_|fault|tlb_miss|flush|invlpg|"
                          r"cr3|ipi|valid|unshadow|resync|ptwr|pin|^pf_|walks")


# -- the document ------------------------------------------------------------------------
def build(results: Results, baseline: Results | None = None,
          fail_on: list[FailOn] | None = None) -> dict:
    b = Board(results)
    doc: dict[str, Any] = {"race_id": b.manifest.get("race_id"), "unit_us": b.has_mhz()}
    doc["leaderboard"] = [{"point": b.point_name(p), "rows": _leader_rows(b, p)}
                          for p in b.points]
    doc["grid"] = _grid(b)
    doc["failures"] = _failures(b)
    doc["costs"] = [_costs(b, p) for p in b.points]
    doc["blame"] = b.blame()
    doc["time"] = _time_lines(b)
    doc["header"] = _header(b)
    doc["verdict"] = _verdict(b, doc)
    if baseline is not None:
        rows = compare(Board(baseline), b)
        doc["comparison"] = {"baseline": baseline.manifest.get("race_id"), "rows": rows,
                             "verdict": compare_verdict(rows),
                             "notes": pricing_notes(baseline.manifest, results.manifest),
                             "failures": failures(rows, fail_on or [])}
    doc["footnotes"] = _footnotes(b)
    return doc


def _leader_rows(b: Board, point: tuple) -> list[dict]:
    rows = []
    for m in b.ladder:
        jobs = {}
        for j in b.jobs_at(point):
            st = b.stat(j, m)
            jobs[j.label] = {"median_us": st.median, "spread": st.spread,
                             "reached": len(st.values), "seeds": st.planned,
                             "eligible": j.eligible}
        row = b.race_at(point, m)
        for k in ("winner", "runner_up", "reference"):       # within a point, labels suffice
            row[k] = b.jobs[row[k]].label if row[k] else None
        row["tie"] = [b.jobs[n].label for n in row["tie"]]
        rows.append({**row, "jobs": jobs})
    return rows


def _grid(b: Board) -> dict:
    jobs = []
    for j in b.jobs.values():
        counts = collections.Counter(r["status"] for r in j.records.values())
        jobs.append({"job": j.name, "cells": [b.grid_cell(j, i) for i in range(len(b.ladder))],
                     "boots": dict(counts), "seeds": len(j.keys), "retried": b.retried(j)})
    return {"milestones": b.ladder, "jobs": jobs}


def _failures(b: Board) -> list[dict]:
    """osstest's list of failing steps: per job, each distinct reason with its seeds and
    the milestone where the boot stopped. DNF (the guest or the audit) apart from broken
    (the harness or the infrastructure)."""
    out = []
    for j in b.jobs.values():
        seen: dict[tuple, list[int]] = {}
        for rec in j.records.values():
            if rec["status"] == "ok":
                continue
            reached = [s["milestone"] for s in rec.get("milestones", [])]
            at = next((m for m in b.ladder if m not in reached), "the end")
            seen.setdefault((rec["status"], at, rec.get("reason") or ""), []).append(
                rec["config"]["seed"])
        for (status, at, reason), seeds in seen.items():
            out.append({"job": j.name, "status": status, "at": at, "reason": reason,
                        "seeds": sorted(seeds), "of": len(j.keys)})
    return out


def _costs(b: Board, point: tuple) -> dict:
    jobs = b.jobs_at(point)
    rows = []
    for section, prefix in (("cycle_breakdown", "cycles: "), ("counters", ""),
                            ("gauges", "")):
        per_job = {j.label: b.final_values(j, section) for j in jobs}
        names = sorted({n for v in per_job.values() for n in v},
                       key=lambda n: (-max(v.get(n, 0) for v in per_job.values()), n)
                       if section == "cycle_breakdown" else n)
        for i, n in enumerate(names):
            vals = {lbl: v.get(n) for lbl, v in per_job.items()}
            if section != "cycle_breakdown" and not any(vals.values()):
                continue
            key = (i < TOP_CATEGORIES if section == "cycle_breakdown" else
                   section == "gauges" or bool(KEY_COUNTERS.search(n)))
            rows.append({"name": prefix + n, "kind": section, "values": vals, "key": key})
        if section == "cycle_breakdown" and len(names) > TOP_CATEGORIES:
            rest = {lbl: sum(v.get(n, 0) for n in names[TOP_CATEGORIES:]) or None
                    for lbl, v in per_job.items()}
            rows.append({"name": f"cycles: {len(names) - TOP_CATEGORIES} others",
                         "kind": section, "values": rest, "key": True, "sum": True})
    return {"point": b.point_name(point), "jobs": [j.label for j in jobs], "rows": rows}


def _time_lines(b: Board) -> list[str]:
    """systemd-analyze `time`, per job that finished every seed, fastest first."""
    if not b.ladder:
        return []
    lines = []
    for j in b.jobs.values():
        total = b.stat(j, b.ladder[-1]).median
        if not j.eligible or total is None:
            continue
        steps = " + ".join(f"{_num(b.phase(j, i).median, b.has_mhz())} ({m})"
                           for i, m in enumerate(b.ladder) if b.phase(j, i).median)
        lines.append((total, f"{j.name}: {b.ladder[-1]} reached after "
                             f"{_num(total, b.has_mhz())} = {steps}"))
    return [text for _, text in sorted(lines)]


def _header(b: Board) -> dict:
    m = b.manifest
    axes: dict[str, list] = {}
    for c in m.get("cells", []):
        cfg = dict(c["config"])
        if cfg.get("cost_overrides"):       # an engine entry's own prices, shown with it
            over = costs_key(cfg["costs"], cfg["cost_overrides"])
            cfg["costs"] = f"{over} ({cfg['engine']})"
        for a in ("profile", "vcpus", "memory_mib", "machine_memory_mib", "flush_filter",
                  "costs"):
            axes.setdefault(a, [])
            if cfg.get(a) not in axes[a]:
                axes[a].append(cfg.get(a))
    counts = collections.Counter(r["status"] for r in b.records.values())
    return {"race": m.get("race_id"), "spec": m.get("spec", {}).get("name"),
            "commit": m.get("package", {}).get("commit"),
            "version": m.get("package", {}).get("version"),
            "engines": list(dict.fromkeys(c["label"] for c in m.get("cells", []))),
            "matrix": axes, "seeds": m.get("seeds"), "cluster": m.get("cluster", {}),
            "status": m.get("status"), "boots": len(m.get("cells", [])),
            "counts": dict(counts), "notes": m.get("notes", [])}


def _fails_elsewhere(b: Board, label: str, point_name: str) -> str:
    """' (DNF at 2v)' when the winner at this point failed a seed at another point (its
    guest crashed or an audit failed): a design that wins on one VCPU and breaks an
    invariant on two is not a plain win. A broken boot is the harness's, not the design's."""
    where = sorted({b.point_name(j.point) for j in b.jobs.values()
                    if j.label == label and b.point_name(j.point) != point_name
                    and any(r["status"] == "dnf" for r in j.records.values())})
    return f" (DNF at {', '.join(where)})" if where else ""


def _verdict(b: Board, doc: dict) -> str:
    """The last milestone's winner per point first, then who won most milestones."""
    wins, total, parts = collections.Counter(), 0, []
    for section in doc["leaderboard"]:
        for row in section["rows"]:
            total += 1
            if row["winner"]:
                wins[row["winner"]] += 1
        last = section["rows"][-1] if section["rows"] else None
        if not last:
            continue
        where = "" if section["point"] == "all" else f" {section['point']}"
        if last["winner"]:
            margin = _margin(last, doc["unit_us"])
            margin = f", {margin} over {last['runner_up']}" if last["runner_up"] else ""
            ref = _vs_reference(last, doc["unit_us"])
            ref = f", {ref} vs {last['reference']}" if ref else ""
            parts.append(f"{last['milestone']}{where}: {last['winner']}"
                         f"{_fails_elsewhere(b, last['winner'], section['point'])}{margin}{ref}")
        elif last["tie"]:
            parts.append(f"{last['milestone']}{where}: tie of {', '.join(last['tie'])}")
        else:
            parts.append(f"{last['milestone']}{where}: no finisher")
    if wins:
        top, n = wins.most_common(1)[0]
        parts.append(f"most milestones: {top} ({n}/{total})")
    h = doc["header"]
    c = h["counts"]
    retried = sum(j["retried"] for j in doc["grid"]["jobs"])
    tail = (f"{c.get('ok', 0)} ok, {c.get('dnf', 0)} DNF, {c.get('broken', 0)} broken, "
            f"{retried} retried")
    missing = h["boots"] - sum(c.values())
    if missing:
        tail += f", {missing} not run ({h['status']})"
    return f"race {h['race']}: " + "; ".join(parts + [tail])


def _margin(row: dict, unit_us: bool) -> str:
    """The winner's lead over the runner-up: a ratio, or the gap itself when the winner's
    time is 0 (a ratio against 0 means nothing)."""
    if row["runner_up"] is None:
        return "uncontested" if row["winner"] else ""
    return _pct(row["margin"]) if row["margin"] is not None else \
        "+" + _num(row["margin_us"], unit_us)


def _vs_reference(row: dict, unit_us: bool) -> str:
    """The best time against bare hardware: a ratio, or the gap when either time is 0."""
    if row["time_us"] and row["vs_reference"] is not None:
        return _pct(row["vs_reference"])
    gap = row["vs_reference_us"]
    return "" if not gap else ("+" if gap > 0 else "-") + _num(abs(gap), unit_us)


def _pct(x: float | None) -> str:
    """A relative difference: +4.3%, +0.012% when small, x2.8 when large."""
    if x is None:
        return ""
    if x >= 1:
        return f"×{1 + x:.1f}"
    return f"{x:+.3%}" if abs(x) < 0.001 else f"{x:+.1%}"


def _footnotes(b: Board) -> list[str]:
    m, notes = b.manifest, []
    shape = m.get("cluster", {})
    walls = [t["wall_s"] for t in b.results.timings if "wall_s" in t]
    race_runs = [t for t in b.results.timings if "race_elapsed_s" in t]
    how = (f"ran on {shape.get('executor', '?')}: {shape.get('nodes', '?')} node(s), "
           f"CPUs {'+'.join(map(str, shape.get('cpus', [])))}")
    if shape.get("ray"):
        how += f", Ray {shape['ray']}"
    notes.append(how + f", Python {m.get('python')}")
    cpu = [t["cpu_s"] for t in b.results.timings if "cpu_s" in t]
    if walls:
        line = (f"wall time: {sum(walls):.1f} s of boots ({sum(walls) / len(walls):.2f} s "
                f"per boot" + (f", {sum(cpu) / len(cpu):.2f} s of CPU" if cpu else "") + ")")
        if race_runs:
            # a resumed race ran in several sessions, maybe on different shapes: each
            # session's CPU-seconds of capacity is its elapsed time x its own CPUs
            elapsed = sum(r["race_elapsed_s"] for r in race_runs)
            cpus = sum(shape.get("cpus", [1])) or 1
            capacity = sum(r["race_elapsed_s"] * r.get("cpus", cpus) for r in race_runs)
            startup = sum(r.get("startup_s", 0) for r in race_runs)
            sessions = f" over {len(race_runs)} sessions" if len(race_runs) > 1 else ""
            line += (f" in {elapsed:.1f} s elapsed{sessions}"
                     + (f" (+{startup:.1f} s to start {shape.get('executor')})" if startup >= 0.05
                        else "")
                     + f"; boots kept {sum(walls) / capacity:.0%} of "
                       + ("the CPUs" if sessions else f"{cpus} CPU(s)") + " busy")
        notes.append(line)
    lost = sum(1 for t in b.results.timings if t.get("lost"))
    retried = sum(1 for t in b.results.timings if t.get("retried"))
    if lost or retried:
        notes.append(f"infrastructure: {retried} boot(s) retried after a lost worker/node "
                     f"(a replay: boots are deterministic), {lost} lost after all retries")
    unit = "cycles / the cost table's MHz" if b.has_mhz() else "cycles (no MHz known)"
    notes.append(f"simulated time = {unit}; median over seeds ±half their range; "
                 f"† = a seed did not finish ok (not eligible to win); (n/m) = reached in "
                 f"n of m seeds")
    return notes


# -- rendering ---------------------------------------------------------------------------
def render(doc: dict, fmt: str = "terminal") -> str:
    if fmt == "json":
        return json.dumps(doc, indent=1, sort_keys=True, default=str)
    md = fmt == "markdown"
    tf = "github" if md else "simple"
    out: list[str] = []

    def head(text: str, level: int = 2) -> None:
        out.append(("\n" + "#" * (level + 1) + " " + text + "\n") if md else
                   f"\n{text}\n{('=' if level == 1 else '-') * len(text)}")

    h = doc["header"]
    head(f"Race {h['race']}", 1)
    out.append(("**" + doc["verdict"] + "**") if md else doc["verdict"])
    out.append("")
    out.append(tabulate(_header_rows(h), tablefmt=tf if md else "plain",
                        headers=("", "") if md else ()))
    unit_of = doc["unit_us"]
    for section in doc["leaderboard"]:
        title = "Leaderboard" + ("" if section["point"] == "all" else f" — {section['point']}")
        head(title + " (simulated time, median ±spread over seeds)")
        out.append(_leader_table(section, unit_of, tf, md))
    head("Grid (jobs × milestones: @time +step, or fail / blocked / broken)")
    out.append(_grid_table(doc["grid"], unit_of, tf))
    if doc["failures"]:
        head("Failures (DNF: the guest or an audit; broken: the harness or infrastructure)")
        for f in doc["failures"]:
            reason = f["reason"] if len(f["reason"]) <= 240 else f["reason"][:237] + "..."
            seeds = ", ".join(map(str, f["seeds"]))
            out.append(f"{'- ' if md else ''}{f['job']} {'DNF' if f['status'] == 'dnf' else f['status']}"
                       f" at {f['at']} (seed{'s' if len(f['seeds']) > 1 else ''} {seeds} of "
                       f"{f['of']}): {reason}")
    for section in doc["costs"]:
        title = "Cost at multiuser" + ("" if section["point"] == "all"
                                       else f" — {section['point']}")
        head(title + " (median over seeds that finished; every counter in --format json)")
        out.append(_cost_table(section, tf, md))
    head("Time and blame (costliest phases)")
    out += [f"- {line}" if md else line for line in doc["time"]]
    out.append("")
    out.append(tabulate([[i + 1, _num(r["us"], unit_of),
                          f"{r['share']:.0%}" if r["share"] else "", r["job"],
                          f"{r['from']} → {r['phase']}"] for i, r in enumerate(doc["blame"])],
                        headers=["#", "time", "of boot", "job", "phase"], tablefmt=tf))
    if "comparison" in doc:
        out += _comparison(doc["comparison"], unit_of, tf, md, head)
    head("How it ran")
    out += [f"- {n}" for n in doc["footnotes"]]
    return "\n".join(out).strip() + "\n"


def _header_rows(h: dict) -> list[list[str]]:
    shape = h["cluster"]
    matrix = ", ".join(f"{a}: {'/'.join(map(_word, v))}" for a, v in h["matrix"].items())
    counts = ", ".join(f"{v} {k}" for k, v in sorted(h["counts"].items()))
    return [["race", f"{h['race']} (spec {h['spec']}, {h['status']})"],
            ["commit", f"{h['commit']} (pae-race {h['version']})"],
            ["engines", ", ".join(h["engines"])], ["matrix", matrix],
            ["seeds", ", ".join(map(str, h["seeds"] or []))],
            ["cluster", f"{shape.get('executor')} · {shape.get('nodes')} node(s) × "
                        f"{'+'.join(map(str, shape.get('cpus', [])))} CPUs"],
            ["boots", f"{h['boots']} planned: {counts or 'none recorded'}"]] + \
        [["skipped", n] for n in h["notes"]]


def _word(v: Any) -> str:
    return "default" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _num(us: float | None, unit_us: bool) -> str:
    if us is None:
        return "-"
    return fmt_time(us).replace(" ", "") if unit_us else f"{us / 1e6:.3g}Mc"


def _col(label: str, md: bool) -> str:
    return label if md else label.replace("(", "\n(", 1)


def _leader_table(section: dict, unit, tf: str, md: bool) -> str:
    labels = list(section["rows"][0]["jobs"]) if section["rows"] else []
    rows = []
    for r in section["rows"]:
        cells = []
        for lbl in labels:
            j = r["jobs"][lbl]
            if not j["reached"]:
                cells.append("DNF" if j["seeds"] else "-")
                continue
            s = _num(j["median_us"], unit)
            if j["spread"]:                  # seeds that all agree need no ±
                s += f" ±{j['spread']:.1%}"
            if j["reached"] < j["seeds"]:
                s += f" ({j['reached']}/{j['seeds']})"
            elif not j["eligible"]:
                s += " †"
            cells.append(s)
        win = r["winner"] or (f"tie ({len(r['tie'])})" if r["tie"] else "no finisher")
        margin, vs = _margin(r, unit), _vs_reference(r, unit)
        rows.append([r["milestone"], *cells, win, margin, vs])
    headers = ["milestone", *[_col(lbl, md) for lbl in labels], "winner",
               "margin" if md else "margin\n(vs 2nd)", f"vs {REFERENCE_ENGINE}" if md else f"winner\nvs {REFERENCE_ENGINE}"]
    return tabulate(rows, headers=headers, tablefmt=tf, disable_numparse=True)


def _grid_table(grid: dict, unit, tf: str) -> str:
    rows = []
    for j in grid["jobs"]:
        cells = []
        for c in j["cells"]:
            if c["reached"] == c["seeds"]:
                cells.append(f"@{_num(c['at_us'], unit)} +{_num(c['step_us'], unit)}")
                continue
            words = collections.Counter(c["words"])
            text = " ".join(w if n == c["seeds"] else f"{w} {n}/{c['seeds']}"
                            for w, n in words.items())
            if c["reached"]:
                text = f"@{_num(c['at_us'], unit)} ({c['reached']}/{c['seeds']}) " + text
            cells.append(text)
        boots = ", ".join(f"{k} {v}" for k, v in sorted(j["boots"].items())) or "queued"
        if j["retried"]:
            boots += f", retried {j['retried']}"
        rows.append([j["job"], *cells, boots])
    return tabulate(rows, headers=["job", *grid["milestones"], "boots"], tablefmt=tf,
                    disable_numparse=True)


def _fmt_count(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "cycle_breakdown":
        return f"{v / 1e6:,.2f}M"
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"


def _cost_table(section: dict, tf: str, md: bool) -> str:
    rows = [[r["name"], *[_fmt_count(r["values"].get(lbl), r["kind"]) for lbl in
                          section["jobs"]]] for r in section["rows"] if r["key"]]
    return tabulate(rows, headers=["", *[_col(lbl, md) for lbl in section["jobs"]]],
                    tablefmt=tf, disable_numparse=True, colalign=("left",) + ("right",) *
                    len(section["jobs"]))


def _comparison(cmp: dict, unit, tf: str, md: bool, head) -> list[str]:
    out = []
    head(f"Compared with {cmp['baseline']}")
    out.append(cmp["verdict"])
    out += cmp.get("notes", [])
    rows = [[r["mark"], _num(r["before"], unit), _num(r["after"], unit),
             ("" if r["ratio"] is None else ("" if r["significant"] or r["mark"] == "" else "~")
              + f"{r['ratio']:.3f}"), r["job"], r["milestone"], r["note"]]
            for r in cmp["rows"] if r["mark"] or r["note"]]
    if rows:
        out.append(tabulate(rows, headers=["change", "before", "after",
                                           "ratio", "job", "milestone", "note"],
                            tablefmt=tf, disable_numparse=True))
    else:
        out.append(f"({len(cmp['rows'])} job milestones compared: none changed by 1% or more)")
    for f in cmp["failures"]:
        out.append(f"FAIL: {f}")
    return out


def write_step_summary(markdown: str) -> None:
    """Append the markdown dashboard to GitHub's job summary when running there."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
