"""A tiny guest kernel driven at the engine API level, for the shadow engine's tests.

Built the same way on any engine (physical addresses = guest pfns << 12): with paging off
it writes two PDPTs (A at pfn 1 offset 0, B at offset 0x20), a kernel L2 shared by both
(slot 3) holding a 4 KiB direct map of all 16 MiB at 0xC0000000, one user L2 per PDPT
(slot 0), and three test L1 pages; then loads CR3 = A and turns paging on. After that every
page-table write goes through the direct map with a plain store, as a translated guest does.
"""
from __future__ import annotations

from engines.api import DomainSpec, GuestPageFault, load_cost_table
from engines.hw import A_FETCH, A_USER, A_WRITE, PageFault
from engines.native import NativeEngine
from engines.shadow import ShadowEngine

P, RW, US, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
MEMORY_MIB = 16
PDPT_PFN = 1
PDPT_A, PDPT_B = PDPT_PFN << 12, (PDPT_PFN << 12) | 0x20
KERNEL_L2 = 2
USER_L2 = {PDPT_A: 3, PDPT_B: 4}
TEST_L1 = (5, 6, 7)
DIRECT_L1 = tuple(range(8, 16))
DATA = tuple(range(64, 72))
KBASE = 0xC0000000
KERNEL = P | RW | A | D


def kva(pfn: int) -> int:
    return KBASE + (pfn << 12)


def test_va(pde: int, pte: int, off: int = 0) -> int:
    return (pde << 21) | (pte << 12) | off


def make(engine_name: str, vcpus: int = 1, costs: str = "p4-xeon-2005", **options):
    spec = DomainSpec(vcpus=vcpus, memory_mib=MEMORY_MIB, seed=7, options=options,
                      machine_memory_mib=None if engine_name == "shadow" else None)
    cls = ShadowEngine if engine_name == "shadow" else NativeEngine
    if engine_name == "native":
        spec = DomainSpec(vcpus=vcpus, memory_mib=MEMORY_MIB, seed=7)
    return cls(spec, load_cost_table(costs))


def boot(e, vcpus: int = 1, nxe: bool = True) -> None:
    """Build the tables with paging off on VCPU 0, then turn paging on on every VCPU."""
    w = lambda pa, val: e.write(0, pa, val)
    w(PDPT_A, (USER_L2[PDPT_A] << 12) | P)
    w(PDPT_A + 24, (KERNEL_L2 << 12) | P)
    w(PDPT_B, (USER_L2[PDPT_B] << 12) | P)
    w(PDPT_B + 24, (KERNEL_L2 << 12) | P)
    for i, l1 in enumerate(DIRECT_L1):
        w((KERNEL_L2 << 12) + 8 * i, (l1 << 12) | KERNEL)
        for j in range(512):
            w((l1 << 12) + 8 * j, (((i << 9) + j) << 12) | KERNEL)
    for pd in USER_L2.values():
        for i, l1 in enumerate(TEST_L1):
            w((pd << 12) + 8 * i, (l1 << 12) | P | RW | US)
    for i, l1 in enumerate(TEST_L1):
        for j, data in enumerate(DATA):
            w((l1 << 12) + 8 * j, (data << 12) | P | RW | US)
    for v in range(vcpus):
        if v:
            e.ipi(0, v)
        e.set_control(v, nxe=nxe)
        e.write_cr3(v, PDPT_A)
        e.set_control(v, pg=True, wp=True)


def outcome(fn, *args):
    """What the guest observes: ("ok", value) or ("pf", va, error code)."""
    try:
        return ("ok", fn(*args))
    except GuestPageFault as pf:
        return ("pf", pf.va, pf.error_code)


def access(e, vcpu: int, va: int, kind: str, user: bool, value: int = 0):
    acc = A_USER if user else 0
    if kind == "read":
        return outcome(e.read, vcpu, va, acc)
    if kind == "fetch":
        return outcome(e.read, vcpu, va, acc | A_FETCH)
    return outcome(e.write, vcpu, va, value, acc)


def guest_page(e, pfn: int) -> list[int]:
    """The 512 words of guest frame `pfn` (through the engine's P2M if it has one)."""
    mfn = e.p2m.p2m[pfn] if hasattr(e, "p2m") else pfn
    return e.memory.frame_words(mfn)


def write_u32(e, vcpu: int, va: int, value: int, access: int = 0):
    """A 4-byte store on any engine (native: through its CPU)."""
    if hasattr(e, "write_u32"):
        return outcome(e.write_u32, vcpu, va, value, access)
    def native():
        try:
            e.memory.write_u32(e.cpus[vcpu].translate(va, access | A_WRITE), value)
        except PageFault as pf:
            e.charge(vcpu, "pf_delivery")
            raise GuestPageFault(pf.vaddr, pf.error_code) from None
    return outcome(native)
