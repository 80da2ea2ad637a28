"""An independent expectation oracle for legacy PAE paging.

Written from shared/reference/pae.md (Intel SDM Vol. 3A §4.4, §4.6, §4.7, §4.8), never from
engines.hw, so the conformance tests can compare the model against it. Everything here is a
pure function over integers: page-table memory is a mapping paddr -> 64-bit entry, the four
PDPTE registers are a tuple, an access is the Access/PFEC bit encoding.

What one access must do is returned as a `Walk` record: the physical address or the fault
(error code and kind), the A/D updates the walker must make, the TLB entry a successful
walk creates, and which levels were read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# Entry bits (pae.md §3).
P, RW, US, PWT, PCD, A, D, PS, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63
PAT_LARGE = 1 << 12  # PAT in a PS=1 PDE: never reserved (pae.md §3)

# Access kinds (pae.md §6), the same encoding as engines.hw.Access.
READ, WRITE, USER, FETCH = 0x0, 0x2, 0x4, 0x10

# Page-fault error code bits (pae.md §7).
EC_P, EC_W, EC_U, EC_RSVD, EC_ID = 0x1, 0x2, 0x4, 0x8, 0x10

SIZE_4K = 1 << 12
SIZE_2M = 1 << 21

ACCESS_KINDS = {
    "supervisor-read": READ,
    "supervisor-write": WRITE,
    "supervisor-fetch": FETCH,
    "user-read": USER,
    "user-write": USER | WRITE,
    "user-fetch": USER | FETCH,
}


def bits(hi: int, lo: int) -> int:
    """Mask of bits hi:lo inclusive (hi >= lo), or 0 when hi < lo."""
    if hi < lo:
        return 0
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


def pdpte_reserved_mask(m: int) -> int:
    """pae.md §2: bits 2:1, 8:5 and 63:M (bit 63 even when NXE=1)."""
    return 0x1E6 | bits(63, m)


def entry_reserved_mask(m: int, nxe: bool, large: bool) -> int:
    """pae.md §4: bits 62:M, bit 63 unless NXE, bits 20:13 in a PS=1 PDE."""
    mask = bits(62, m)
    if not nxe:
        mask |= XD
    if large:
        mask |= bits(20, 13)
    return mask


def table_paddr(entry: int, m: int) -> int:
    """Bits (M-1):12 of an entry: the next table, or a 4 KiB frame."""
    return entry & bits(m - 1, 12)


def large_frame_paddr(entry: int, m: int) -> int:
    """Bits (M-1):21 of a PS=1 PDE: the 2 MiB frame."""
    return entry & bits(m - 1, 21)


def pdpt_paddr(cr3: int) -> int:
    """pae.md §1: bits 31:5 of CR3; bits 4:0 and 63:32 ignored."""
    return cr3 & 0xFFFFFFE0


def load_pdptes(mem: Mapping[int, int], cr3: int, m: int) -> tuple[int, ...] | None:
    """The four PDPTE registers MOV CR3 loads, or None when it must raise #GP (pae.md §2)."""
    base = pdpt_paddr(cr3)
    values = tuple(mem.get(base + 8 * i, 0) for i in range(4))
    for value in values:
        if value & P and value & pdpte_reserved_mask(m):
            return None
    return values


def access_allowed(access: int, wp: bool, writable: bool, user: bool, nx: bool) -> bool:
    """pae.md §6, given the combined rights of a translation."""
    is_user = bool(access & USER)
    if is_user and not user:
        return False
    if access & WRITE and not writable and (is_user or wp):
        return False
    if access & FETCH and nx:
        return False
    return True


def error_code(access: int, nxe: bool, *, present: bool, rsvd: bool = False) -> int:
    """pae.md §7: P from the cause, W/U/I-D from the access, RSVD implies P."""
    code = 0
    if present or rsvd:
        code |= EC_P
    if access & WRITE:
        code |= EC_W
    if access & USER:
        code |= EC_U
    if rsvd:
        code |= EC_RSVD
    if access & FETCH and nxe:
        code |= EC_ID
    return code


@dataclass(frozen=True)
class Env:
    """The processor state one access depends on (read at the time of the access, §6)."""

    access: int = READ
    wp: bool = False
    nxe: bool = False
    pge: bool = False
    m: int = 36


@dataclass(frozen=True)
class Walk:
    """Everything one access through a fresh walk must produce."""

    paddr: int | None = None
    error_code: int | None = None
    fault_kind: str | None = None  # "not_present", "rsvd" or "protection"
    updates: dict[int, int] = field(default_factory=dict)  # entry paddr -> new value
    size: int | None = None
    page_va: int | None = None
    frame: int | None = None
    writable: bool = False
    user: bool = False
    nx: bool = False
    dirty: bool = False
    global_: bool = False
    pde_read: bool = False
    pte_read: bool = False

    @property
    def faulted(self) -> bool:
        return self.error_code is not None


def _fault(env: Env, kind: str, updates: dict[int, int], pde_read: bool, pte_read: bool) -> Walk:
    code = error_code(env.access, env.nxe, present=kind != "not_present", rsvd=kind == "rsvd")
    return Walk(error_code=code, fault_kind=kind, updates=updates,
                pde_read=pde_read, pte_read=pte_read)


def _set(updates: dict[int, int], paddr: int, old: int, flags: int) -> None:
    if old | flags != old:
        updates[paddr] = old | flags


def walk(mem: Mapping[int, int], pdptes: tuple[int, ...], la: int, env: Env) -> Walk:
    """A fresh walk of linear address `la` (pae.md §5 order, §6 rights, §7 code, §8-9 A/D)."""
    la &= 0xFFFFFFFF
    pdpte = pdptes[la >> 30]
    if not pdpte & P:
        return _fault(env, "not_present", {}, False, False)
    pde_paddr = table_paddr(pdpte, env.m) + 8 * ((la >> 21) & 0x1FF)
    pde = mem.get(pde_paddr, 0)
    if not pde & P:
        return _fault(env, "not_present", {}, True, False)
    large = bool(pde & PS)
    if pde & entry_reserved_mask(env.m, env.nxe, large):
        return _fault(env, "rsvd", {}, True, False)
    updates: dict[int, int] = {}
    if large:
        leaf, leaf_paddr, pte_read = pde, pde_paddr, False
        writable, user = bool(pde & RW), bool(pde & US)
        nx = env.nxe and bool(pde & XD)
        size, frame = SIZE_2M, large_frame_paddr(pde, env.m)
    else:
        # §8/§9: the non-leaf PDE used to reach the PTE gets A, even if the PTE then faults.
        _set(updates, pde_paddr, pde, A)
        leaf_paddr = table_paddr(pde, env.m) + 8 * ((la >> 12) & 0x1FF)
        leaf, pte_read = mem.get(leaf_paddr, 0), True
        if not leaf & P:
            return _fault(env, "not_present", updates, True, True)
        if leaf & entry_reserved_mask(env.m, env.nxe, False):
            return _fault(env, "rsvd", updates, True, True)
        writable = bool(pde & RW) and bool(leaf & RW)
        user = bool(pde & US) and bool(leaf & US)
        nx = env.nxe and bool((pde | leaf) & XD)
        size, frame = SIZE_4K, table_paddr(leaf, env.m)
    if not access_allowed(env.access, env.wp, writable, user, nx):
        return _fault(env, "protection", updates, True, pte_read)
    is_write = bool(env.access & WRITE)
    _set(updates, leaf_paddr, leaf, A | (D if is_write else 0))
    return Walk(
        paddr=frame | (la & (size - 1)), updates=updates, size=size,
        page_va=la & ~(size - 1) & 0xFFFFFFFF, frame=frame,
        writable=writable, user=user, nx=nx,
        dirty=is_write or bool(leaf & D), global_=env.pge and bool(leaf & G),
        pde_read=True, pte_read=pte_read,
    )


def flag_names(entry: int, names: Mapping[str, int]) -> str:
    """'P|RW|XD' style id for test parameters."""
    parts = [name for name, bit in names.items() if entry & bit]
    return "|".join(parts) if parts else "0"
