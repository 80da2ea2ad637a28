"""Milestone ladders: an ordered list of milestones, each defined by a guest event and an
optional match on the event's data. The default ladder follows reference/linux-guest.md §3.1:
kernel_entry, paging_on, direct_map, smp_online, init_exec, single_user, multiuser.

    name: default
    milestones:
      - {name: init_exec, event: exec, match: {path: /sbin/init}, doc: "..."}

A user-supplied ladder is validated: unknown keys, duplicate names, events the guest never
emits, and malformed matches are refused with one line naming file, key, value and choices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

LADDER_DIR = Path(__file__).with_name("ladders")
# the guest events a milestone may be defined by (guestkit emits these), each with the data
# keys it carries, in the order guestkit passes them; a ladder's `match` may name only these
GUEST_EVENTS: dict[str, tuple[str, ...]] = {
    "kernel_entry": (), "paging_on": (), "direct_map": (), "allocators": (),
    "smp_online": ("vcpus",), "kthreads_started": ("count",), "exec": ("path", "place"),
    "rc_done": ("runlevel",), "getty_waiting": ("count", "of", "all")}


class LadderError(ValueError):
    """A ladder that cannot be used."""


@dataclass(frozen=True)
class Milestone:
    name: str
    event: str
    match: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""

    def matches(self, event: str, data: Mapping[str, Any]) -> bool:
        return event == self.event and all(data.get(k) == v for k, v in self.match.items())


@dataclass(frozen=True)
class Ladder:
    name: str
    milestones: tuple[Milestone, ...]
    origin: str = ""

    def names(self) -> list[str]:
        return [m.name for m in self.milestones]


def list_ladders() -> list[str]:
    return sorted(p.stem for p in LADDER_DIR.glob("*.yaml"))


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    packaged = LADDER_DIR / f"{name_or_path}.yaml"
    if packaged.exists():
        return packaged
    raise LadderError(f"ladder {name_or_path!r}: no such file or packaged ladder "
                      f"(choices: {', '.join(list_ladders())})")


def load_ladder(name_or_path: str = "default") -> Ladder:
    path = _resolve(name_or_path)
    try:
        doc = yaml.load(path.read_text(), Loader=_SAFE_LOADER)   # libyaml's when present
    except yaml.MarkedYAMLError as e:
        line = f" line {e.problem_mark.line + 1}:" if e.problem_mark else ""
        raise LadderError(f"{path}:{line} not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise LadderError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise LadderError(f"{path}: the top level must be a mapping")
    for key in doc:
        if key not in ("name", "milestones", "description"):
            raise LadderError(f"{path}: key {key!r} unknown (allowed: name, milestones, "
                              f"description)")
    items = doc.get("milestones")
    if not isinstance(items, list) or not items:
        raise LadderError(f"{path}: key 'milestones': value {items!r} must be a non-empty list")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: milestones[{i}]"
        if not isinstance(item, dict):
            raise LadderError(f"{where}: value {item!r} must be a mapping")
        extra = set(item) - {"name", "event", "match", "doc"}
        if extra:
            raise LadderError(f"{where}: key {sorted(extra)[0]!r} unknown (allowed: name, "
                              f"event, match, doc)")
        name, event = item.get("name"), item.get("event")
        if not isinstance(name, str) or not name:
            raise LadderError(f"{where}: key 'name': value {name!r} must be a non-empty string")
        if name in seen:
            raise LadderError(f"{where}: key 'name': value {name!r} is used twice")
        if event not in GUEST_EVENTS:
            raise LadderError(f"{where}: key 'event': value {event!r} not allowed "
                              f"(allowed: {', '.join(GUEST_EVENTS)})")
        match = item.get("match", {})
        if not isinstance(match, dict):
            raise LadderError(f"{where}: key 'match': value {match!r} must be a mapping")
        carried = GUEST_EVENTS[event]
        for k, v in match.items():
            if k not in carried:
                allowed = (f"allowed keys: {', '.join(carried)}" if carried
                           else "it carries no data to match")
                raise LadderError(f"{where}: key 'match.{k}': value {v!r} not allowed for "
                                  f"event {event!r} ({allowed})")
        seen.add(name)
        out.append(Milestone(name, event, dict(match), str(item.get("doc", ""))))
    return Ladder(str(doc.get("name", path.stem)), tuple(out), str(path))
