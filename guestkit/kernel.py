"""The guest kernel model: a 2.6-era PAE Linux as far as the MMU is concerned.

Boot (kernel entry, boot paging, paging_init's direct map, allocators, SMP bring-up with
zap_low_mappings, kernel threads), processes (fork/exec/exit/wait, brk/mmap/munmap/mprotect,
module loading into vmalloc space), context switches that load CR3 only when the mm changes,
lazy TLB for idle VCPUs and kernel threads, TLB shootdowns by IPI to the VCPUs in an mm's
cpu_vm_mask, timer ticks at HZ, and a data ledger: every word a process writes is recorded
and every read is checked, so a wrong translation anywhere fails the boot with the address
and the expected and found values. Follows reference/linux-guest.md; structure after
arch/i386 and mm/ of 2.6.x. MMU operations go through `self.ops` (guestkit.pvops).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from engines.api import A_FETCH, A_USER, A_WRITE, ABI, Engine, GuestPageFault

from . import boot as bootcode
from .errors import GuestPanic
from .layout import (A, D, FIXADDR_TOP_NATIVE, G, KERNEL_PDE, LOWMEM_LIMIT, P, PAGE_OFFSET, RW,
                     TASK_SIZE, VMALLOC_OFFSET, VMALLOC_RESERVE, PageAllocator, kva)
from .mm import MM, MemoryManager
from .pvops import NativeMMU
from .sched import BLOCKED, RunQueues, Task
from .syscalls import MoreSyscallsMixin, SyscallsMixin

KERNEL_IMAGE_PFN = 0x100        # the kernel is loaded at 1 MiB
KERNEL_IMAGE_PAGES = 768        # 3 MiB of text, data and bss
MAX_FAULT_RETRIES = 6


def make_ops(engine: Engine):
    boot = engine.boot_info()
    if boot.abi is ABI.XEN_PV:
        from .pvops_xen import XenMMU          # the Xen-PV backend of the seam
        return XenMMU(engine, boot)
    return NativeMMU(engine, boot)


class Kernel(SyscallsMixin, MoreSyscallsMixin):
    """One guest kernel on one engine. `emit(event, vcpu, data)` reports guest events."""

    def __init__(self, engine: Engine, profile, seed: int,
                 emit: Callable[[str, int, dict], None] | None = None,
                 sabotage: frozenset[str] = frozenset()):
        self.engine = engine
        self.boot = engine.boot_info()
        self.profile = profile
        self.seed = seed
        self._emit = emit or (lambda event, vcpu, data: None)
        self.sabotage = set(sabotage)
        self.ops = make_ops(engine)
        self.vcpus = self.boot.vcpus
        self.stats: Counter[str] = Counter()
        self.features = {"pge": bool(profile.kernel["pge"]),
                         "nxe": bool(profile.kernel["nx"])}
        hv = self.boot.hypervisor_virt_start
        self.fixaddr_top = (hv - (2 << 20)) if hv else FIXADDR_TOP_NATIVE
        self.lowmem_pages = min(self.boot.nr_pages, LOWMEM_LIMIT >> 12,
                                ((self.fixaddr_top - PAGE_OFFSET - VMALLOC_RESERVE) >> 12))
        self.lowmem_pages &= ~511
        self.vmalloc_start = PAGE_OFFSET + (self.lowmem_pages << 12) + VMALLOC_OFFSET
        self.vmalloc_next = self.vmalloc_start
        self.vmalloc_pt: dict[int, int] = {}       # kernel PMD slot -> L1 pfn (init_mm)
        self.module_pages: list[int] = []          # VAs of loaded module pages
        self.swapper_pa = 0
        self.kernel_pmd = -1
        self.swapper_pmds: list[int] = []
        self.identity_entries = 0
        self.cache_pfns: set[int] = set()
        self._boot_next = KERNEL_IMAGE_PFN + KERNEL_IMAGE_PAGES
        self.alloc: PageAllocator | None = None
        self.mmm: MemoryManager | None = None
        self.rq = RunQueues(self.vcpus)
        self.active_mm: list[MM | None] = [None] * self.vcpus   # None: init_mm (swapper)
        self.lazy = [False] * self.vcpus
        self.tasks: dict[int, Task] = {}
        self._next_pid = 1
        self._next_mm = 1
        self.tick_cycles = engine.costs.mhz * 1_000_000 // profile.kernel["hz"]
        self._last_tick = [0] * self.vcpus
        # what processes read back, as an order-independent sum of per-read hashes (the
        # interleaving of VCPUs differs between engines; what each place reads must not)
        self.readback = 0
        self.readback_count = 0
        self.init_task: Task | None = None
        self.ledger_checks = 0
        self.counted: dict[str, int] = {}

    # -- events -----------------------------------------------------------------------------
    def emit(self, event: str, vcpu: int, **data) -> None:
        self._emit(event, vcpu, data)

    # -- boot -------------------------------------------------------------------------------
    def boot_alloc(self) -> int:
        """alloc_bootmem_low_pages: the next frame after the kernel image."""
        if self.alloc is not None:
            return self.alloc.alloc()
        pfn = self._boot_next
        self._boot_next += 1
        return pfn

    def phys_clear(self, pfn: int) -> None:
        """Zero a frame with paging off (physical stores of the boot code)."""
        self.engine.clear_page(0, pfn << 12)

    def start_kernel(self) -> None:
        """From kernel entry to kernel threads (milestones up to smp_online)."""
        self.rq.online[0] = True
        self.emit("kernel_entry", 0)
        if hasattr(self.ops, "paging_init"):
            self.ops.paging_init(self)                   # the backend adopts Xen's tables
        else:
            if not self.boot.paging_on_at_entry:
                bootcode.head_s(self)
            bootcode.paging_init(self)
        self.emit("direct_map", 0)
        first_free = max(self._boot_next, getattr(self.ops, "first_free_pfn", 0))
        self.alloc = PageAllocator(first_free, self.lowmem_pages)
        self.mmm = MemoryManager(self)
        self.mmm.nx = (1 << 63) if self.features["nxe"] else 0
        self.mmm.fork_copies_all = self.profile.kernel["fork_copy"] == "all"
        self.mmm.zero_pfn = self.alloc.alloc()
        self.engine.clear_page(0, kva(self.mmm.zero_pfn))
        self.emit("allocators", 0)
        for ap in range(1, self.vcpus):
            self.ops.start_secondary(0, ap, self.swapper_pa, self.features)
            self.rq.online[ap] = True
            self._last_tick[ap] = self.engine.clock(ap) // self.tick_cycles
        if self.vcpus > 1 and self.identity_entries:
            bootcode.zap_low_mappings(self)
        self.emit("smp_online", 0, vcpus=self.vcpus)
        for i in range(self.profile.kernel["kthreads"]):
            self.engine.charge(0, "fork_work")
            self.stats["kthreads"] += 1
        self.emit("kthreads_started", 0, count=self.profile.kernel["kthreads"])

    # -- context switches and the mm of each VCPU -------------------------------------------
    def switch_mm(self, v: int, nxt: MM | None) -> None:
        prev = self.active_mm[v]
        if prev is nxt:
            return
        self.ops.write_cr3(v, self.swapper_pa if nxt is None else nxt.pgd_pa)
        self.active_mm[v] = nxt
        if nxt is not None:
            nxt.active_on.add(v)
            nxt.loaded = True
        if prev is not None:
            prev.active_on.discard(v)
            self.mmdrop(v, prev)
        self.stats["cr3_switches"] += 1

    def leave_mm(self, v: int) -> None:
        """A lazy VCPU gives up a borrowed mm: back to swapper_pg_dir."""
        self.switch_mm(v, None)
        self.lazy[v] = False
        self.stats["leave_mm"] += 1

    def mmdrop(self, v: int, mm: MM) -> None:
        if mm.dead and mm.users == 0 and not mm.active_on and not mm.freed:
            self.mmm.pgd_free(v, mm)

    def context_switch(self, v: int, task: Task) -> None:
        self.engine.charge(v, "context_switch")
        self.stats["context_switches"] += 1
        if task.mm is None:
            self.lazy[v] = True                  # kernel thread: borrow active_mm
        else:
            self.switch_mm(v, task.mm)
            self.lazy[v] = False

    # -- TLB shootdowns ---------------------------------------------------------------------
    def _flush_ipi(self, t: int, mm: MM | None, va: int | None) -> None:
        """smp_invalidate_interrupt on VCPU t."""
        self.stats["flush_ipis_received"] += 1
        if mm is not None and self.active_mm[t] is not mm:
            return
        if self.lazy[t] and self.ops.lazy_tlb:
            self.leave_mm(t)
        elif va is None:
            self.ops.flush_tlb(t)
        else:
            self.ops.invlpg(t, va)

    def flush_tlb_mm(self, v: int, mm: MM) -> None:
        if self.active_mm[v] is mm:
            self.ops.flush_tlb(v)
        others = sorted(mm.active_on - {v})
        if others:
            self.ops.flush_tlb_others(v, others, mm, None, self._flush_ipi)
        self.stats["flush_tlb_mm"] += 1

    def flush_tlb_page(self, v: int, mm: MM, va: int) -> None:
        if self.active_mm[v] is mm:
            self.ops.invlpg(v, va)
        others = sorted(mm.active_on - {v})
        if others:
            self.ops.flush_tlb_others(v, others, mm, va, self._flush_ipi)
        self.stats["flush_tlb_page"] += 1

    def _flush_all_ipi(self, t: int, mm, va) -> None:
        self.ops.flush_tlb_global(t)
        if self.lazy[t] and self.ops.lazy_tlb:
            self.leave_mm(t)

    def flush_tlb_all(self, v: int) -> None:
        self.ops.flush_tlb_global(v)
        others = [t for t in range(self.vcpus) if t != v and self.rq.online[t]]
        if others:
            self.ops.flush_tlb_others(v, others, None, None, self._flush_all_ipi)
        self.stats["flush_tlb_all"] += 1

    # -- faults -----------------------------------------------------------------------------
    def page_fault(self, v: int, va: int, error_code: int) -> bool:
        """do_page_fault; False means SIGSEGV for the current task."""
        self.engine.charge(v, "pf_handler")
        self.stats["page_faults"] += 1
        if va >= TASK_SIZE:
            self.kernel_fault(v, va, error_code)
            return True
        task = self.rq.current[v]
        if task is None or task.mm is None:
            raise GuestPanic(f"oops: user-space fault at va {va:#010x} (error code "
                             f"{error_code:#x}) with no user mm on vcpu {v}")
        return self.mmm.user_fault(v, task.mm, va, error_code)

    def kernel_fault(self, v: int, va: int, error_code: int) -> None:
        """vmalloc_fault: copy the missing kernel PMD entry from init_mm (a no-op with a
        shared kernel PMD); anything else is an oops."""
        if not (self.vmalloc_start <= va < self.fixaddr_top) or error_code & 0x1:
            raise GuestPanic(f"oops: kernel fault at va {va:#010x}, error code "
                             f"{error_code:#x}, vcpu {v}")
        mm = self.active_mm[v]
        slot = (va >> 21) & 511
        src = self.engine.read(v, kva(self.kernel_pmd) + 8 * slot)
        if not src & P:
            raise GuestPanic(f"oops: vmalloc fault at va {va:#010x}: init_mm has no PMD "
                             f"entry for it")
        if mm is None or not mm.private_kpmd:
            raise GuestPanic(f"oops: vmalloc fault at va {va:#010x} on a shared kernel PMD "
                             f"that maps it (stale TLB?)")
        dst_p = kva(mm.pmds[3]) + 8 * slot
        if self.engine.read(v, dst_p) & P:
            self.ops.invlpg(v, va)
            self.stats["faults_spurious"] += 1
            return
        self.ops.set_pmd(v, mm, dst_p, src)
        self.stats["vmalloc_faults"] += 1

    def _access(self, v: int, va: int, access: int, value: int | None) -> int:
        for _ in range(MAX_FAULT_RETRIES):
            try:
                if value is None:
                    return self.engine.read(v, va, access)
                self.engine.write(v, va, value, access)
                return value
            except GuestPageFault as f:
                if not self.page_fault(v, f.va, f.error_code):
                    raise Segv(f.va, f.error_code) from None
        raise GuestPanic(f"fault loop: access {access:#x} to va {va:#010x} on vcpu {v} still "
                         f"faults after {MAX_FAULT_RETRIES} fixes")

    def uread(self, v: int, va: int, fetch: bool = False) -> int:
        return self._access(v, va, A_USER | (A_FETCH if fetch else 0), None)

    def uwrite(self, v: int, va: int, value: int) -> None:
        self._access(v, va, A_USER | A_WRITE, value)

    def kread(self, v: int, va: int) -> int:
        return self._access(v, va, 0, None)

    def kwrite(self, v: int, va: int, value: int) -> None:
        self._access(v, va, A_WRITE, value)

    # -- vmalloc (module loading) -----------------------------------------------------------
    def vmalloc(self, v: int, pages: int) -> int:
        """Map `pages` new frames into init_mm's vmalloc space (kernel PMD of swapper)."""
        ops, e = self.ops, self.engine
        start = self.vmalloc_next
        self.vmalloc_next += (pages + 1) << 12            # one guard page
        if self.vmalloc_next > self.fixaddr_top - (8 << 20):
            raise GuestPanic("vmalloc space exhausted")
        glob = G if self.features["pge"] and ops.global_pages else 0
        for i in range(pages):
            va = start + (i << 12)
            slot = (va >> 21) & 511
            pt = self.vmalloc_pt.get(slot)
            if pt is None:
                pt = self.mmm.new_pt_page(v)
                ops.alloc_pt(v, None, pt, 1)
                ops.set_pmd(v, None, kva(self.kernel_pmd) + 8 * slot,
                            ops.make_entry(pt, KERNEL_PDE))
                self.vmalloc_pt[slot] = pt
            pfn = self.alloc.alloc()
            e.clear_page(v, kva(pfn))
            ops.set_pte(v, None, va, kva(pt) + ((va >> 9) & 0xFF8),
                        ops.make_entry(pfn, P | RW | A | D | glob | self.mmm.nx))
            self.module_pages.append(va)
        self.stats["vmalloc_pages"] += pages
        return start

    # -- timer ------------------------------------------------------------------------------
    def tick(self, v: int) -> None:
        """Timer interrupts due on `v`; every `kthread_every_ticks` ticks a kernel thread
        (events/N, kblockd, pdflush...) runs briefly on the borrowed mm: two context
        switches and no CR3 load (lazy TLB)."""
        now = self.engine.clock(v) // self.tick_cycles
        last = self._last_tick[v]
        n = now - last
        if n > 0:
            self._last_tick[v] = now
            self.engine.charge(v, "timer_tick", n)
            self.stats["timer_ticks"] += n
            every = self.profile.kernel["kthread_every_ticks"]
            runs = now // every - last // every if every else 0
            if runs:
                self.engine.charge(v, "context_switch", 2 * runs)
                self.engine.charge_cycles(v, runs * self.profile.kernel["kthread_work"], "kthread")
                self.stats["kthread_runs"] += runs

    # -- the scheduler loop -----------------------------------------------------------------
    def new_task(self, place: str, program, parent: Task | None, mm: MM | None) -> Task:
        t = Task(pid=self._next_pid, place=place, program=program, mm=mm, parent=parent)
        self._next_pid += 1
        self.tasks[t.pid] = t
        if parent is not None:
            parent.children.append(t)
        return t

    def new_mm(self) -> MM:
        mm = MM(id=self._next_mm)
        self._next_mm += 1
        return mm

    def run(self, until: Callable[[], bool]) -> None:
        """Run tasks until `until()` holds."""
        clock = self.engine.clock
        while not until():
            v = self.rq.pick_vcpu(clock)
            if v is None:
                raise GuestPanic("nothing runnable and the boot is not finished "
                                 "(every task blocked)")
            self.step(v)
            self.tick(v)

    def step(self, v: int) -> None:
        rq = self.rq
        task = rq.current[v]
        if task is None:
            task = rq.queues[v].popleft()
            if task.ready_at > self.engine.clock(v):
                self.engine.advance_to(v, task.ready_at)
                self.tick(v)
            self.context_switch(v, task)
            rq.current[v] = task
            task.vcpu = v
            task.slice_start = self.engine.clock(v)
        if task.retry is not None:
            step, task.retry = task.retry, None
        else:
            try:
                step = task.program.send(task.send)
            except StopIteration:
                step = ("exit", 0)
            task.send = None
        self.do_step(v, task, step)
        if rq.current[v] is task and rq.queues[v] and \
                self.engine.clock(v) - task.slice_start > self.profile.kernel["timeslice_ticks"] * self.tick_cycles:
            rq.current[v] = None
            rq.enqueue(task, v, self.engine.clock(v))
            self.stats["preemptions"] += 1

    def block(self, v: int, task: Task) -> None:
        task.state = BLOCKED
        self.rq.current[v] = None
        if task.mm is not None:
            self.lazy[v] = True                  # the idle task borrows the mm

    def wake(self, task: Task, at: int, waker: int) -> None:
        """try_to_wake_up with 2.6's affine wake-up: the task moves to the waker's VCPU
        when that VCPU is no busier than the one it last ran on (the VCPU it leaves keeps
        its mm loaded lazily, and later flushes of that mm reach it by IPI)."""
        if task.state != BLOCKED:
            return
        rq = self.rq
        target = waker if rq.load(waker) <= rq.load(task.vcpu) else task.vcpu
        if target != task.vcpu:
            self.stats["affine_wakeups"] += 1
        rq.enqueue(task, target, at)


class Segv(Exception):
    """SIGSEGV for the current task."""

    def __init__(self, va: int, error_code: int):
        super().__init__(f"SIGSEGV at va {va:#010x}, error code {error_code:#x}")
        self.va = va
        self.error_code = error_code
