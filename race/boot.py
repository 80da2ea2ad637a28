"""One boot of the race: build a machine and an engine, a guest from a profile and a
milestone tracker, run the guest, and stream what happens. Plain, deterministic Python (no
Ray): the runner calls `run_boot` in a Ray task or in-process and gets the same events.

Events (dicts, JSON-ready, no wall-clock time):
    {"type": "milestone", "cell", "milestone", "index", "vcpu", "cycles", "counters"}
    {"type": "result", "cell", "status": "ok"|"dnf", "reason", "milestones", "cycles",
     "counters", "cycle_breakdown", "gauges", "readback"}
A guest panic, a domain crashed by the hypervisor, a failed audit (engine invariants or
the guest's data ledger) or a milestone not reached is a "dnf" result with its reason. An
exception escaping `run_boot` is a harness bug.

Audits run at every milestone and at the end: the engine's `audit()` and the guest's
ledger audit, both outside the race's accounting (`Engine.unaccounted`).

Events travel in bursts, for the transport's sake (each event sent through Ray costs about
a millisecond; benchmarks/bench_race.py): a milestone reached less than `HOLD_CYCLES`
simulated cycles (by the fastest VCPU's clock) after the first milestone not yet yielded is
held and yielded with it, and every event yielded with another right behind it carries
`"more": True` (the runner packs such runs into one message and drops the key). Holding is
decided by simulated time only, so the bursts are the same on every run, which Ray's replay
of a retried stream needs; a held milestone waits at most `HOLD_CYCLES` of the guest's time.
The audit still runs the moment each milestone is reached, and the records do not change.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterator

from engines.api import (AuditFailure, CostTableError, DomainSpec, EngineError, GuestCrash,
                         list_cost_tables, load_cost_table)
from guestkit import Guest, GuestPanic, list_profiles, load_profile
from guestkit.errors import ProfileError
from milestones import LadderError, Tracker, list_ladders, load_ladder

__all__ = ["BootCell", "ENGINES", "HOLD_CYCLES", "engine_class", "list_cost_tables", "list_ladders",
           "list_profiles", "run_boot"]

# milestones reached within this many simulated cycles of the first one not yet yielded go
# out together: 10 ms of the guest's time at 2.4 GHz, about a quarter second of wall time at
# the engines' simulation speed here (80-105 M simulated cycles per second for native, PV and
# shadow; 270 M on the VT-x cost table, whose traps cost more cycles), about one redraw of the
# live display (0.25 s, race/progress.py), so holding costs the display little it could
# show. Each message through Ray costs 1.5-2 ms of CPU over Ray's processes (measured,
# benchmarks/bench_race.py): a `tiny` boot (multiuser at 13-22 M cycles) now sends one
# message, all its events with the result, where 12 M cycles gave two. sarge's milestones are 10-200 M cycles
# apart after init_exec, so they still travel one by one.
HOLD_CYCLES = 24_000_000

# engine name -> (module, class); an engine joins the race the day its module lands
_ENGINE_CLASSES = {"native": ("engines.native", "NativeEngine"),
                   "paravirt": ("engines.paravirt", "PVEngine"),
                   "shadow": ("engines.shadow", "ShadowEngine")}


def _available() -> dict[str, Any]:
    found = {}
    for name, (modname, clsname) in _ENGINE_CLASSES.items():
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        if hasattr(module, clsname):
            found[name] = module
    return found


ENGINES: dict[str, Any] = _available()


def engine_class(name: str):
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} not available (choices: {', '.join(ENGINES)})")
    return getattr(ENGINES[name], _ENGINE_CLASSES[name][1])


@dataclass(frozen=True)
class BootCell:
    """One cell of a race matrix: everything that determines a boot."""
    engine: str
    options: tuple[tuple[str, Any], ...] = ()
    profile: str = "sarge"
    vcpus: int = 2
    memory_mib: int = 512
    machine_memory_mib: int | None = None
    flush_filter: bool = False
    seed: int = 0
    costs: str = "p4-xeon-2005"
    cost_overrides: tuple[tuple[str, int], ...] = ()
    ladder: str = "default"

    def key(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        over = ",".join(f"{k}={v}" for k, v in self.cost_overrides)
        parts = [self.engine + (f"[{opts}]" if opts else ""), self.profile,
                 f"v{self.vcpus}", f"m{self.memory_mib}"]
        if self.machine_memory_mib is not None:
            parts.append(f"mm{self.machine_memory_mib}")
        if self.flush_filter:
            parts.append("ff")
        parts.append(self.costs + (f"[{over}]" if over else ""))
        if self.ladder != "default":
            parts.append(f"ladder={self.ladder}")
        parts.append(f"s{self.seed}")
        return "/".join(parts)


def _options(cell: BootCell) -> dict[str, Any]:
    module = ENGINES[cell.engine]
    opts = dict(getattr(module, "DEFAULTS", {}))
    allowed = getattr(module, "OPTIONS", {})
    for k, v in cell.options:
        if k not in allowed:
            raise ValueError(f"engine {cell.engine!r} has no option {k!r} "
                             f"(options: {', '.join(allowed) or 'none'})")
        opts[k] = v
    return opts


def build(cell: BootCell):
    """The engine, profile and ladder of a cell (bad names raise ValueError subclasses)."""
    cls = engine_class(cell.engine)
    costs = load_cost_table(cell.costs, dict(cell.cost_overrides))
    profile = load_profile(cell.profile)
    ladder = load_ladder(cell.ladder)
    spec = DomainSpec(vcpus=cell.vcpus, memory_mib=cell.memory_mib,
                      machine_memory_mib=cell.machine_memory_mib,
                      flush_filter=cell.flush_filter, seed=cell.seed, options=_options(cell))
    return cls(spec, costs), profile, ladder


def _stamp_event(key: str, stamp) -> dict:
    return {"type": "milestone", "cell": key, "milestone": stamp.milestone,
            "index": stamp.index, "vcpu": stamp.vcpu, "cycles": stamp.cycles,
            "counters": dict(stamp.counters)}


def run_boot(cell: BootCell, sabotage: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Boot one cell; yield milestone events as they are reached, then the result."""
    key = cell.key()
    engine, profile, ladder = build(cell)
    guest: Guest | None = None
    pending: list = []

    def snapshot() -> dict:
        out = engine.counters()
        if guest is not None:
            out.update({f"guest.{k}": v for k, v in sorted(guest.kernel.stats.items())})
        return out

    tracker = Tracker(ladder, engine.clock, snapshot, on_stamp=pending.append)
    guest = Guest(engine, profile, cell.seed, emit=tracker, sabotage=sabotage)
    stamps: list[dict] = []
    held: list[dict] = []                  # stamped (and audited), not yet yielded
    deadline = 0
    clock, vcpus = engine.clock, range(engine.spec.vcpus)

    def due() -> bool:
        return bool(held) and max(clock(v) for v in vcpus) >= deadline

    reason = None
    try:
        guest.start()
        while True:
            for stamp in pending:
                _audit(engine, guest, f"at {stamp.milestone}")
                stamps.append(_stamp_event(key, stamp))
                if not held:
                    deadline = stamp.cycles + HOLD_CYCLES
                held.append(stamps[-1])
            pending.clear()
            if tracker.done or guest.quiescent():
                break
            if due():
                yield from _release(held, last=True)
            guest.run(lambda: bool(pending) or due())
        if tracker.violations:
            reason = "milestone order: " + tracker.violations[0]
        elif not tracker.done:
            reason = f"stopped before {tracker.next_milestone}: every task asleep or gone"
        else:
            guest.run(due)                              # let the boot settle (splitting a
            if held:                                    # run changes nothing: Kernel.run)
                yield from _release(held, last=not guest.quiescent())
            guest.run(lambda: False)
            _audit(engine, guest, "at the end")
    except (GuestPanic, GuestCrash, AuditFailure) as e:
        reason = f"{type(e).__name__}: {e}"
    yield from _release(held, last=False)
    yield _result(key, engine, guest, stamps, reason)


def _release(held: list[dict], last: bool) -> Iterator[dict]:
    """Yield the held events (copies: the stamps stay as recorded), each but the last marked
    `more`, and the last too unless `last` (another event follows at once); empty `held`."""
    for i, ev in enumerate(held):
        yield {**ev, "more": True} if i < len(held) - 1 or not last else ev
    held.clear()


def _audit(engine, guest: Guest, when: str) -> None:
    problems = [f"engine: {p}" for p in engine.audit()]
    problems += [f"ledger: {p}" for p in guest.audit()]
    if problems:
        raise AuditFailure([f"{when}: {p}" for p in problems])


def _result(key: str, engine, guest: Guest, stamps: list[dict], reason: str | None) -> dict:
    k = guest.kernel
    counters = engine.counters()
    counters.update({f"guest.{n}": v for n, v in sorted(k.stats.items())})
    gauges = {"pt_pages_live": k.stats["pt_pages_allocated"] - k.stats["pt_pages_freed"],
              "guest_pages_peak": k.alloc.peak_used if k.alloc else 0,
              "tasks_live": len(k.tasks)}
    gauges.update(engine.gauges())
    return {"type": "result", "cell": key, "status": "dnf" if reason else "ok",
            "reason": reason, "milestones": stamps,
            "cycles": max(engine.clock(v) for v in range(engine.spec.vcpus)),
            "counters": counters, "cycle_breakdown": engine.cycle_breakdown(),
            "gauges": gauges,
            "readback": {"digest": guest.readback_digest(), "reads": k.readback_count}}


# errors a bad cell gives (for the CLI / spec validation)
CELL_ERRORS = (ValueError, CostTableError, ProfileError, LadderError, EngineError)
