"""The workload: the programs of a SysV boot (init, rc shells, scripts, commands, subshells,
hotplug helpers, modprobe, daemons, gettys) and the lmbench micro-benchmarks, as generators
of kernel steps (guestkit.syscalls). Every count comes from the profile; each program's
place in the workload (e.g. "rcS/s03/c2") names its data, so what it reads back does not
depend on pids, timing or the engine.

Process images follow an i386 ELF layout: text at 0x08048000, data and bss after it, the
brk heap after bss, ld.so and libc mapped below 0xB8000000, a 128 KiB stack under
0xC0000000. Text is fetched from the page cache; data is a private file mapping (COW on
write); bss, heap and stack are anonymous.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .mm import VMA

TEXT_BASE = 0x08048000
LD_BASE = 0xB7FD0000
LIBC_BASE = 0xB7E00000
STACK_TOP = 0xC0000000
STACK_PAGES = 32


@dataclass(frozen=True)
class Image:
    path: str
    text: int
    data: int
    bss: int
    heap: int
    ld_text: int
    libc_text: int
    libc_data: int

    def vmas(self) -> tuple[list[VMA], VMA]:
        t_end = TEXT_BASE + (self.text << 12)
        d_end = t_end + (self.data << 12)
        b_end = d_end + (self.bss << 12)
        heap = VMA(b_end, b_end, True, True, False)
        ld_end = LD_BASE + (self.ld_text << 12)
        libc_end = LIBC_BASE + (self.libc_text << 12)
        vmas = [
            VMA(TEXT_BASE, t_end, True, False, True, file=self.path),
            VMA(t_end, d_end, True, True, False, file=self.path, pgoff=self.text),
            VMA(d_end, b_end, True, True, False),
            heap,
            VMA(LIBC_BASE, libc_end, True, False, True, file="/lib/libc.so.6"),
            VMA(libc_end, libc_end + (self.libc_data << 12), True, True, False,
                file="/lib/libc.so.6", pgoff=self.libc_text),
            VMA(LD_BASE, ld_end, True, False, True, file="/lib/ld-linux.so.2"),
            VMA(ld_end, ld_end + (2 << 12), True, True, False, file="/lib/ld-linux.so.2",
                pgoff=self.ld_text),
            VMA(STACK_TOP - (STACK_PAGES << 12), STACK_TOP, True, True, False),
        ]
        return vmas, heap

    def region(self, mm, name: str) -> VMA:
        starts = self._starts()
        start = starts[name]
        for vma in mm.vmas:
            if vma.start == start:
                return vma
        raise KeyError(f"{self.path}: region {name} (va {start:#x}) is not mapped")

    def _starts(self) -> dict[str, int]:
        t_end = TEXT_BASE + (self.text << 12)
        d_end = t_end + (self.data << 12)
        libc_end = LIBC_BASE + (self.libc_text << 12)
        return {"text": TEXT_BASE, "data": t_end, "bss": d_end,
                "heap": d_end + (self.bss << 12), "libc_text": LIBC_BASE,
                "libc_data": libc_end, "ld_text": LD_BASE,
                "ld_data": LD_BASE + (self.ld_text << 12),
                "stack": STACK_TOP - (STACK_PAGES << 12)}


class Workload:
    """Builds the programs of one profile."""

    def __init__(self, profile, seed: int = 0):
        self.p = profile
        self.seed = seed
        self.boot = profile.boot
        self.libs = profile.libs
        self._images: dict[tuple[str, str], Image] = {}

    def image(self, kind: str, path: str) -> Image:
        key = (kind, path)
        if key not in self._images:
            spec = self.p.programs[kind]
            self._images[key] = Image(path, spec["text"], spec["data"], spec["bss"],
                                      spec["heap"], self.libs["ld_text"],
                                      self.libs["libc_text"], self.libs["libc_data"])
        return self._images[key]

    def rng(self, place: str) -> random.Random:
        """The random stream of one place in the workload: seeded by (seed, place) only,
        so a program makes the same choices on every engine and in any order."""
        return random.Random(f"{self.seed}:{place}")

    def body(self, kind: str, place: str = ""):
        """What a freshly exec'd program does: ld.so relocation, libc start-up, its own
        text, data (COW), bss, heap via brk, stack, then its computation (+-25% by seed)."""
        spec, libs = self.p.programs[kind], self.libs
        work = int(spec["work"] * self.rng(place + "/work").uniform(0.75, 1.25))
        yield ("touch", "stack", STACK_PAGES - spec["stack"], spec["stack"], "w")
        yield ("touch", "ld_text", 0, libs["ld_touch"], "x")
        yield ("touch", "ld_data", 0, 2, "w")
        yield ("touch", "libc_text", 0, libs["libc_touch"], "x")
        yield ("touch", "libc_data", 0, libs["libc_data"], "r")
        yield ("touch", "libc_data", 0, libs["libc_data"], "w")
        yield ("touch", "text", 0, spec["text"], "x")
        yield ("touch", "data", 0, spec["data"], "r")
        yield ("touch", "data", 0, max(1, spec["data"] // 2), "w")
        yield ("touch", "bss", 0, spec["bss"], "w")
        yield ("brk", spec["heap"])
        yield ("touch", "heap", 0, spec["heap"], "w")
        yield ("syscall", spec["syscalls"])
        yield ("work", work)
        yield ("touch", "heap", 0, spec["heap"], "r")

    # -- the SysV boot ----------------------------------------------------------------------
    def init(self):
        b = self.boot
        yield ("exec", self.image("init", "/sbin/init"))
        yield from self.body("init")
        yield ("fork", self.rc("S"), "rcS")
        yield ("wait",)
        yield ("emit", "rc_done", {"runlevel": "S"})
        yield ("fork", self.rc("2"), "rc2")
        yield ("wait",)
        yield ("emit", "rc_done", {"runlevel": "2"})
        for i in range(b["gettys"]):
            yield ("fork", self.getty(i), f"getty{i}")
        yield ("sleep",)

    def rc(self, level: str):
        b = self.boot
        scripts = b["rcs_scripts"] if level == "S" else b["rc2_scripts"]
        yield ("touch", "stack", STACK_PAGES - 1, 1, "r")
        yield ("exec", self.image("sh", f"/etc/init.d/rc{level}"))
        yield from self.body("sh")
        hotplug_at = scripts // 3 if level == "S" else -1
        for s in range(scripts):
            if s == hotplug_at:
                yield from self.coldplug()
            yield ("fork", self.script(level, s), f"rc{level}/s{s:02d}")
            yield ("touch", "stack", STACK_PAGES - 1, 1, "w")
            yield ("wait",)
            yield ("touch", "heap", 0, 1, "w")
        yield ("exit", 0)

    def coldplug(self):
        """udev/hotplug coldplug: the kernel spawns /sbin/hotplug helpers in bursts that
        run concurrently with the rc scripts (call_usermodehelper)."""
        b = self.boot
        for i in range(b["hotplug_events"]):
            yield ("spawn", self.hotplug(i), f"hotplug/{i:03d}")
            if (i + 1) % b["hotplug_burst"] == 0:
                yield ("work", b["hotplug_gap_cycles"])

    def script(self, level: str, s: int):
        b = self.boot
        place = f"rc{level}/s{s:02d}"
        rng = self.rng(place)
        n_cmds = max(0, b["commands_per_script"] + rng.randint(-2, 2))
        yield ("touch", "stack", STACK_PAGES - 1, 1, "r")
        yield ("exec", self.image("sh", f"/etc/rc{level}.d/S{s:02d}script"))
        yield from self.body("sh", place)
        for c in range(n_cmds):
            yield ("fork", self.command(f"/bin/cmd{rng.randrange(b['distinct_commands'])}",
                                        f"{place}/c{c}"), f"{place}/c{c}")
            yield ("touch", "stack", STACK_PAGES - 1, 1, "w")
            yield ("wait",)
        for j in range(b["subshells_per_script"]):
            yield ("fork", self.subshell(), f"{place}/sub{j}")
            yield ("touch", "stack", STACK_PAGES - 2, 2, "w")
            yield ("touch", "heap", 0, 2, "w")
            yield ("wait",)
        if level == "2" and s < b["daemons"]:
            yield ("fork", self.daemon(s), f"{place}/daemon")
            yield ("wait",)
        yield ("exit", 0)

    def command(self, path: str, place: str = ""):
        yield ("touch", "stack", STACK_PAGES - 1, 1, "r")
        yield ("exec", self.image("cmd", path))
        yield from self.body("cmd", place)
        yield ("kuse", self.boot["kuse_per_command"])
        yield ("exit", 0)

    def subshell(self):
        """A forked shell that does not exec: it reads what it inherited and writes its own
        data (COW breaks in the child; the parent writes too)."""
        yield ("work", self.boot["subshell_work"])
        yield ("touch", "stack", STACK_PAGES - 2, 2, "r")
        yield ("touch", "heap", 0, 2, "r")
        yield ("touch", "data", 0, 1, "r")
        yield ("touch", "heap", 0, 2, "w")
        yield ("touch", "stack", STACK_PAGES - 1, 1, "w")
        yield ("exit", 0)

    def hotplug(self, i: int):
        b = self.boot
        yield ("exec", self.image("sh", "/sbin/hotplug"))
        yield from self.body("sh")
        if i % b["modprobe_every"] == 0:
            yield ("fork", self.modprobe(i), f"hotplug/{i:03d}/modprobe")
            yield ("wait",)
        yield ("kuse", self.boot["kuse_per_command"])
        yield ("exit", 0)

    def modprobe(self, i: int):
        yield ("touch", "stack", STACK_PAGES - 1, 1, "r")
        yield ("exec", self.image("cmd", "/sbin/modprobe"))
        yield from self.body("cmd")
        yield ("modprobe", self.boot["module_pages"])
        yield ("exit", 0)

    def daemon(self, s: int):
        yield ("exec", self.image("daemon", f"/usr/sbin/daemon{s}"))
        yield from self.body("daemon")
        yield ("fork", self.daemon_child(s), f"rc2/daemon{s}")
        yield ("exit", 0)

    def daemon_child(self, s: int):
        yield ("touch", "heap", 0, 2, "r")
        yield ("touch", "heap", 0, self.p.programs["daemon"]["heap"], "w")
        yield ("kuse", self.boot["kuse_per_command"])
        yield ("sleep",)

    def getty(self, i: int):
        yield ("exec", self.image("getty", "/sbin/getty"))
        yield from self.body("getty")
        yield ("emit_counted", "getty_waiting", self.boot["gettys"])
        yield ("sleep",)

    # -- lmbench micro-profiles -------------------------------------------------------------
    def lmbench_init(self):
        """init runs one micro-benchmark in place of rcS, then the rest of the ladder."""
        yield ("exec", self.image("init", "/sbin/init"))
        yield from self.body("init")
        yield ("fork", self.lmbench(), "lmbench")
        yield ("wait",)
        yield ("emit", "rc_done", {"runlevel": "S"})
        yield ("emit", "rc_done", {"runlevel": "2"})
        for i in range(self.boot["gettys"]):
            yield ("fork", self.getty(i), f"getty{i}")
        yield ("sleep",)

    def lmbench(self):
        lm = self.p.lmbench
        n, mech = lm["iterations"], lm["mechanism"]
        yield ("exec", self.image("cmd", f"/usr/lib/lmbench/lat_{mech}"))
        yield from self.body("cmd")
        if mech == "ctx":
            yield from self._lat_ctx(n)
        for i in range(n if mech != "ctx" else 0):
            place = f"lmbench/{i}"
            if mech == "fork":
                yield ("fork", self._exit_now(), place)
                yield ("wait",)
            elif mech == "exec":
                yield ("fork", self.command("/bin/true"), place)
                yield ("wait",)
            elif mech == "sh":
                yield ("fork", self._sh_c(place), place)
                yield ("wait",)
            elif mech == "pagefault":
                va = yield ("mmap", lm["pages"], False, False, "/usr/share/lmbench/file")
                yield ("touch_at", va, lm["pages"], "r")
                yield ("munmap", va, lm["pages"])
            elif mech == "mmap":
                va = yield ("mmap", lm["pages"], True, False, None)
                yield ("touch_at", va, lm["pages"], "w")
                yield ("munmap", va, lm["pages"])
            elif mech == "prot":
                if i == 0:
                    va = yield ("mmap", 1, True, False, None)
                    yield ("touch_at", va, 1, "w")
                    yield ("mprotect", va, 1, False)
                yield ("protfault", va)
        yield ("exit", 0)

    def _exit_now(self):
        yield ("exit", 0)

    def _sh_c(self, place: str):
        yield ("exec", self.image("sh", "/bin/sh"))
        yield from self.body("sh")
        yield ("fork", self.command("/bin/true"), place + "/true")
        yield ("wait",)
        yield ("exit", 0)

    def _lat_ctx(self, n: int):
        """Two processes passing a token: each switch is a context switch with a CR3 load."""
        me = yield ("getpid",)
        partner = yield ("fork", self._ctx_partner(me, n), "lmbench/partner")
        for _ in range(n):
            yield ("touch", "heap", 0, 1, "w")
            yield ("wake", partner)
            yield ("sleep",)
        yield ("wake", partner)
        yield ("wait",)

    def _ctx_partner(self, parent: int, n: int):
        for _ in range(n):
            yield ("sleep",)
            yield ("touch", "heap", 0, 1, "w")
            yield ("wake", parent)
        yield ("sleep",)
        yield ("exit", 0)
