"""A stand-in for race.boot in the race's own tests: same cell type and event shapes as the
real run_boot (milestone stamps, one final result; DNF as a result; a harness bug as an
exception), deterministic from the cell, and fast. Profiles pick the behaviour:
`sarge`/`tiny` boot, `buggy` raises out of run_boot on seed 2, `slow` sleeps SLOW_S per
milestone (for the cluster tests). `paravirt` with strategy `shared` on 2+ VCPUs fails its
audit at init_exec, as the real one must."""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from engines.api import list_cost_tables, load_cost_table

LADDER = ["kernel_entry", "paging_on", "direct_map", "smp_online", "init_exec",
          "single_user", "multiuser"]
SLOW_S = 0.25


@dataclass(frozen=True)
class BootCell:
    engine: str
    options: tuple
    profile: str
    vcpus: int
    memory_mib: int
    machine_memory_mib: int | None
    flush_filter: bool
    seed: int
    costs: str
    cost_overrides: tuple
    ladder: str

    def key(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        over = "".join(f"+{k}={v}" for k, v in self.cost_overrides)
        return (f"{self.engine}[{opts}]/{self.profile}/{self.vcpus}v/{self.memory_mib}M/"
                f"mm{self.machine_memory_mib}/ff{int(self.flush_filter)}/"
                f"{Path(self.costs).stem}{over}/{Path(self.ladder).stem}/s{self.seed}")


native = SimpleNamespace(OPTIONS={}, DEFAULTS={})
paravirt = SimpleNamespace(
    OPTIONS={"strategy": ("per-pagetable", "shared", "shared-percpu", "walk"),
             "ptwr": (False, True)},
    DEFAULTS={"strategy": "per-pagetable", "ptwr": False})
ENGINES = {"native": native, "paravirt": paravirt}
PROFILES = ["sarge", "tiny", "buggy", "slow"]
SLOWDOWN = {"native": 1.0, "per-pagetable": 1.31, "shared": 1.22, "shared-percpu": 1.27,
            "walk": 1.45}


def list_profiles():
    return list(PROFILES)


def list_ladders():
    return ["default"]


def run_boot(cell: BootCell):
    key = cell.key()
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    opts = dict(cell.options)
    factor = SLOWDOWN[opts.get("strategy", "native")] * (1.1 if cell.vcpus > 1 else 1.0)
    cycles, stamps = 0, []
    counters = {"hypercalls": 0, "tlb_flushes": 0, "pf_true": 0}
    breakdown = {"guest": 0, "walks": 0, "hypervisor": 0}
    for i, m in enumerate(LADDER):
        if cell.profile == "slow":
            time.sleep(SLOW_S)
        if cell.profile == "buggy" and cell.seed == 2 and m == "direct_map":
            raise RuntimeError("fake harness bug")
        step = int(rng.randint(900_000, 1_100_000) * factor * (i + 1))
        cycles += step
        breakdown["guest"] += step * 6 // 10
        breakdown["walks"] += step * 3 // 10
        breakdown["hypervisor"] += step - step * 6 // 10 - step * 3 // 10
        counters["hypercalls"] += 0 if cell.engine == "native" else 50 * (i + 1)
        counters["tlb_flushes"] += 3 * (i + 1)
        counters["pf_true"] += 10 * (i + 1)
        if opts.get("strategy") == "shared" and cell.vcpus > 1 and m == "init_exec":
            yield {"type": "result", "cell": key, "status": "dnf",
                   "reason": "audit failed: va 0xc0100000 on vcpu 1 maps the other VCPU's "
                             "page table (shared kernel L2)",
                   "milestones": stamps, "cycles": cycles, "counters": dict(counters),
                   "cycle_breakdown": dict(breakdown), "gauges": {"pt_pages": 40}}
            return
        stamp = {"milestone": m, "index": i, "vcpu": i % cell.vcpus, "cycles": cycles,
                 "counters": dict(counters)}
        stamps.append(stamp)
        yield {"type": "milestone", "cell": key, **stamp}
    yield {"type": "result", "cell": key, "status": "ok", "reason": None,
           "milestones": stamps, "cycles": cycles, "counters": dict(counters),
           "cycle_breakdown": dict(breakdown), "gauges": {"pt_pages": 40 + cell.vcpus}}


def catalog():
    from race.spec import Catalog
    return Catalog(engines=ENGINES, profiles=PROFILES, ladders=["default"],
                   cost_tables=list_cost_tables(), cell_type=BootCell, run_boot=run_boot,
                   load_cost_table=load_cost_table)
