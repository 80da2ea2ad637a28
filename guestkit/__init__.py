"""The guest kernel model: a 2.6-era PAE Linux (boot, memory management, processes,
scheduler, SMP bring-up, workloads) whose MMU operations go through a paravirt-ops seam with
a native and a Xen-PV backend. Sees only `engines.api`.

    guest = Guest(engine, load_profile("tiny"), seed=0, emit=callback)
    guest.boot()               # runs to quiescence (all gettys waiting), emitting events
    guest.audit()              # data-ledger audit: list of problems
"""
from __future__ import annotations

from typing import Callable

from engines.api import Engine

from .audit import audit_ledger
from .errors import GuestError, GuestPanic, ProfileError
from .kernel import Kernel
from .profile import Profile, list_profiles, load_profile
from .workload import Workload

__all__ = ["Guest", "GuestError", "GuestPanic", "Profile", "ProfileError", "list_profiles",
           "load_profile"]


class Guest:
    def __init__(self, engine: Engine, profile: Profile, seed: int = 0,
                 emit: Callable[[str, int, dict], None] | None = None,
                 sabotage: frozenset[str] = frozenset()):
        self.kernel = Kernel(engine, profile, seed, emit, sabotage)
        self.workload = Workload(profile, seed)

    def boot(self) -> None:
        """The whole boot, to quiescence."""
        self.start()
        self.run(self.quiescent)

    def start(self) -> None:
        """Kernel entry to kernel threads, then init queued on VCPU 0."""
        k = self.kernel
        k.start_kernel()
        program = self.workload.init() if k.profile.workload == "boot" \
            else self.workload.lmbench_init()
        init = k.new_task("init", program, None, None)
        k.init_task = init
        k.rq.enqueue(init, 0, k.engine.clock(0))

    def run(self, until: Callable[[], bool]) -> None:
        """Run tasks until `until()` or quiescence (every task asleep or gone)."""
        self.kernel.run(until=lambda: until() or self.quiescent())

    def quiescent(self) -> bool:
        rq = self.kernel.rq
        return not any(rq.current) and not any(rq.queues)

    def audit(self) -> list[str]:
        return audit_ledger(self.kernel)

    def readback_digest(self) -> str:
        return f"{self.kernel.readback:032x}"
