"""The milestone tracker: feeds on guest events and stamps each milestone, in ladder order,
with the simulated cycles of the VCPU that reached it and a counters snapshot.

Milestones are reached in order: an event matching a later milestone before an earlier one
is reached is recorded as an ordering violation (the boot is then reported as failed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from .ladder import Ladder


@dataclass(frozen=True)
class Stamp:
    milestone: str
    index: int
    vcpu: int
    cycles: int
    counters: Mapping[str, int]


class Tracker:
    def __init__(self, ladder: Ladder, clock: Callable[[int], int],
                 snapshot: Callable[[], Mapping[str, int]],
                 on_stamp: Callable[[Stamp], None] | None = None):
        self.ladder = ladder
        self.clock = clock
        self.snapshot = snapshot
        self.on_stamp = on_stamp or (lambda stamp: None)
        self.stamps: list[Stamp] = []
        self.violations: list[str] = []

    @property
    def done(self) -> bool:
        return len(self.stamps) == len(self.ladder.milestones)

    @property
    def next_milestone(self) -> str | None:
        return None if self.done else self.ladder.milestones[len(self.stamps)].name

    def __call__(self, event: str, vcpu: int, data: Mapping) -> None:
        if self.done:
            return
        nxt = self.ladder.milestones[len(self.stamps)]
        if nxt.matches(event, data):
            stamp = Stamp(nxt.name, len(self.stamps), vcpu, self.clock(vcpu),
                          dict(self.snapshot()))
            self.stamps.append(stamp)
            self.on_stamp(stamp)
            return
        for later in self.ladder.milestones[len(self.stamps) + 1:]:
            if later.matches(event, data):
                self.violations.append(f"milestone {later.name} reached before "
                                       f"{nxt.name} (event {event} {dict(data)})")
