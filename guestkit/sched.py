"""Tasks and the scheduler of the guest kernel.

Processes are plain generators (as in SimPy) that yield system-call steps; the kernel runs
one step at a time. Every VCPU has a run queue; the VCPU with the smallest cycle clock that
has something to run goes next (ties: lowest VCPU number), so VCPUs interleave at step
granularity in simulated time. A VCPU with nothing to run idles and takes work from the
busiest run queue (idle balancing); a task woken at time t never runs on a VCPU before t
(the VCPU idles forward). New tasks go to the least-loaded VCPU (fork balancing). A task
that has run a whole time slice is preempted at the next tick if others are waiting.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generator

RUNNABLE, BLOCKED, ZOMBIE, DEAD = "runnable", "blocked", "zombie", "dead"


@dataclass(eq=False)
class Task:
    pid: int
    place: str                     # where in the workload it comes from (stable id)
    program: Generator | None
    mm: Any = None                 # guestkit.mm.MM, or None for a kernel thread
    parent: "Task | None" = None
    children: list = field(default_factory=list)
    state: str = RUNNABLE
    vcpu: int = 0
    ready_at: int = 0
    exit_code: int = 0
    send: Any = None               # value the next step receives
    retry: Any = None              # a step to run again before resuming the program
    wake_pending: bool = False     # a wake-up that arrived before the sleep
    waiting: bool = False
    slice_start: int = 0
    image: Any = None              # guestkit.workload.Image after exec
    writes: dict = field(default_factory=dict)   # va -> write generation (ledger tokens)


class RunQueues:
    def __init__(self, vcpus: int):
        self.n = vcpus
        self.current: list[Task | None] = [None] * vcpus
        self.queues: list[deque[Task]] = [deque() for _ in range(vcpus)]
        self.online = [False] * vcpus

    def load(self, v: int) -> int:
        return len(self.queues[v]) + (self.current[v] is not None)

    def least_loaded(self) -> int:
        return min((v for v in range(self.n) if self.online[v]), key=lambda v: (self.load(v), v))

    def enqueue(self, task: Task, v: int, ready_at: int) -> None:
        task.state = RUNNABLE
        task.vcpu = v
        task.ready_at = ready_at
        self.queues[v].append(task)

    def balance(self) -> None:
        """Idle balancing: an idle VCPU with an empty queue pulls from the busiest queue."""
        for v in range(self.n):
            if not self.online[v] or self.current[v] is not None or self.queues[v]:
                continue
            donor = max((d for d in range(self.n) if d != v and len(self.queues[d]) > 0
                         and self.load(d) > 1), key=lambda d: (len(self.queues[d]), -d),
                        default=None)
            if donor is not None:
                task = self.queues[donor].pop()
                task.vcpu = v
                self.queues[v].append(task)

    def pick_vcpu(self, clock) -> int | None:
        self.balance()
        best = None
        for v in range(self.n):
            if self.online[v] and (self.current[v] is not None or self.queues[v]):
                c = clock(v)
                if self.current[v] is None:
                    c = max(c, self.queues[v][0].ready_at)
                if best is None or c < best[0]:
                    best = (c, v)
        return None if best is None else best[1]
