"""Cost tables: cycles per event, as data. Each YAML file names a reference CPU and gives,
for every event, its cycles and its source (a paper, a manual, or "estimate" with the
reasoning), following reference/costs.md. Engines charge events by name; a table that lacks
an event an engine needs is refused when the engine is built, naming file and event.

File format:
    name: p4-xeon-2005
    cpu: "Pentium 4 Xeon (NetBurst), 2.4 GHz"
    mhz: 2400
    inherits: other-table          # optional: start from another packaged table
    events:
      walk_ref: {cycles: 15, source: "D: ..."}

Overrides per run: `load_cost_table(name_or_path, overrides={"walk_ref": 20})`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .yamlfile import read_yaml, resolve

TABLE_DIR = Path(__file__).with_name("cost_tables")
DEFAULT_TABLE = "p4-xeon-2005"


class CostTableError(ValueError):
    """A cost table that cannot be used; the message names file, key and value."""


@dataclass(frozen=True)
class CostTable:
    name: str
    cpu: str
    mhz: int
    cycles: Mapping[str, int]
    sources: Mapping[str, str]
    origin: str = ""
    overrides: Mapping[str, int] = field(default_factory=dict)

    def __getitem__(self, event: str) -> int:
        try:
            return self.cycles[event]
        except KeyError:
            raise CostTableError(f"{self.origin}: cost table {self.name!r} has no event "
                                 f"{event!r}") from None

    def require(self, events, who: str) -> None:
        missing = sorted(set(events) - set(self.cycles))
        if missing:
            raise CostTableError(f"{self.origin}: cost table {self.name!r} lacks events "
                                 f"{', '.join(missing)} needed by {who}")

    def digest(self) -> str:
        """Stable hash of the numbers in force (for race manifests)."""
        blob = json.dumps({"name": self.name, "cycles": dict(sorted(self.cycles.items()))},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_cost_tables() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


def _resolve(name_or_path: str, referrer: Path | None = None) -> Path:
    return resolve(name_or_path, TABLE_DIR, "cost table", CostTableError, referrer)


def _load_raw(path: Path, seen: tuple = ()) -> tuple[dict, dict, dict]:
    doc = read_yaml(path, CostTableError)
    if not isinstance(doc, dict):
        raise CostTableError(f"{path}: top level must be a mapping")
    allowed = {"name", "cpu", "mhz", "inherits", "events", "description"}
    for key in doc:
        if key not in allowed:
            raise CostTableError(f"{path}: key {key!r} unknown (allowed: {', '.join(sorted(allowed))})")
    cycles: dict[str, int] = {}
    sources: dict[str, str] = {}
    if "inherits" in doc:
        parent = _resolve(str(doc["inherits"]), referrer=path)
        if parent in seen:
            raise CostTableError(f"{path}: inherits {doc['inherits']!r} forms a cycle")
        _, cycles, sources = _load_raw(parent, seen + (path,))
        cycles, sources = dict(cycles), dict(sources)
    events = doc.get("events") or {}
    if not isinstance(events, dict):
        raise CostTableError(f"{path}: key 'events' must be a mapping of event -> {{cycles, source}}")
    for event, spec in events.items():
        if not isinstance(spec, dict) or set(spec) - {"cycles", "source"} or "cycles" not in spec:
            raise CostTableError(f"{path}: events.{event}: value {spec!r} must be "
                                 f"{{cycles: int, source: str}}")
        c = spec["cycles"]
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise CostTableError(f"{path}: events.{event}.cycles: value {c!r} must be an "
                                 f"integer >= 0")
        src = spec.get("source")
        if not isinstance(src, str) or not src.strip():
            raise CostTableError(f"{path}: events.{event}.source: every number needs a source "
                                 f"(paper, manual, or 'estimate: reasoning')")
        cycles[event], sources[event] = c, src
    return doc, cycles, sources


def load_cost_table(name_or_path: str = DEFAULT_TABLE,
                    overrides: Mapping[str, int] | None = None) -> CostTable:
    path = _resolve(name_or_path)
    doc, cycles, sources = _load_raw(path)
    for key in ("name", "cpu", "mhz"):
        if key not in doc:
            raise CostTableError(f"{path}: key {key!r} is required")
    overrides = dict(overrides or {})
    for event, c in overrides.items():
        if event not in cycles:
            raise CostTableError(f"{path}: override of unknown event {event!r} "
                                 f"(events: {', '.join(sorted(cycles))})")
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise CostTableError(f"{path}: override {event}={c!r} must be an integer >= 0")
        cycles[event] = c
        sources[event] = "per-run override"
    return CostTable(name=str(doc["name"]), cpu=str(doc["cpu"]), mhz=int(doc["mhz"]),
                     cycles=cycles, sources=sources, origin=str(path), overrides=overrides)
