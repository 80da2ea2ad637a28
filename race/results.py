"""Race results that cannot be lost: `<out>/<race-id>/`

    manifest.json   what ran: the spec (text and digest), the cells in plan order, seeds,
                    package version and git commit, cost-table digests, Ray and Python
                    versions, cluster shape, status (running | interrupted | complete)
    records.jsonl   one JSON line per boot: only simulated facts, so a serial and a Ray run
                    of one spec give byte-identical files. Appended and flushed (fsync) as
                    each boot ends; rewritten in plan order when the race finishes.
    timings.jsonl   how each boot ran: wall seconds, node, pid, retried, lost (footnotes)

`--resume` reopens the newest race of the same spec under `<out>` and skips the cells it
has finished (ok or dnf); broken boots (harness bug, lost worker) run again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST, RECORDS, TIMINGS = "manifest.json", "records.jsonl", "timings.jsonl"
FINISHED = ("ok", "dnf")


class ResultsError(ValueError):
    """A results folder that cannot be read or resumed."""


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def cell_config(cell: Any) -> dict:
    cfg = dataclasses.asdict(cell)
    cfg["options"] = {k: v for k, v in cell.options}
    cfg["cost_overrides"] = {k: v for k, v in cell.cost_overrides}
    return cfg


def costs_key(costs: str, overrides: dict) -> str:
    return costs + "".join(f"+{k}={v}" for k, v in sorted(overrides.items()))


def make_record(cell: Any, label: str, final: dict) -> dict:
    """The record of one boot: the final result of run_boot minus how it ran."""
    rec = {k: v for k, v in final.items() if k not in ("type", "run")}
    rec.update(cell=cell.key(), label=label, config=cell_config(cell))
    return rec


@dataclass
class ResultStore:
    dir: Path
    manifest: dict
    records: dict[str, dict] = field(default_factory=dict)   # key -> latest record

    @property
    def race_id(self) -> str:
        return self.manifest["race_id"]

    @property
    def done(self) -> dict[str, dict]:
        return {k: r for k, r in self.records.items() if r.get("status") in FINISHED}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, race, shape: dict, catalog=None) -> "ResultStore":
        root = Path(root)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        race_id, n = f"{race.name}-{stamp}", 2
        while (root / race_id).exists():
            race_id, n = f"{race.name}-{stamp}-{n}", n + 1
        d = root / race_id
        d.mkdir(parents=True)
        store = cls(d, manifest_for(race, race_id, shape, catalog))
        store.write_manifest()
        (d / RECORDS).touch()
        _point_latest(root, race_id)
        return store

    @property
    def left(self) -> int:
        """Cells of this race with no finished record (ok or DNF) yet."""
        done = self.done
        return sum(1 for c in self.manifest["cells"] if c["key"] not in done)

    @classmethod
    def find(cls, root: str | Path, race) -> "ResultStore":
        """The newest race of this spec under `root`, opened as it is (nothing written)."""
        candidates = []
        for m in Path(root).glob(f"*/{MANIFEST}"):
            man = _read_json(m)
            if man.get("spec", {}).get("digest") == race.digest:
                candidates.append((man.get("created", ""), m.parent))
        if not candidates:
            raise ResultsError(f"{root}: no earlier race of spec {race.name!r} "
                               f"(digest {race.digest}) to resume")
        d = max(candidates)[1]
        return cls(d, _read_json(d / MANIFEST), _read_journal(d / RECORDS))

    @classmethod
    def resume(cls, root: str | Path, race, shape: dict) -> "ResultStore":
        store = cls.find(root, race)
        store.manifest.setdefault("resumed", []).append(
            {"shape": shape, "skipped": len(store.done)})
        store.manifest["cluster"] = shape
        store.manifest["status"] = "running"
        store.write_manifest()
        return store

    def past_walls(self, races: int = 20) -> dict[str, float]:
        """Wall seconds of each cell's latest run in this folder's own journal and in the
        `races` most recent sibling race folders (same results root): how long a boot took
        before, for scheduling only (a timing is never a result)."""
        dirs = sorted((d for d in self.dir.parent.iterdir()
                       if d != self.dir and (d / TIMINGS).is_file()),
                      key=lambda d: (d / TIMINGS).stat().st_mtime)[-races:] + [self.dir]
        walls: dict[str, float] = {}
        for d in dirs:
            for t in _read_lines(d / TIMINGS):
                if "wall_s" in t and not t.get("lost"):
                    walls[t["cell"]] = t["wall_s"]
        return walls

    # -- writing ---------------------------------------------------------------------------
    def append(self, record: dict, timing: dict) -> None:
        """The record reaches the disk (fsync) before the race moves on; the timing is a
        footnote and only flushed."""
        with open(self.dir / RECORDS, "a", encoding="utf-8") as f:
            f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.log_timing(timing)
        self.records[record["cell"]] = record

    def log_timing(self, timing: dict) -> None:
        with open(self.dir / TIMINGS, "a", encoding="utf-8") as f:
            f.write(dumps(timing) + "\n")

    def finish(self, status: str) -> None:
        """Rewrite records.jsonl in plan order (one line per cell, the latest), atomically."""
        order = [c["key"] for c in self.manifest["cells"]]
        lines = [dumps(self.records[k]) + "\n" for k in order if k in self.records]
        lines += [dumps(r) + "\n" for k, r in self.records.items() if k not in set(order)]
        _atomic_write(self.dir / RECORDS, "".join(lines))
        self.manifest["status"] = status
        counts: dict[str, int] = {}
        for r in self.records.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self.manifest["counts"] = dict(sorted(counts.items()))
        self.write_manifest()

    def write_manifest(self) -> None:
        _atomic_write(self.dir / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True)
                      + "\n")


def manifest_for(race, race_id: str, shape: dict, catalog=None) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    try:
        pkg_version = version("pae-race")
    except PackageNotFoundError:
        pkg_version = "unknown"
    tables = {}
    for cell in race.cells:
        overrides = dict(cell.cost_overrides)
        key = costs_key(cell.costs, overrides)
        if key not in tables and catalog is not None:
            t = catalog.load_cost_table(cell.costs, overrides)
            tables[key] = {"name": t.name, "cpu": t.cpu, "mhz": t.mhz, "digest": t.digest(),
                           "overrides": overrides}
    return {
        "race_id": race_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": {"name": race.name, "path": race.path, "digest": race.digest,
                 "description": race.description, "text": race.text},
        "notes": race.notes, "seeds": race.seeds,
        "cells": [{"key": c.key(), "label": race.labels[c.key()], "config": cell_config(c)}
                  for c in race.cells],
        "package": {"name": "pae-race", "version": pkg_version, "commit": git_commit()},
        "cost_tables": tables,
        "python": platform.python_version(),
        "cluster": shape, "status": "running",
    }


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- reading -----------------------------------------------------------------------------
@dataclass
class Results:
    dir: Path
    manifest: dict
    records: list[dict]
    timings: list[dict]


def load_results(path: str | Path) -> Results:
    """A race folder, or a results root (then its newest race)."""
    p = Path(path)
    if not (p / MANIFEST).is_file():
        latest = p / "latest"
        if (latest / MANIFEST).is_file():
            p = latest
        else:
            races = sorted((_read_json(m).get("created", ""), m.parent)
                           for m in p.glob(f"*/{MANIFEST}"))
            if not races:
                raise ResultsError(f"{path}: not a race folder (no {MANIFEST}) and holds no "
                                   f"race folders")
            p = races[-1][1]
    manifest = _read_json(p / MANIFEST)
    order = {c["key"]: i for i, c in enumerate(manifest.get("cells", []))}
    records = sorted(_read_journal(p / RECORDS).values(),
                     key=lambda r: order.get(r["cell"], len(order)))
    timings = list(_read_lines(p / TIMINGS))
    return Results(p, manifest, records, timings)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None


def _read_lines(path: Path):
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except ValueError:       # a line cut short by a crash: the boot runs again
            continue


def _read_journal(path: Path) -> dict[str, dict]:
    records: dict[str, dict] = {}
    for rec in _read_lines(path):
        records[rec["cell"]] = rec
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        _atomic_write(path, "".join(dumps(r) + "\n" for r in records.values()))
    return records


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _point_latest(root: Path, race_id: str) -> None:
    link = root / "latest"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(race_id)
    except OSError:
        pass


# -- naming jobs -------------------------------------------------------------------------
AXIS_WORDS = {"profile": lambda v: str(v), "vcpus": lambda v: f"{v}v",
              "memory_mib": lambda v: f"{v}M",
              "machine_memory_mib": lambda v: "mm-default" if v is None else f"mm{v}M",
              "flush_filter": lambda v: "ff" if v else "no-ff",
              "costs": lambda v: Path(str(v)).stem, "ladder": lambda v: Path(str(v)).stem}


def job_namer(cells: list[dict]):
    """A function (config, label) -> job name: the entry label plus the axes that vary among
    that label's cells (seed excluded: a job is a configuration, seeds repeat it).
    `cells` are manifest cells: {"key", "label", "config"}."""
    by_label: dict[str, list[dict]] = {}
    for c in cells:
        by_label.setdefault(c["label"], []).append(c["config"])
    varying = {label: [a for a in AXIS_WORDS if len({repr(c.get(a)) for c in cfgs}) > 1]
               for label, cfgs in by_label.items()}

    def name(config: dict, label: str) -> str:
        return " ".join([label] + [AXIS_WORDS[a](config.get(a))
                                   for a in varying.get(label, [])])
    return name
