"""Records of the CPU model: TLB sizes, a cached translation as the TLB holds it, and a
snapshot of a CPU's event counters (frozen dataclasses; engines.hw.cpu fills them)."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TLBConfig:
    """TLB capacities. Default: K8-like (32 L1 + 512 L2 DTLB 4 KiB entries, 8 2 MiB entries)."""
    entries_4k: int = 544
    entries_2m: int = 8

    def __post_init__(self):
        if self.entries_4k < 1 or self.entries_2m < 1:
            raise ValueError(f"TLB capacities must be >= 1, got {self}")


@dataclass(frozen=True)
class TLBEntry:
    """A cached translation as the TLB holds it (combined rights)."""
    va: int
    pa: int
    size: int
    writable: bool
    user: bool
    nx: bool
    dirty: bool
    global_: bool


@dataclass(frozen=True)
class CPUCounters:
    """Snapshot of a CPU's event counters."""
    tlb_hits_4k: int = 0
    tlb_hits_2m: int = 0
    tlb_misses_4k: int = 0
    tlb_misses_2m: int = 0
    walks: int = 0
    pde_reads: int = 0
    pte_reads: int = 0
    ad_writes: int = 0
    flush_full: int = 0
    flush_global: int = 0
    invlpg: int = 0
    cr3_loads: int = 0
    filter_kept: int = 0
    faults_not_present: int = 0
    faults_protection: int = 0
    faults_rsvd: int = 0
    gp_faults: int = 0

    @property
    def tlb_misses(self) -> int:
        return self.tlb_misses_4k + self.tlb_misses_2m

    @property
    def tlb_hits(self) -> int:
        return self.tlb_hits_4k + self.tlb_hits_2m

    @property
    def walk_refs(self) -> int:
        """Paging-structure entries read from memory by walks."""
        return self.pde_reads + self.pte_reads

    def __sub__(self, other: "CPUCounters") -> "CPUCounters":
        return CPUCounters(*(getattr(self, f.name) - getattr(other, f.name)
                             for f in fields(self)))
