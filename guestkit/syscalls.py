"""The system calls and steps a task's program yields, executed by the kernel.

Steps are tuples: ("exec", image), ("fork", program, place) -> child pid, ("wait",) -> exit
code or -10 (ECHILD), ("exit", code), ("touch", region, first, count, mode) with mode r/w/x,
("brk", pages), ("mmap", pages, write, exec) -> va, ("munmap", va, pages),
("mprotect", va, pages, write), ("syscall", n), ("work", cycles), ("emit", event, data),
("sleep",), ("wake", pid), ("modprobe", pages), ("kuse", count),
("protfault", va) (a write expected to raise SIGSEGV; the handler re-enables writing).
"""
from __future__ import annotations

from .errors import GuestPanic
from .mm import VMA
from .sched import ZOMBIE, DEAD
from .tokens import READBACK_MASK, data_token, file_token, read_hash

DATA_WORD = 8          # the ledger word of each page; word 0 of a file page is its token


class SyscallsMixin:
    def do_step(self, v, task, step):
        handler = getattr(self, "sys_" + step[0], None)
        if handler is None:
            raise GuestPanic(f"task {task.place}: unknown step {step[0]!r}")
        handler(v, task, *step[1:])

    # -- process lifetime -------------------------------------------------------------------
    def sys_fork(self, v, task, program, place):
        e = self.engine
        e.charge(v, "syscall")
        e.charge(v, "fork_work")
        mm = None
        if task.mm is not None:
            mm = self.new_mm()
            self.mmm.pgd_alloc(v, mm)
            self.mmm.dup_mmap(v, task.mm, mm)
        child = self.new_task(place, program, task, mm)
        child.image = task.image
        child.writes = dict(task.writes)
        self.rq.enqueue(child, self.rq.least_loaded(), e.clock(v))
        self.stats["forks"] += 1
        task.send = child.pid

    def sys_exec(self, v, task, image):
        e = self.engine
        e.charge(v, "syscall")
        e.charge(v, "exec_work")
        old = task.mm
        mm = self.new_mm()
        self.mmm.pgd_alloc(v, mm)
        mm.vmas, mm.brk_vma = image.vmas()
        self.ops.activate_mm(v, mm)
        self.switch_mm(v, mm)
        self.lazy[v] = False
        task.mm = mm
        task.image = image
        task.writes = {}
        if old is not None:
            self._mmput(v, old)
        self.stats["execs"] += 1
        self.emit("exec", v, path=image.path, place=task.place)

    def _mmput(self, v, mm):
        mm.users -= 1
        if mm.users == 0:
            if self.ops.exit_switches_to_init_mm and self.active_mm[v] is mm:
                self.leave_mm(v)
            self.mmm.exit_mmap(v, mm)
            self.mmdrop(v, mm)

    def sys_exit(self, v, task, code=0):
        e = self.engine
        e.charge(v, "syscall")
        e.charge(v, "exit_work")
        if task.mm is not None:
            mm, task.mm = task.mm, None
            self._mmput(v, mm)
        task.exit_code = code
        task.state = ZOMBIE
        task.program = None
        self.rq.current[v] = None
        self.lazy[v] = True
        init = self.init_task
        for child in task.children:
            if child.state == ZOMBIE:
                child.state = DEAD
                self.tasks.pop(child.pid, None)
                continue
            child.parent = init
            init.children.append(child)
        task.children = []
        parent = task.parent
        if parent is None:
            task.state = DEAD                    # a kernel helper: reaped by the kernel
            del self.tasks[task.pid]
        elif parent.waiting:
            parent.waiting = False
            self.wake(parent, e.clock(v), v)
        self.stats["exits"] += 1

    def sys_wait(self, v, task):
        self.engine.charge(v, "syscall")
        zombie = next((c for c in task.children if c.state == ZOMBIE), None)
        if zombie is not None:
            task.children.remove(zombie)
            zombie.state = DEAD
            del self.tasks[zombie.pid]
            task.send = zombie.exit_code
            return
        if not task.children:
            task.send = -10                       # -ECHILD
            return
        task.waiting = True
        self.block(v, task)
        task.retry = ("wait",)              # the wait step runs again when the task wakes

    def sys_sleep(self, v, task):
        if task.wake_pending:
            task.wake_pending = False
            return
        self.block(v, task)

    def sys_wake(self, v, task, pid):
        other = self.tasks.get(pid)
        if other is None:
            return
        if other.state == "blocked" and not other.waiting:
            self.wake(other, self.engine.clock(v), v)
        else:
            other.wake_pending = True

    # -- memory -----------------------------------------------------------------------------
    def sys_touch(self, v, task, region, first, count, mode):
        """Access `count` pages of `region` from page `first`: r (read and check), w (write a
        ledger token), x (instruction fetch of the file page)."""
        vma = task.image.region(task.mm, region)
        for i in range(first, first + count):
            page = vma.start + (i << 12)
            if page >= vma.end:
                break
            if mode == "x":
                self._check(v, task, page, self.uread(v, page, fetch=True), vma)
            elif mode == "r":
                self._check(v, task, page + DATA_WORD, self.uread(v, page + DATA_WORD), vma)
                if vma.file is not None:
                    self._check(v, task, page, self.uread(v, page), vma)
            else:
                va = page + DATA_WORD
                gen = task.writes.get(va, 0) + 1
                task.writes[va] = gen
                token = data_token(task.place, va, gen)
                self.uwrite(v, va, token)
                task.mm.ledger[va] = token

    def expected(self, mm, va, vma):
        if va in mm.ledger:
            return mm.ledger[va]
        if (va & 0xFFF) == 0 and vma.file is not None:
            return file_token(vma.file, vma.pgoff + ((va - vma.start) >> 12))
        return 0

    def _check(self, v, task, va, found, vma):
        want = self.expected(task.mm, va, vma)
        self.ledger_checks += 1
        if found != want:
            raise GuestPanic(f"data ledger: {task.place} (pid {task.pid}, mm {task.mm.id}) "
                             f"read va {va:#010x} on vcpu {v}: expected {want:#018x}, "
                             f"found {found:#018x}")
        self.readback = (self.readback + read_hash(task.place, va, found)) & READBACK_MASK
        self.readback_count += 1

    def sys_brk(self, v, task, pages):
        self.engine.charge(v, "syscall")
        vma = task.mm.brk_vma
        if pages >= 0:
            vma.end += pages << 12
        else:
            new_end = max(vma.start, vma.end + (pages << 12))
            self.mmm.munmap(v, task.mm, new_end, vma.end)
            task.mm.brk_vma = next(x for x in task.mm.vmas if x.start == vma.start)
            task.mm.brk_vma.end = new_end

    def sys_mmap(self, v, task, pages, write, exec_=False, file=None):
        self.engine.charge(v, "syscall")
        mm = task.mm
        top = min([x.start for x in mm.vmas if x.start >= 0x40000000] + [0xB7000000])
        start = top - (pages << 12)
        mm.vmas.append(VMA(start, start + (pages << 12), True, write, exec_, file=file))
        task.send = start

    def sys_munmap(self, v, task, va, pages):
        self.engine.charge(v, "syscall")
        self.mmm.munmap(v, task.mm, va, va + (pages << 12))

    def sys_mprotect(self, v, task, va, pages, write):
        self.engine.charge(v, "syscall")
        self.mmm.mprotect(v, task.mm, va, va + (pages << 12), write)

    def sys_protfault(self, v, task, va):
        """lat_sig prot: write to a read-only page, take SIGSEGV, the handler mprotects
        the page writable, the write is restarted."""
        from .kernel import Segv
        try:
            self.uwrite(v, va + DATA_WORD, data_token(task.place, va, -1))
        except Segv:
            self.engine.charge(v, "syscall")      # signal delivery + sigreturn
            self.stats["sigsegv"] += 1
            self.mmm.mprotect(v, task.mm, va, va + 4096, True)
            self.uwrite(v, va + DATA_WORD, data_token(task.place, va, -1))
            task.mm.ledger[va + DATA_WORD] = data_token(task.place, va, -1)
            self.mmm.mprotect(v, task.mm, va, va + 4096, False)
            return
        raise GuestPanic(f"{task.place}: write to read-only va {va:#010x} did not fault")

    # -- kernel work ------------------------------------------------------------------------
    def sys_syscall(self, v, task, n=1):
        self.engine.charge(v, "syscall", n)

    def sys_work(self, v, task, cycles):
        self.engine.charge_cycles(v, cycles, "user")

    def sys_emit(self, v, task, event, data):
        self.emit(event, v, **data)

    def sys_modprobe(self, v, task, pages):
        """init_module: vmalloc the module and write its image (kernel stores)."""
        self.engine.charge(v, "syscall")
        start = self.vmalloc(v, pages)
        for i in range(pages):
            va = start + (i << 12)
            self.kwrite(v, va, file_token("module", va))
        self.stats["modules"] += 1

    def sys_kuse(self, v, task, count):
        """Driver work in process context: the kernel reads module pages (vmalloc faults
        when this mm's kernel PMD lacks the entry)."""
        pages = self.module_pages
        if not pages:
            return
        for i in range(count):
            va = pages[(task.pid * 7 + i * 13) % len(pages)]
            found = self.kread(v, va)
            if found != file_token("module", va):
                raise GuestPanic(f"kernel read module va {va:#010x} on vcpu {v}: expected "
                                 f"{file_token('module', va):#018x}, found {found:#018x}")


class MoreSyscallsMixin:
    """Steps used by the boot and lmbench workloads beyond the basic ones."""

    def sys_spawn(self, v, task, program, place):
        """call_usermodehelper: a kernel thread forks a helper that execs at once; its
        parent is the kernel (it is reaped automatically)."""
        self.engine.charge(v, "fork_work")
        child = self.new_task(place, program, None, None)
        self.rq.enqueue(child, self.rq.least_loaded(), self.engine.clock(v))
        self.stats["spawns"] += 1

    def sys_emit_counted(self, v, task, event, total):
        n = self.counted[event] = self.counted.get(event, 0) + 1
        self.emit(event, v, count=n, of=total, all=n == total)

    def sys_touch_at(self, v, task, va, pages, mode):
        vma = task.mm.find_vma(va)
        first = (va - vma.start) >> 12
        region = _Region(vma)
        saved = task.image
        task.image = region
        try:
            self.sys_touch(v, task, "at", first, pages, mode)
        finally:
            task.image = saved

    def sys_getpid(self, v, task):
        task.send = task.pid


class _Region:
    """Adapter so `touch` can address an mmap'd VMA like an image region."""

    def __init__(self, vma):
        self.vma = vma

    def region(self, mm, name):
        return self.vma
