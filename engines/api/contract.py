"""The guest/engine contract and the machinery every engine shares.

A guest kernel model drives an `Engine` only through the methods below. Memory accesses go
through the VCPU's simulated CPU (`engines.hw.CPU`); a page fault the engine does not fix
itself reaches the guest as `GuestPageFault` (with the error code bare hardware would have
given), after the engine has charged its delivery. Privileged operations (CR3 load, INVLPG,
TLB flush, CR0/CR4/EFER writes) execute on bare hardware and trap under a hypervisor;
paravirtualised guests make hypercalls instead. Every event charges cycles to the VCPU that
caused it, from a `CostTable`.

Cycle clock of a VCPU = cycles charged explicitly + what its CPU's counters say the MMU did:
    translations served x mem_access + paging entries read by walks x walk_ref
    + walker A/D writes x ad_write
so TLB misses are charged from the walks the hardware model really made, and a TLB flush
costs its instruction plus the refills that follow (they are walks).

`unaccounted()` runs a block (the guest's data-ledger audit) with every clock and counter
restored afterwards: the audit observes the race, it is not part of it. The TLB and shadow
state it leaves behind are states the hardware or engine could have reached anyway.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator, Mapping

from engines.hw import A_WRITE, CPU, CPUCounters, PhysicalMemory, TLBConfig

from .costs import CostTable

MIB = 1 << 20


class ABI(Enum):
    """What the guest's page tables hold and how it changes them."""
    NATIVE = "native"          # physical frames; the guest owns the MMU
    XEN_PV = "xen-pv"          # machine frames via a guest P2M; updates by hypercall
    TRANSLATED = "translated"  # pseudo-physical frames; plain stores; CR3/INVLPG trap


class EngineError(Exception):
    """Base of errors raised by engines."""


class GuestPageFault(EngineError):
    """A page fault reflected to the guest kernel's handler (CR2 + error code):
    `GuestPageFault(va, error_code)`. The values live in `args` only (no Python-level
    `__init__`, as engines.hw's PageFault: a boot reflects tens of thousands of them)."""

    @property
    def va(self) -> int:
        return self.args[0]

    @property
    def error_code(self) -> int:
        return self.args[1]

    def __str__(self) -> str:
        return f"guest #PF at va {self.va:#010x}, error code {self.error_code:#x}"


class GuestCrash(EngineError):
    """The hypervisor crashed the domain (e.g. a VCPU left without a page table); the boot
    ends here and is reported as failed with this reason."""


class AuditFailure(EngineError):
    """An invariant of the engine, or the guest's data ledger, does not hold."""

    def __init__(self, violations: list[str]):
        self.violations = list(violations)
        head = "; ".join(self.violations[:5])
        more = f" (+{len(self.violations) - 5} more)" if len(self.violations) > 5 else ""
        super().__init__(f"audit failed: {head}{more}")


MAX_VCPUS = 32
LOWMEM_MIB = (16, 896)          # guest memory in MiB, min and max: lowmem only (no highmem)


@dataclass(frozen=True)
class DomainSpec:
    """One guest domain on one machine."""
    vcpus: int = 2
    memory_mib: int = 512
    machine_memory_mib: int | None = None   # None: the engine's default
    flush_filter: bool = False              # K8 TLB flush filter on every CPU
    tlb: TLBConfig = TLBConfig()
    maxphyaddr: int = 36
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"vcpus {self.vcpus} outside 1..{MAX_VCPUS}")
        if not LOWMEM_MIB[0] <= self.memory_mib <= LOWMEM_MIB[1]:
            raise ValueError(f"memory {self.memory_mib} MiB outside "
                             f"{LOWMEM_MIB[0]}..{LOWMEM_MIB[1]} (lowmem only)")


@dataclass(frozen=True)
class BootInfo:
    """What the guest learns from its engine at kernel entry."""
    abi: ABI
    vcpus: int
    nr_pages: int                      # guest (pseudo-)physical pages
    paging_on_at_entry: bool           # Xen builds bootstrap tables; bare hardware does not
    hypervisor_virt_start: int | None  # 0xF5800000 under Xen PAE; None on bare hardware
    superpages: bool                   # may the kernel map its direct map with 2 MiB pages?
    shared_kernel_pmd: bool = True     # may every pgd share one kernel L2 (PDPT slot 3)?
    start_info: Any = None             # ABI-specific start-of-day record (Xen PV: StartInfo)


class Engine:
    """Base of every engine: the machine, the cost table, clocks and counters.

    Subclasses set `abi` and `COST_EVENTS`, and implement the guest-facing operations.
    """

    name = "engine"
    abi: ABI
    COST_EVENTS: tuple[str, ...] = ("mem_access", "walk_ref", "ad_write", "ipi", "page_clear",
                                     "page_copy")

    def __init__(self, spec: DomainSpec, costs: CostTable, machine_bytes: int):
        costs.require(self.COST_EVENTS, f"engine {self.name!r}")
        self.spec = spec
        self.costs = costs
        self.memory = PhysicalMemory(machine_bytes)
        self.cpus = [CPU(self.memory, maxphyaddr=spec.maxphyaddr, tlb=spec.tlb,
                         flush_filter=spec.flush_filter) for _ in range(spec.vcpus)]
        self._cycles = [0] * spec.vcpus
        self.stats: Counter[str] = Counter()        # engine event counts
        self.cycles_by: Counter[str] = Counter()    # explicitly charged cycles per event
        self._c_access = costs["mem_access"]
        self._c_ref = costs["walk_ref"]
        self._c_ad = costs["ad_write"]

    # -- accounting -------------------------------------------------------------------------
    def charge(self, vcpu: int, event: str, count: int = 1) -> None:
        """Charge `count` x the cost of `event` to `vcpu` and count the event."""
        cycles = self.costs[event] * count
        self._cycles[vcpu] += cycles
        self.cycles_by[event] += cycles
        self.stats[event] += count

    def charge_cycles(self, vcpu: int, cycles: int, category: str) -> None:
        """Charge a raw number of cycles (guest computation given by a workload profile)."""
        self._cycles[vcpu] += cycles
        self.cycles_by[category] += cycles

    def clock(self, vcpu: int) -> int:
        """Simulated cycles of `vcpu` so far."""
        cpu = self.cpus[vcpu]
        return (self._cycles[vcpu]
                + (cpu.tlb_hits_4k + cpu.tlb_hits_2m + cpu.tlb_misses_4k + cpu.tlb_misses_2m)
                * self._c_access
                + (cpu.pde_reads + cpu.pte_reads) * self._c_ref + cpu.ad_writes * self._c_ad)

    def advance_to(self, vcpu: int, cycles: int) -> None:
        """Idle `vcpu` until its clock reads `cycles` (no-op if already past)."""
        now = self.clock(vcpu)
        if cycles > now:
            self._cycles[vcpu] += cycles - now
            self.cycles_by["idle"] += cycles - now

    def hw_counters(self) -> CPUCounters:
        snaps = [cpu.counters() for cpu in self.cpus]
        return CPUCounters(*(sum(col) for col in zip(*(s.__dict__.values() for s in snaps))))

    def counters(self) -> dict[str, int]:
        """Engine event counts plus the machine's hardware counters (summed over CPUs)."""
        out = {f"hw.{k}": v for k, v in self.hw_counters().__dict__.items()}
        out.update({k: v for k, v in sorted(self.stats.items())})
        out.update(self.gauges())
        return out

    def cycle_breakdown(self) -> dict[str, int]:
        """Cycles by category over all VCPUs, including those derived from the CPU counters."""
        hw = self.hw_counters()
        out = dict(self.cycles_by)
        out["mem_access"] = (hw.tlb_hits + hw.tlb_misses) * self._c_access
        out["walk_ref"] = hw.walk_refs * self._c_ref
        out["ad_write"] = hw.ad_writes * self._c_ad
        return {k: v for k, v in sorted(out.items()) if v}

    def gauges(self) -> dict[str, int]:
        """Point-in-time sizes (page-table pages, shadow pages, ...). Engines extend."""
        return {"machine_frames_materialised": self.memory.frame_count()}

    @contextmanager
    def unaccounted(self) -> Iterator[None]:
        """Run a block whose cycles and counts are rolled back afterwards (audits)."""
        cycles = list(self._cycles)
        stats, by = Counter(self.stats), Counter(self.cycles_by)
        hw = [cpu.counters() for cpu in self.cpus]
        extra = self._save_accounting()
        try:
            yield
        finally:
            self._cycles = cycles
            self.stats, self.cycles_by = stats, by
            for cpu, snap in zip(self.cpus, hw):
                cpu.restore_counters(snap)
            self._restore_accounting(extra)

    def _save_accounting(self) -> Any:
        """Engine-specific counters that `unaccounted` must roll back (subclass hook)."""
        return None

    def _restore_accounting(self, saved: Any) -> None:
        pass

    # -- the guest-facing contract (subclasses implement) -----------------------------------
    def boot_info(self) -> BootInfo:
        raise NotImplementedError

    def read(self, vcpu: int, va: int, access: int = 0) -> int:
        """Read the 8-byte word at `va` on `vcpu` (access: A_USER, A_FETCH bits)."""
        raise NotImplementedError

    def write(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        """Write the 8-byte word at `va` on `vcpu` (A_WRITE implied; A_USER for CPL 3)."""
        raise NotImplementedError

    def write_u32(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        """Write the 4-byte word at `va` (4-byte aligned) on `vcpu`: half of a PAE entry, as
        Linux's set_pte, pte_clear and clear_bit store one (A_WRITE implied)."""
        raise NotImplementedError

    def translate(self, vcpu: int, va: int, access: int = 0) -> int:
        """The machine address `va` reaches on `vcpu` for `access`, resolving faults the
        engine handles itself; GuestPageFault for the others."""
        raise NotImplementedError

    def clear_page(self, vcpu: int, va: int) -> None:
        """clear_page(va): zero the 4 KiB page at `va` through the MMU (a supervisor write)."""
        maddr = self.translate(vcpu, va & ~0xFFF, A_WRITE)
        self.memory.zero_frame(maddr >> 12)
        self.charge(vcpu, "page_clear")

    def copy_page(self, vcpu: int, dst_va: int, src_va: int) -> None:
        """copy_page(dst, src) through the MMU (supervisor read of src, write of dst)."""
        src = self.translate(vcpu, src_va & ~0xFFF, 0)
        dst = self.translate(vcpu, dst_va & ~0xFFF, A_WRITE)
        self.memory.copy_frame(src >> 12, dst >> 12)
        self.charge(vcpu, "page_copy")

    def write_cr3(self, vcpu: int, cr3: int) -> None:
        raise NotImplementedError

    def invlpg(self, vcpu: int, va: int) -> None:
        raise NotImplementedError

    def flush_tlb(self, vcpu: int, include_global: bool = False) -> None:
        raise NotImplementedError

    def set_control(self, vcpu: int, *, pg: bool | None = None, wp: bool | None = None,
                    pge: bool | None = None, nxe: bool | None = None) -> None:
        """Write CR0.PG/CR0.WP, CR4.PGE or EFER.NXE (CR4.PAE is always set in this model)."""
        raise NotImplementedError

    def ipi(self, src: int, dst: int) -> None:
        """Send an inter-processor interrupt (charged to both ends)."""
        cost = self.costs["ipi"]
        self._cycles[src] += cost
        self._cycles[dst] += cost
        self.cycles_by["ipi"] += 2 * cost
        self.stats["ipi"] += 1

    def hypercall(self, vcpu: int, nr: int, *args: Any) -> int:
        """A hypercall; returns 0 or a count on success, -errno on failure. Never raises
        to the guest except GuestCrash when the hypervisor kills the domain."""
        return -38  # -ENOSYS: bare hardware has no hypervisor

    def audit(self) -> list[str]:
        """Check the engine's invariants; return the violations (empty when all hold)."""
        return []
