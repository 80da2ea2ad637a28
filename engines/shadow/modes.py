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

Like Xen, which compiles multi.c once per guest paging level, the walk is written once and
instantiated per mode (`PagingMode.plan`: the level loop unrolled and the mode's constants
folded in), so the PAE walk the fault path runs is straight-line code. The fault path's
form (`walk_frames`) maps each table's gfn through the P2M and indexes the machine frame's
word list (`PhysicalMemory.frame`), as Xen's walk maps each guest table with
map_domain_page and reads entries from the mapping.

Faults follow SDM §4.7 / pae.md §5-7: the first failing level ends the walk; a reserved bit
in a present entry beats a rights violation; error code P|RSVD for reserved bits, 0 for
not-present, P for rights; W, U from the access; I/D only for fetches with NXE.

Two modes are defined: `PAE` (what the race boots: 4 PDPTE registers, 512 x 8-byte PDEs
and PTEs, 2 MiB pages) and `TWO_LEVEL` (legacy 32-bit paging: 1024 x 4-byte entries, 4 MiB
pages when CR4.PSE, no NX, PSE-36 frame bits), shown by tests at the walker level.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from engines.hw import (
    LARGE_PDE_EXTRA_RESERVED,
    AddressError,
    pde_pte_reserved,
    pdpte_reserved,
)

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
            plan = WalkPlan(
                self, maxphyaddr, nxe, self.levels, self.top_in_registers, self.shifts,
                tuple(n - 1 for n in self.entries), self.entry_bytes, small,
                self.large_level if pse or self.name == "pae" else 0, large, tmask)
            plan = self._plans[key] = plan._replace(
                walk=_compile_walk(plan), walk_translated=_compile_walk(plan, "p2m"),
                walk_frames=_compile_walk(plan, "frames") if self.entry_bytes == 8 else None)
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
    walk: Callable = None           # the walk compiled for this plan (`_compile_walk`)
    walk_translated: Callable = None    # ... reading tables through a P2M list (+ p2m arg)
    walk_frames: Callable = None        # ... the same, `read` = PhysicalMemory.frame (8-byte
                                        # entries only: None for 2-level)


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
    return plan.walk(va, access, top, read, set_bits, wp)


# -- the walker, instantiated per mode ------------------------------------------------------
# Xen builds multi.c once per GUEST_PAGING_LEVELS; here `_compile_walk` writes the one walk
# below out for a plan: the level loop unrolled (one block per level, top down) and the
# plan's masks, shifts and sizes as constants, so a PAE walk is straight-line code. Each
# block: read the entry (PDPTEs: from `top`), stop on not-present, on a PS=1 entry at the
# large level (reserved bits, else a leaf), on reserved bits; AND its R/W, U/S into
# `rights`; a table entry then gets A (set_bits) and the walk goes down. The leaf block
# takes XD from the entries below the top, checks the access against the rights and sets A
# (and D on a write). Flag names are written into the source as literals.

def _outside(gpa: int, nr_pages: int) -> AddressError:
    return AddressError(f"guest page-table entry at guest-physical {gpa:#x} is outside "
                        f"the domain's {nr_pages:#x} pages")


_FLAGS = {"F_P": F_P, "F_PS": F_PS, "F_A": F_A, "F_D": F_D, "F_RW": F_RW, "F_US": F_US,
          "F_XD": F_XD, "A_USER": A_USER, "A_WRITE": A_WRITE, "A_FETCH": A_FETCH}
_FLAG_NAMES = re.compile(r"\b(" + "|".join(_FLAGS) + r")\b")


def _compile_walk(plan: WalkPlan, translated: str = "") -> Callable:
    """The walk for `plan`: `read(gpa)` reads an entry; with `translated` the walk also takes
    the P2M list and maps each table's frame through it, then reads with `read(maddr)`
    ("p2m") or takes the frame's word list from `read(mfn)` (PhysicalMemory.frame: None for
    an untouched frame) and indexes it ("frames": no call per entry, no machine address)."""
    (_mode, _m, nxe, levels, in_registers, shifts, imasks, ebytes, small, large_level,
     large_mask, tmask) = plan[:12]
    out = [f"def walk(va, access, top, read, set_bits, wp{', p2m' if translated else ''}):",
           f"    rights = {F_RW | F_US}"]
    if translated:
        out.append("    nr = len(p2m)")
    entries: list[str] = []         # expressions of the entries read so far, as recorded
    gpas: list[str] = []
    refs = 0

    def fault(level: int, code: int, ind: str = "    ") -> str:
        return (f"{ind}return _fault(va, access, ({''.join(e + ', ' for e in entries)}), "
                f"({''.join(g + ', ' for g in gpas)}), {level}, {code}, {nxe}, {refs})")

    def leaf(level: int, ind: str) -> list[str]:
        e, g = entries[-1], gpas[-1]
        done = entries[:-1] + ["e"]
        gfn = (f"({e} & {tmask}) >> 12" if level == 1
               else f"mode.leaf_gfn({e}, {level}, va, {_m})")
        # XD of the entries below the top (a PDPTE has none): an entry has bit 63 set iff
        # it is >= 2**63, a comparison that allocates nothing (the entries are 3-digit ints)
        xd = " or ".join(f"{x} >= F_XD" for x in entries[1 if in_registers else 0:])
        return [f"{ind}nx = {xd if nxe else 'False'}",
                (f"{ind}if ((access & A_USER and not rights & F_US)"
                 f" or (access & A_WRITE and not rights & F_RW and (access & A_USER or wp))"
                 f" or (access & A_FETCH and nx)):"),
                fault(level, PFEC_P, ind + "    "),
                f"{ind}want = F_A | F_D if access & A_WRITE else F_A",
                f"{ind}e = {e}",
                f"{ind}if e & want != want and set_bits is not None:",
                f"{ind}    set_bits({g}, want)",
                f"{ind}    e |= want",
                (f"{ind}return _new(GuestWalk, (va, access, ({', '.join(done)},), "
                 f"({', '.join(gpas)},), {level}, None, {gfn}, rights & F_RW != 0, "
                 f"rights & F_US != 0, nx, {refs}))")]

    level = levels
    if in_registers:
        out.append(f"    e{level} = top[(va >> {shifts[level]}) & {imasks[level]}]")
        entries, gpas = [f"e{level}"], ["None"]
        out += [f"    if not e{level} & F_P:", fault(level, 0, "        "),
                f"    t = e{level} & {tmask}"]
        level -= 1
    else:
        out.append(f"    t = top & {tmask}")
    while level:
        e, g = f"e{level}", f"g{level}"
        out.append(f"    {g} = t + ((va >> {shifts[level]}) & {imasks[level]}) * {ebytes}")
        if translated:                   # the table's frame through the P2M
            out += [f"    if {g} >> 12 >= nr:", f"        raise _outside({g}, nr)"]
        if translated == "frames":
            out += [f"    f = read(p2m[{g} >> 12])",
                    f"    {e} = 0 if f is None else f[({g} & 4095) >> 3]"]
        elif translated:
            out.append(f"    {e} = read((p2m[{g} >> 12] << 12) | ({g} & 4095))")
        else:
            out.append(f"    {e} = read({g})")
        refs += 1
        entries.append(e)
        gpas.append(g)
        out += [f"    if not {e} & F_P:", fault(level, 0, "        ")]
        if level == large_level and level > 1:
            out += [f"    if {e} & F_PS:"]
            if large_mask:
                out += [f"        if {e} & {large_mask}:",
                        fault(level, PFEC_P | PFEC_RSVD, "            ")]
            out += [f"        rights &= {e}"] + leaf(level, "        ")
        if small[level]:
            out += [f"    if {e} & {small[level]}:", fault(level, PFEC_P | PFEC_RSVD, "        ")]
        out += [f"    rights &= {e}"]
        if level == 1:
            out += leaf(1, "    ")
        else:
            out += [f"    if not {e} & F_A and set_bits is not None:",
                    f"        set_bits({g}, F_A)", f"        a{level} = {e} | F_A",
                    "    else:", f"        a{level} = {e}",
                    f"    t = {e} & {tmask}"]
            entries[-1] = f"a{level}"
        level -= 1
    namespace = {"_fault": _fault, "_new": _new_walk, "_outside": _outside,
                 "GuestWalk": GuestWalk, "mode": _mode}
    # only this module's own text and the plan's integers; the flag names become literals
    source = _FLAG_NAMES.sub(lambda m: str(_FLAGS[m.group()]), "\n".join(out))
    exec(compile(source, f"<guest walk: {_mode.name}, plan {plan[1:3]}>", "exec"),  # noqa: S102
         namespace)
    return namespace["walk"]
