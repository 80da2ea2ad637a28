"""Paging modes and the one guest page-table walker, written once for every mode.

Follows Xen's `xen/arch/x86/mm/shadow/multi.c` + `guest_pt.h` idea (reference/shadow.md §4
"Mode templating"): the paging level is a *parameter*. A `PagingMode` value says how many
levels a guest walk has, how many entries each table holds and how wide they are, which
linear-address bits index each level, whether the top level is the PAE PDPTE registers,
and which levels may map large pages. `guest_walk` (after Xen's `guest_walk_tables`) walks
the guest's tables for one access, sets guest A/D bits exactly as the hardware does
(reference/pae.md §8-9, the "implement" column: a non-leaf entry used gets A even when the
walk then faults; the leaf gets A, and D on a write, only on success) and *returns* a
`GuestWalk` record; the caller decides whether to fill a shadow, emulate or inject.

Faults follow SDM §4.7 / pae.md §5-7: the first failing level ends the walk; a reserved bit
in a present entry beats a rights violation; error code P|RSVD for reserved bits, 0 for
not-present, P for rights; W, U from the access; I/D only for fetches with NXE.

Two modes are defined: `PAE` (what the race boots: 4 PDPTE registers, 512 x 8-byte PDEs
and PTEs, 2 MiB pages) and `TWO_LEVEL` (legacy 32-bit paging: 1024 x 4-byte entries, 4 MiB
pages when CR4.PSE, no NX, PSE-36 frame bits), shown by tests at the walker level.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from engines.hw import LARGE_PDE_EXTRA_RESERVED, pde_pte_reserved, pdpte_reserved

F_P, F_RW, F_US, F_A, F_D, F_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
F_XD = 1 << 63
A_WRITE, A_USER, A_FETCH = 0x2, 0x4, 0x10
PFEC_P, PFEC_RSVD, PFEC_ID = 0x1, 0x8, 0x10


@dataclass(frozen=True)
class PagingMode:
    """One guest paging mode. Per-level tuples are indexed by level (1 = leaf tables)."""
    name: str
    levels: int
    entry_bytes: int
    entries: tuple[int, ...]        # entries per table at each level (index 0 unused)
    shifts: tuple[int, ...]         # linear-address shift of each level's index
    top_in_registers: bool          # PAE: the top level is the PDPTE registers (MOV CR3)
    large_level: int                # the level whose entries may have PS=1 (0: none)
    has_nx: bool
    _plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def index(self, va: int, level: int) -> int:
        return (va >> self.shifts[level]) & (self.entries[level] - 1)

    def span(self, level: int) -> int:
        """Bytes of linear address space one entry at `level` covers."""
        return 1 << self.shifts[level]

    def masks(self, maxphyaddr: int, nxe: bool) -> tuple[tuple[int, ...], int, int]:
        """Reserved-bit masks of a present entry per level, of a large leaf, and the mask
        of a table address (what `reserved` and `table_gpa` compute)."""
        small = tuple(self.reserved(lv, (1 << 64) - 1, False, maxphyaddr, nxe) if lv else 0
                      for lv in range(self.levels + 1))
        large = self.reserved(self.large_level, (1 << 64) - 1, True, maxphyaddr, nxe)
        return small, large, self.table_gpa((1 << 64) - 1, maxphyaddr)

    def plan(self, maxphyaddr: int, nxe: bool, pse: bool = True) -> WalkPlan:
        """Everything one walk needs that depends only on the mode and these settings,
        computed once (Xen compiles multi.c once per mode for the same reason)."""
        key = (maxphyaddr, nxe, pse)
        plan = self._plans.get(key)
        if plan is None:
            nxe = nxe and self.has_nx
            small, large, tmask = self.masks(maxphyaddr, nxe)
            plan = self._plans[key] = WalkPlan(
                self, maxphyaddr, nxe, self.levels, self.top_in_registers, self.shifts,
                tuple(n - 1 for n in self.entries), self.entry_bytes, small,
                self.large_level if pse or self.name == "pae" else 0, large, tmask)
        return plan

    def frame_mask(self, maxphyaddr: int) -> int:
        return ((1 << maxphyaddr) - 1) & ~0xFFF

    def reserved(self, level: int, entry: int, large: bool, maxphyaddr: int, nxe: bool) -> int:
        """Reserved bits set in a present entry at `level` (pae.md §4; SDM Table 4-4)."""
        if self.name == "pae":
            if level == 3:
                return entry & pdpte_reserved(maxphyaddr)
            mask = pde_pte_reserved(maxphyaddr, nxe)
            if large:
                mask |= LARGE_PDE_EXTRA_RESERVED
            return entry & mask
        if large:   # 32-bit 4 MiB PDE: bits 21:(13 + M - 32) reserved (PSE-36)
            low = 13 + min(maxphyaddr, 40) - 32
            return entry & (((1 << 22) - 1) & ~((1 << low) - 1))
        return 0

    def leaf_gfn(self, entry: int, level: int, va: int, maxphyaddr: int) -> int:
        """Guest frame the leaf `entry` at `level` maps for `va`."""
        if level == 1:
            return (entry & self.frame_mask(maxphyaddr)) >> 12
        if self.name == "pae":
            base = (entry & self.frame_mask(maxphyaddr) & ~((1 << 21) - 1)) >> 12
        else:       # 4 MiB: bits 31:22, plus PSE-36 bits 20:13 as address bits 39:32
            base = ((entry >> 22) << 10) | (((entry >> 13) & 0xFF) << 20)
            base &= (1 << (maxphyaddr - 12)) - 1
        return base + ((va & (self.span(level) - 1)) >> 12)

    def table_gpa(self, entry: int, maxphyaddr: int) -> int:
        """Guest-physical base of the table a non-leaf `entry` points at."""
        if self.name == "pae":
            return entry & self.frame_mask(maxphyaddr)
        return entry & 0xFFFFF000


class WalkPlan(NamedTuple):
    """A mode's walk constants for one (MAXPHYADDR, NXE, PSE): `PagingMode.plan`."""
    mode: PagingMode
    maxphyaddr: int
    nxe: bool                       # EFER.NXE as the mode honours it
    levels: int
    top_in_registers: bool
    shifts: tuple[int, ...]
    index_masks: tuple[int, ...]
    entry_bytes: int
    reserved: tuple[int, ...]       # reserved bits of a present entry, per level
    large_level: int                # 0 when PS is ignored (2-level without CR4.PSE)
    large_reserved: int
    table_mask: int


PAE = PagingMode("pae", levels=3, entry_bytes=8, entries=(0, 512, 512, 4),
                 shifts=(0, 12, 21, 30), top_in_registers=True, large_level=2, has_nx=True)
TWO_LEVEL = PagingMode("2-level", levels=2, entry_bytes=4, entries=(0, 1024, 1024),
                       shifts=(0, 12, 22), top_in_registers=False, large_level=2,
                       has_nx=False)


class GuestWalk(NamedTuple):
    """What a guest walk found: the entries read from the top down (after any A/D bits the
    walk set), their guest-physical addresses (None for a PDPTE register), the level of the
    last entry read, whether it is a leaf, the fault (None on success) and, on success, the
    mapped frame and combined rights (W, U, NX)."""
    va: int
    access: int
    entries: tuple[int, ...]
    gpas: tuple[int | None, ...]
    level: int
    pfec: int | None
    gfn: int = -1
    writable: bool = False
    user: bool = False
    nx: bool = False
    refs: int = 0

    @property
    def ok(self) -> bool:
        return self.pfec is None

    @property
    def leaf(self) -> int:
        return self.entries[-1]


_new_walk = tuple.__new__        # GuestWalk from a complete tuple, without NamedTuple's __new__
ReadFn = Callable[[int], int]
SetBitsFn = Callable[[int, int], None]


def _fault(va, access, entries, gpas, level, code, nxe, refs) -> GuestWalk:
    if access & A_FETCH and nxe:
        code |= PFEC_ID
    code |= access & (A_WRITE | A_USER)
    return _new_walk(GuestWalk, (va, access, tuple(entries), tuple(gpas), level, code, -1,
                                 False, False, False, refs))


def guest_walk(mode: PagingMode, va: int, access: int, *, top, read: ReadFn,
               set_bits: SetBitsFn | None, wp: bool, nxe: bool, pse: bool = True,
               maxphyaddr: int = 36) -> GuestWalk:
    """Walk the guest's tables for `access` at `va`. `top` is the 4 PDPTE registers (PAE)
    or the CR3 value (2-level). `read(gpa)` reads one entry; `set_bits(gpa, bits)` ORs A/D
    bits into one (None: a pure walk that writes nothing, for audits)."""
    return walk_plan(mode.plan(maxphyaddr, nxe, pse), va, access, top, read, set_bits, wp)


def walk_plan(plan: WalkPlan, va: int, access: int, top, read: ReadFn,
              set_bits: SetBitsFn | None, wp: bool) -> GuestWalk:
    """`guest_walk` with the mode's constants already looked up (the fault path's form)."""
    (mode, maxphyaddr, nxe, level, in_registers, shifts, imasks, ebytes, small, large_level,
     large_mask, tmask) = plan
    if in_registers:
        e = top[(va >> shifts[level]) & imasks[level]]
        if not e & F_P:
            return _fault(va, access, (e,), (None,), level, 0, nxe, 0)
        entries: list[int] = [e]
        gpas: list[int | None] = [None]
        table = e & tmask
        level -= 1
    else:
        entries, gpas = [], []
        table = top & tmask
    refs = 0
    rights = F_RW | F_US                    # AND of every entry's R/W and U/S
    xd = 0                                  # OR of every entry's XD
    while True:
        gpa = table + ((va >> shifts[level]) & imasks[level]) * ebytes
        e = read(gpa)
        refs += 1
        entries.append(e)
        gpas.append(gpa)
        if not e & F_P:
            return _fault(va, access, entries, gpas, level, 0, nxe, refs)
        large = level == large_level and e & F_PS
        if e & (large_mask if large else small[level]):
            return _fault(va, access, entries, gpas, level, PFEC_P | PFEC_RSVD, nxe, refs)
        rights &= e
        xd |= e
        if level == 1 or large:
            break
        if not e & F_A and set_bits is not None:       # a used non-leaf entry gets A
            set_bits(gpa, F_A)
            entries[-1] = e | F_A
        table = e & tmask
        level -= 1
    nx = bool(nxe and xd & F_XD)
    if ((access & A_USER and not rights & F_US)
            or (access & A_WRITE and not rights & F_RW and (access & A_USER or wp))
            or (access & A_FETCH and nx)):
        return _fault(va, access, entries, gpas, level, PFEC_P, nxe, refs)
    want = F_A | F_D if access & A_WRITE else F_A
    if e & want != want and set_bits is not None:
        set_bits(gpa, want)
        entries[-1] = e | want
    gfn = (e & tmask) >> 12 if level == 1 else mode.leaf_gfn(e, level, va, maxphyaddr)
    return _new_walk(GuestWalk, (va, access, tuple(entries), tuple(gpas), level, None, gfn,
                                 bool(rights & F_RW), bool(rights & F_US), nx, refs))
