"""Builders shared by the guestkit tests: a native engine, a booted `tiny` guest, a guest
that runs one hand-written init program, and an independent software walk of the page
tables the guest built (read straight from machine memory, not through any CPU model).

The software walk follows SDM Vol. 3A §4.4.2 (PAE: PDPTE -> PDE -> PTE, or a PS=1 PDE)
and reference/pae.md §2-3. It is the oracle the hardware CPU and the guest's own
bookkeeping (`MM.pages`) are both checked against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from engines.api import DomainSpec, load_cost_table
from engines.hw import CPU
from engines.native import NativeEngine
from guestkit import Guest, load_profile

ADDR = ((1 << 36) - 1) & ~0xFFF
P, RW, US, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63


def native_engine(vcpus: int = 2, memory_mib: int = 64, costs: str = "p4-xeon-2005",
                  **overrides: int) -> NativeEngine:
    return NativeEngine(DomainSpec(vcpus=vcpus, memory_mib=memory_mib),
                        load_cost_table(costs, overrides or None))


def boot(profile: str = "tiny", vcpus: int = 2, seed: int = 0, memory_mib: int = 64,
         sabotage: Iterable[str] = (), events: list | None = None,
         after_step: Callable | None = None) -> tuple[NativeEngine, Guest]:
    """Boot `profile` to quiescence on bare hardware. `events` collects (event, vcpu,
    data); `after_step(engine, guest, vcpu)` runs after every scheduler step."""
    engine = native_engine(vcpus, memory_mib)
    emit = None if events is None else (lambda e, v, d: events.append((e, v, dict(d))))
    guest = Guest(engine, load_profile(profile), seed, emit=emit, sabotage=frozenset(sabotage))
    if after_step is not None:
        step = guest.kernel.step

        def checked_step(v):
            step(v)
            after_step(engine, guest, v)
        guest.kernel.step = checked_step
    guest.boot()
    return engine, guest


def run_init(make_program: Callable[[Guest], object], vcpus: int = 1,
             sabotage: Iterable[str] = (), engine=None) -> tuple[NativeEngine, Guest]:
    """Boot the `tiny` kernel, then run `make_program(guest)` as init (instead of the SysV
    boot) until every task sleeps or is gone; on bare hardware unless `engine` is given."""
    engine = engine if engine is not None else native_engine(vcpus)
    guest = Guest(engine, load_profile("tiny"), 0, sabotage=frozenset(sabotage))
    k = guest.kernel
    k.start_kernel()
    init = k.new_task("init", make_program(guest), None, None)
    k.init_task = init
    k.rq.enqueue(init, 0, engine.clock(0))
    guest.run(lambda: False)
    return engine, guest


def heap_sleeper(guest: Guest):
    """An init that execs, grows its heap by a page, writes it and sleeps."""
    def init():
        yield ("exec", guest.workload.image("cmd", "/bin/sleeper"))
        yield ("brk", 1)
        yield ("touch", "heap", 0, 1, "w")
        yield ("sleep",)
    return init()


def task_by_place(guest: Guest, place: str):
    return next(t for t in guest.kernel.tasks.values() if t.place == place)


def live_mms(guest: Guest) -> dict:
    """mm id -> (mm, a task using it), for every address space a live task owns."""
    out = {}
    for task in guest.kernel.tasks.values():
        if task.mm is not None and not task.mm.dead:
            out.setdefault(task.mm.id, (task.mm, task))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Walk:
    """What a software walk of one linear address found: the entries it read, the
    combined rights, and the physical address (None when some entry is not present)."""
    pdpte: int
    pde: int
    pte: int | None         # None for a 2 MiB page (PS=1 PDE)
    paddr: int | None

    @property
    def leaf(self) -> int:
        return self.pde if self.pte is None else self.pte

    @property
    def writable(self) -> bool:
        return bool(self.pde & RW and self.leaf & RW)

    @property
    def user(self) -> bool:
        return bool(self.pde & US and self.leaf & US)


def soft_walk(memory, cr3: int, va: int) -> Walk:
    """Walk `va` under the PDPT at `cr3` reading machine memory directly (no TLB)."""
    pdpte = memory.read_u64((cr3 & 0xFFFFFFE0) + 8 * ((va >> 30) & 3))
    if not pdpte & P:
        return Walk(pdpte, 0, None, None)
    pde = memory.read_u64((pdpte & ADDR) + 8 * ((va >> 21) & 511))
    if not pde & P:
        return Walk(pdpte, pde, 0, None)
    if pde & PS:
        return Walk(pdpte, pde, None, (pde & ADDR & ~0x1FFFFF) | (va & 0x1FFFFF))
    pte = memory.read_u64((pde & ADDR) + 8 * ((va >> 12) & 511))
    if not pte & P:
        return Walk(pdpte, pde, pte, None)
    return Walk(pdpte, pde, pte, (pte & ADDR) | (va & 0xFFF))


def fresh_cpu(engine, cr3: int, nxe: bool = True) -> CPU:
    """A CPU with an empty TLB on the engine's memory, PAE paging on, CR0.WP and EFER.NXE
    as the guest kernel sets them, that has loaded `cr3`."""
    cpu = CPU(engine.memory)
    cpu.efer_nxe = nxe
    cpu.cr0_wp = True
    cpu.load_cr3(cr3)
    return cpu
