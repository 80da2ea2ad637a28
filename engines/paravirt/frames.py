"""Xen's per-frame bookkeeping for PV guests: `count_info` (general references) and
`type_info` (type, type count, PGT_pinned / PGT_validated / PGT_pae_xen_l2), with the
get/put rules of Xen 3.0.3 `xen/arch/x86/mm.c` (reference/xen-pv.md §1.1-1.3).

- A frame's type may change only while its type count is 0. On the 0->1 transition of an
  unvalidated frame the type is validated (`alloc_page_type`, supplied by the validator); a
  failed validation zeroes the type word and the reference is refused.
- When the type count drops to 0 a page-table frame loses validation (`free_page_type` drops
  the references its entries held) and every frame is stamped with the TLB-flush clock.
- When a frame changes type, the CPUs that may still cache translations of it (those whose
  last full flush is not later than the frame's stamp: Xen's `tlbflush_filter`) are flushed
  by the engine's hook *before* the new type is granted (the XSA-241/401 order).

Types are exclusive while referenced, so a frame in use as a page table can never also be
writable (§1.3). Counts never go negative: an underflow means Xen was driven to drop a
reference nobody held, and raises `RefcountCorruption` (the engine crashes the domain).
"""
from __future__ import annotations

from enum import IntEnum
from typing import Callable

DOMID_GUEST = 1
DOMID_XEN = 0x7FF2

PGC_COUNT_MAX = (1 << 29) - 1     # 29-bit count_info
PGT_COUNT_MAX = (1 << 16) - 1     # 16-bit type count


class PGT(IntEnum):
    """Page types (3.0.3 `PGT_*`; GDT/LDT merged into SEG_DESC as HEAD does)."""
    NONE = 0
    L1 = 1
    L2 = 2
    L3 = 3
    L4 = 4
    SEG_DESC = 5
    WRITABLE = 7


PT_TYPES = (PGT.L1, PGT.L2, PGT.L3)


class RefcountCorruption(Exception):
    """A count would have gone below zero: Xen's bookkeeping no longer matches the tables."""


class PageInfo:
    """`struct page_info` of one machine frame."""

    __slots__ = ("mfn", "owner", "count", "type", "tcount", "pinned", "validated", "xen_l2",
                 "stamp")

    def __init__(self, mfn: int, owner: int, count: int = 0, type_: PGT = PGT.NONE,
                 tcount: int = 0, validated: bool = False):
        self.mfn = mfn
        self.owner = owner
        self.count = count      # count_info & PGC_count_mask
        self.type = type_
        self.tcount = tcount
        self.pinned = False
        self.validated = validated
        self.xen_l2 = False     # PGT_pae_xen_l2
        self.stamp = 0          # tlbflush_timestamp

    def __repr__(self) -> str:
        flags = "".join(c for c, on in (("P", self.pinned), ("V", self.validated),
                                        ("X", self.xen_l2)) if on)
        return (f"<mfn {self.mfn:#x} dom {self.owner:#x} count {self.count} "
                f"{self.type.name}x{self.tcount} {flags}>")


class _Pages(dict):
    """mfn -> PageInfo. The domain's frames materialise on first use with the state the
    builder gives every frame (owner the domain, count 1 for the allocation, no type), or,
    for a frame a direct-map L1 took in one batch (`FrameTable.lazy_direct`), the state
    that left it in (count 2, type WRITABLE with count 1, validated): a 512 MiB domain
    does not cost 131,072 objects up front, nor once its kernel maps all of them."""

    def __init__(self, lazy_owner: dict[int, int], lazy_direct: dict[int, int]):
        super().__init__()
        self.lazy_owner = lazy_owner
        self.lazy_direct = lazy_direct

    def __missing__(self, mfn: int) -> PageInfo:
        owner = self.lazy_owner.get(mfn)
        if owner is None:
            raise KeyError(mfn)
        if self.lazy_direct.pop(mfn, None) is not None:
            info = self[mfn] = PageInfo(mfn, owner, 2, PGT.WRITABLE, 1, True)
        else:
            info = self[mfn] = PageInfo(mfn, owner, 1)
        return info

    def get(self, mfn, default=None):
        info = dict.get(self, mfn)
        if info is None and mfn in self.lazy_owner:
            return self[mfn]
        return default if info is None else info


class FrameTable:
    """The frame table plus Xen's TLB-flush clock.

    Hooks set by the engine: `alloc_page_type(info, type) -> bool`,
    `free_page_type(info, type)`, `flush_stale(info)` (flush the CPUs whose TLBs may hold
    translations of the frame, per the filter).
    """

    def __init__(self):
        self.guest_mfns: set[int] = set()     # every frame of the domain
        self.lazy_owner: dict[int, int] = {}   # frames not materialised yet: mfn -> owner
        self.lazy_direct: dict[int, int] = {}  # those of them mapped once RW: mfn -> owner
        self.pages: dict[int, PageInfo] = _Pages(self.lazy_owner, self.lazy_direct)
        self.pt_frames: set[int] = set()     # frames with a page-table type count > 0
        self.pinned: set[int] = set()        # frames with PGT_pinned
        self.touched: set[int] = set()       # counts or type changed since the last audit
        self.tlbclock = 1                    # tlbflush_clock
        self.replaced = 0                    # PageInfo objects replaced by add()
        self.alloc_page_type: Callable[[PageInfo, PGT], bool] = lambda i, t: True
        self.free_page_type: Callable[[PageInfo, PGT], None] = lambda i, t: None
        self.flush_stale: Callable[[PageInfo], None] = lambda i: None

    # -- frames -----------------------------------------------------------------------------
    def add(self, mfn: int, owner: int, allocated: bool = True) -> PageInfo:
        # count 1: the allocation reference (PGC_allocated)
        if mfn in self.pages:
            self.replaced += 1          # a PageInfo object others may hold goes stale
        info = self.pages[mfn] = PageInfo(mfn, owner, 1 if allocated else 0)
        return info

    def add_domain_frames(self, mfns, owner: int) -> None:
        """Frames allocated to a domain (count 1, no type), materialised lazily."""
        self.lazy_owner.update(dict.fromkeys(mfns, owner))
        self.guest_mfns.update(mfns)

    def set_pinned(self, mfn: int, on: bool) -> None:
        self.pages[mfn].pinned = on
        (self.pinned.add if on else self.pinned.discard)(mfn)

    def owner_of(self, mfn: int) -> int | None:
        info = self.pages.get(mfn)
        return None if info is None else info.owner

    # -- general references -----------------------------------------------------------------
    def get_page(self, mfn: int, dom: int) -> bool:
        """get_page: refuse a frame the domain does not own, or a count overflow."""
        try:
            info = self.pages[mfn]
        except (KeyError, TypeError):
            return False
        if info.owner != dom or info.count >= PGC_COUNT_MAX:
            return False
        info.count += 1
        self.touched.add(mfn)
        return True

    def put_page(self, mfn: int) -> None:
        info = self.pages[mfn]
        if info.count <= 0:
            raise RefcountCorruption(f"put_page mfn {mfn:#x}: count already 0 ({info!r})")
        info.count -= 1
        self.touched.add(mfn)

    # -- type references --------------------------------------------------------------------
    def get_page_type(self, mfn: int, type_: PGT, xen_l2: bool = False) -> bool:
        """get_page_type (3.0.3 rules 1-5 of xen-pv.md §1.2). The caller holds a general
        reference."""
        info = self.pages[mfn]
        if info.tcount >= PGT_COUNT_MAX:
            return False
        self.touched.add(mfn)
        if info.tcount == 0:
            if info.type != type_ or info.xen_l2 != xen_l2 or not info.validated:
                if info.type != type_ and info.stamp:
                    self.flush_stale(info)       # stale TLB entries die before the new type
                info.type, info.xen_l2, info.validated = type_, xen_l2, False
            if not info.validated:
                info.tcount = 1
                if type_ in PT_TYPES:
                    self.pt_frames.add(mfn)
                ok = type_ not in PT_TYPES or self.alloc_page_type(info, type_)
                if not ok:
                    info.tcount = 0
                    info.type, info.xen_l2 = PGT.NONE, False
                    self.pt_frames.discard(mfn)
                    return False
                info.validated = True
                return True
        elif info.type != type_ or info.xen_l2 != xen_l2:
            return False
        info.tcount += 1
        return True

    def put_page_type(self, mfn: int) -> None:
        info = self.pages[mfn]
        if info.tcount <= 0:
            raise RefcountCorruption(f"put_page_type mfn {mfn:#x}: type count already 0 "
                                     f"({info!r})")
        info.tcount -= 1
        self.touched.add(mfn)
        if info.tcount == 0:
            if info.pinned:
                raise RefcountCorruption(f"mfn {mfn:#x} pinned with type count 0")
            info.stamp = self.tlbclock
            if info.type in PT_TYPES and info.validated:
                info.validated = False
                self.pt_frames.discard(mfn)
                self.free_page_type(info, info.type)
            info.xen_l2 = False

    def get_page_and_type(self, mfn: int, dom: int, type_: PGT, xen_l2: bool = False) -> bool:
        if not self.get_page(mfn, dom):
            return False
        if not self.get_page_type(mfn, type_, xen_l2):
            self.put_page(mfn)
            return False
        return True

    def put_page_and_type(self, mfn: int) -> None:
        self.put_page_type(mfn)
        self.put_page(mfn)

    # -- the TLB flush clock ----------------------------------------------------------------
    def tick(self) -> int:
        """A CPU flushed its whole TLB: advance the clock and return the CPU's new stamp."""
        self.tlbclock += 1
        return self.tlbclock

    @staticmethod
    def need_flush(cpu_time: int, page_stamp: int) -> bool:
        """NEED_FLUSH: the CPU's last flush is not later than the frame's stamp."""
        return cpu_time <= page_stamp
