"""Milestone ladders: an ordered list of milestones, each defined by a guest event and an
optional match on the event's data. The default ladder follows reference/linux-guest.md §3.1:
kernel_entry, paging_on, direct_map, smp_online, init_exec, single_user, multiuser.

    name: default
    milestones:
      - {name: init_exec, event: exec, match: {path: /sbin/init}, doc: "..."}

A user-supplied ladder is validated like a race spec: unknown keys, duplicate names, events
the guest never emits, match keys the event does not carry and match values the guest never
emits (`DATA_VALUES`) are each refused with one line naming file, line, key, value and the
choices, every mistake at once, in line order (`LadderError.lines`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .yamlcheck import Checker, compose


LADDER_DIR = Path(__file__).with_name("ladders")
# the guest events a milestone may be defined by (guestkit emits these), each with the data
# keys it carries, in the order guestkit passes them; a ladder's `match` may name only these
GUEST_EVENTS: dict[str, tuple[str, ...]] = {
    "kernel_entry": (), "paging_on": (), "direct_map": (), "allocators": (),
    "smp_online": ("vcpus",), "kthreads_started": ("count",), "exec": ("path", "place"),
    "rc_done": ("runlevel",), "getty_waiting": ("count", "of", "all")}
RUNLEVELS = ("S", "2")              # guestkit's init runs rcS, then rc2 (guestkit/workload.py)


def _int_from(low: int, high: int | None = None) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, int) and not isinstance(v, bool) and low <= v
                      and (high is None or v <= high))


# the values each datum can take (a match on any other value never happens, and the boot
# would end as a DNF): predicate and the choices an error names
DATA_VALUES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("smp_online", "vcpus"): (_int_from(1, 32), "integers 1..32, the boot's VCPU count"),
    ("kthreads_started", "count"): (_int_from(0), "integers >= 0, the profile's kthreads"),
    ("exec", "path"): (lambda v: isinstance(v, str) and v.startswith("/"),
                       "an absolute path, e.g. /sbin/init"),
    ("exec", "place"): (lambda v: isinstance(v, str) and bool(v),
                        "a task's place, e.g. rcS or getty0"),
    ("rc_done", "runlevel"): (lambda v: isinstance(v, str) and v in RUNLEVELS,
                              ", ".join(map(repr, RUNLEVELS)) + "; quote a digit"),
    ("getty_waiting", "count"): (_int_from(1), "integers >= 1"),
    ("getty_waiting", "of"): (_int_from(1), "integers >= 1, the profile's gettys"),
    ("getty_waiting", "all"): (lambda v: isinstance(v, bool), "true, false"),
}
TOP_KEYS = ("name", "description", "milestones")
MILESTONE_KEYS = ("name", "event", "match", "doc")


class LadderError(ValueError):
    """A ladder that cannot be used; `.lines` holds one message per mistake."""

    def __init__(self, lines: str | list[str]):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


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
    """The ladder, or LadderError with one line per mistake, in line order."""
    path = _resolve(name_or_path)
    doc, lines = compose(path.read_text(), str(path), LadderError)
    ck = Checker(str(path), lines)
    if not isinstance(doc, dict):
        raise LadderError(f"{path}:1: the top level must be a mapping with keys "
                          f"{', '.join(TOP_KEYS)}")
    ck.unknown_keys((), doc, TOP_KEYS)
    items = doc.get("milestones")
    if not isinstance(items, list) or not items:
        ck.error(("milestones",), items, "must be a non-empty list of milestones")
        items = []
    out: list[Milestone] = []
    seen: dict[str, int] = {}                       # milestone name -> its line
    for i, item in enumerate(items):
        milestone = _milestone(ck, ("milestones", i), item, seen)
        if milestone is not None:
            out.append(milestone)
    if ck.errors:
        raise LadderError(ck.sorted())
    return Ladder(str(doc.get("name", path.stem)), tuple(out), str(path))


def _milestone(ck: Checker, p: tuple, item: Any, seen: dict[str, int]) -> Milestone | None:
    if not isinstance(item, dict):
        ck.error(p, item, f"must be a mapping with keys {', '.join(MILESTONE_KEYS)}")
        return None
    before = len(ck.errors)
    ck.unknown_keys(p, item, MILESTONE_KEYS)
    name, event = item.get("name"), item.get("event")
    if not isinstance(name, str) or not name:
        ck.error(p + ("name",), name, "must be a non-empty string")
    elif name in seen:
        ck.error(p + ("name",), name, f"is used twice (first at line {seen[name]})")
    else:
        seen[name] = ck.line(p + ("name",))
    if ck.choice(p + ("event",), event, list(GUEST_EVENTS)):
        match = item.get("match", {})
        if isinstance(match, dict):
            _match(ck, p + ("match",), event, match)
        else:
            ck.error(p + ("match",), match, "must be a mapping of the event's data keys "
                                            f"({', '.join(GUEST_EVENTS[event]) or 'none'})")
    if len(ck.errors) > before:
        return None
    return Milestone(name, event, dict(item.get("match", {})), str(item.get("doc", "")))


def _match(ck: Checker, p: tuple, event: str, match: dict) -> None:
    """Each key one the event carries, each value one the guest can emit."""
    carried = GUEST_EVENTS[event]
    for key, value in match.items():
        if key not in carried:
            allowed = (f"allowed keys: {', '.join(carried)}" if carried
                       else "it carries no data to match")
            ck.error(p + (key,), value, f"is not allowed: event {event!r} carries no key "
                                        f"{key!r} ({allowed})")
            continue
        ok, choices = DATA_VALUES[event, key]
        if not ok(value):
            ck.error(p + (key,), value, f"can never match event {event!r} (choices: "
                                        f"{choices})")
