"""Builders shared by the engines.hw conformance tests: one small PAE address space.

Layout (pae.md §1, §3): PDPT at 0x1000, one page directory at 0x2000, one page table at
0x3000. The test linear address LA goes through PDPTE 1, PDE 5, PTE 7 with offset 0xabc, so
every index is non-zero. Frames sit above 4 GiB (bit 35 set) to exercise 36-bit addresses.
"""
from __future__ import annotations

from typing import Iterable

from engines.hw import CPU, Access, PageFault, PhysicalMemory

import hw_oracle as o

MEM_SIZE = 1 << 36  # sparse: only touched frames cost anything
PDPT_BASE = 0x1000
PD_BASE = 0x2000
PT_BASE = 0x3000
LA = 0x40A07ABC  # PDPTE 1, PDE 5, PTE 7, offset 0xabc
PDPTE_INDEX, PDE_INDEX, PTE_INDEX = 1, 5, 7
PDPTE_ADDR = PDPT_BASE + 8 * PDPTE_INDEX
PDE_ADDR = PD_BASE + 8 * PDE_INDEX
PTE_ADDR = PT_BASE + 8 * PTE_INDEX
FRAME_4K = 0x8_7654_3000
FRAME_2M = 0x8_7640_0000


def va(pdpte_index: int, pde_index: int, pte_index: int = 0, offset: int = 0) -> int:
    """Compose a 32-bit linear address from its PAE indices (pae.md §3)."""
    return (pdpte_index << 30) | (pde_index << 21) | (pte_index << 12) | offset


def make_cpu(mem: PhysicalMemory, env: o.Env, **kwargs) -> CPU:
    """A CPU whose CR0.WP, EFER.NXE, CR4.PGE and MAXPHYADDR follow `env`."""
    cpu = CPU(mem, maxphyaddr=env.m, **kwargs)
    cpu.cr0_wp = env.wp
    cpu.efer_nxe = env.nxe
    cpu.cr4_pge = env.pge
    return cpu


def write_entries(mem: PhysicalMemory, entries: dict[int, int]) -> None:
    for paddr, value in entries.items():
        mem.write_u64(paddr, value)


def standard_tables(pde: int, pte: int, pdpte: int = PD_BASE | o.P) -> dict[int, int]:
    """The PDPTE, PDE and PTE of LA, as a paddr -> value mapping."""
    return {PDPTE_ADDR: pdpte, PDE_ADDR: pde, PTE_ADDR: pte}


def machine(entries: dict[int, int], env: o.Env = o.Env(), cr3: int = PDPT_BASE,
            mem_size: int = MEM_SIZE, **cpu_kwargs) -> tuple[PhysicalMemory, CPU]:
    """Memory holding `entries` and a CPU that has loaded CR3."""
    mem = PhysicalMemory(mem_size)
    write_entries(mem, entries)
    cpu = make_cpu(mem, env, **cpu_kwargs)
    cpu.load_cr3(cr3)
    return mem, cpu


def attempt(cpu: CPU, la: int, access: int = 0) -> tuple:
    """('ok', paddr) or ('fault', vaddr, error_code): a comparable outcome of translate."""
    try:
        return ("ok", cpu.translate(la, Access(access)))
    except PageFault as fault:
        return ("fault", fault.vaddr, int(fault.error_code))


def expected_outcome(w: o.Walk, la: int) -> tuple:
    if w.faulted:
        return ("fault", la, w.error_code)
    return ("ok", w.paddr)


def tlb_view(cpu: CPU) -> list[tuple]:
    """The TLB contents as sorted plain tuples (order of tlb_entries() is not specified)."""
    view = [(e.va, e.pa, e.size, bool(e.writable), bool(e.user), bool(e.nx),
             bool(e.dirty), bool(e.global_)) for e in cpu.tlb_entries()]
    return sorted(view) if len(view) > 1 else view


def expected_tlb(w: o.Walk) -> list[tuple]:
    if w.faulted:
        return []
    return [(w.page_va, w.frame, w.size, w.writable, w.user, w.nx, w.dirty, w.global_)]


def conformance_problems(entries: dict[int, int], la: int, envs: Iterable[o.Env],
                         cr3: int = PDPT_BASE) -> list[str]:
    """Run one access per env and list every way the model differs from the oracle.

    Checks the outcome (paddr, or #PF vaddr and error code), every page-table entry after
    the access (A/D updates, pae.md §8-9), the TLB contents, and the counters that one
    access determines. Each env starts from the original entries and an empty TLB: the
    first access of a (WP, NXE, PGE, M) group runs on a fresh CPU, the others on that CPU
    after flush_tlb(include_global=True) (pae.md §8: nothing cached survives it).
    """
    mem = PhysicalMemory(MEM_SIZE)
    cpu, cpu_key, pdptes = None, None, None
    problems: list[str] = []
    for env in envs:
        write_entries(mem, entries)
        key = (env.wp, env.nxe, env.pge, env.m)
        if key != cpu_key:
            pdptes = o.load_pdptes(entries, cr3, env.m)
            assert pdptes is not None, "test set-up: the PDPT must load"
            cpu, cpu_key = make_cpu(mem, env), key
            cpu.load_cr3(cr3)
        else:
            cpu.flush_tlb(include_global=True)
        before = cpu.counters()
        found = access_problems(mem, cpu, entries, o.walk(entries, pdptes, la, env), la,
                                env.access, before)
        if found:
            where = f"{env} la={la:#x} entries={ {hex(k): hex(v) for k, v in entries.items()} }"
            problems += [where + problem for problem in found]
    return problems


def access_problems(mem, cpu, entries, want: o.Walk, la: int, access: int, before) -> list:
    got = attempt(cpu, la, access)
    problems: list[str] = []
    if got != expected_outcome(want, la):
        problems.append(f": got {fmt(got)}, want {fmt(expected_outcome(want, la))}")
    for paddr, value in entries.items():
        after, expect = mem.read_u64(paddr), want.updates.get(paddr, value)
        if after != expect:
            problems.append(f": entry at {paddr:#x} is {after:#x}, want {expect:#x}")
    if tlb_view(cpu) != expected_tlb(want):
        problems.append(f": TLB {tlb_view(cpu)}, want {expected_tlb(want)}")
    return problems + counter_problems(cpu.counters(), before, want)


COUNTERS_ONE_ACCESS_DECIDES = (
    "walks", "tlb_hits_4k", "tlb_hits_2m", "tlb_misses_4k", "tlb_misses_2m", "pde_reads",
    "pte_reads", "faults_not_present", "faults_protection", "faults_rsvd", "gp_faults",
    "invlpg")


def counter_problems(after, before, want: o.Walk) -> list[str]:
    """The counter increments one fresh access must cause (CPUCounters, per the model's API)."""
    expect = {
        "walks": 1, "tlb_hits_4k": 0, "tlb_hits_2m": 0,
        "tlb_misses_4k": int(want.size == o.SIZE_4K),
        "tlb_misses_2m": int(want.size == o.SIZE_2M),
        "pde_reads": int(want.pde_read), "pte_reads": int(want.pte_read),
        "faults_not_present": int(want.fault_kind == "not_present"),
        "faults_protection": int(want.fault_kind == "protection"),
        "faults_rsvd": int(want.fault_kind == "rsvd"),
        "gp_faults": 0, "invlpg": 0,
    }
    problems = []
    for name in COUNTERS_ONE_ACCESS_DECIDES:
        delta = getattr(after, name) - getattr(before, name)
        if delta != expect[name]:
            problems.append(f": counter {name} rose by {delta}, want {expect[name]}")
    changed, ad_writes = len(want.updates), after.ad_writes - before.ad_writes
    if not changed <= ad_writes <= 2 * changed:
        problems.append(f": ad_writes rose by {ad_writes} for {changed} entries changed")
    return problems


def fmt(outcome: tuple) -> str:
    if outcome[0] == "ok":
        return f"paddr {outcome[1]:#x}"
    return f"#PF(va={outcome[1]:#x}, ec={outcome[2]:#x})"
