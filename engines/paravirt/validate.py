"""Validation of PV-PAE page tables and checked entry updates, after Xen 3.0.3
`xen/arch/x86/mm.c` (`get_page_from_lNe`, `alloc_lN_table`, `free_lN_table`,
`mod_lN_entry`) with HEAD's fast-path whitelist (XSA-148/182); reference/xen-pv.md §1.4.

- Entry flags are tested as Xen's 32-bit "pte flags": bits 0-11 plus bits 44-63 folded into
  12-31. L1: `BASE_DISALLOW_MASK | _PAGE_GNTTAB` (no PAT/PSE, no GLOBAL, no bit 11, no
  reserved bits; NX allowed: the CPU has NX). L2: `BASE_DISALLOW_MASK` (no PSE: PV-PAE has
  no superpages). L3: 0xFFFFF1E6 (only P, PWT, PCD, AVL).
- Every present entry must name a frame the domain owns. L1 RW takes a writable type
  reference; L2 entries take L1 type references; L3 slots 0-2 take L2 references and slot 3
  (which must be present) an `L2|PGT_pae_xen_l2` reference. Only slots below 428 of a Xen L2
  are guest slots.
- An update re-validates unless only NX/AVL/GLOBAL/D/A/USER change (FASTPATH whitelist);
  references for the new entry are taken before the write and the old entry's dropped after;
  a failed update changes nothing. L3 slot 3 can never be updated.

What depends on the kernel-L2 strategy (writing the Xen slots, the linear slots, keeping
copies coherent) is delegated to the engine's `XenArea` through the hooks it passes in.
"""
from __future__ import annotations

from typing import Callable

from engines.hw import PageFault, PhysicalMemory

from .frames import PGC_COUNT_MAX, PGT, PGT_COUNT_MAX, FrameTable, PageInfo

P, RW = 0x1, 0x2
PADDR_MASK = ((1 << 44) - 1) & ~0xFFF            # Xen's PADDR_BITS = 44
BASE_DISALLOW_MASK = 0xFFFFF180 & ~0x80000000    # NX (folded bit 31) allowed
GNTTAB = 0x800
L1_DISALLOW_MASK = BASE_DISALLOW_MASK | GNTTAB
L2_DISALLOW_MASK = BASE_DISALLOW_MASK
L3_DISALLOW_MASK = 0xFFFFF1E6
L1_DISALLOW_RAW = 0x7FFFF00000000980            # the masks above on raw 64-bit entries
L2_DISALLOW_RAW = 0x7FFFF00000000180
FASTPATH_WHITELIST = (1 << 63) | 0xE00 | 0x100 | 0x40 | 0x20 | 0x4
FIRST_XEN_SLOT = 428                             # L2_PAGETABLE_FIRST_XEN_SLOT & 511
L3_LIMIT_MFN = 0x100000                          # below 4 GiB without extended-cr3


_dget = dict.get      # the frame table without materialising (fast paths fall back)
# Enum members read per call cost ~10 dict lookups each in CPython 3.11: plain names
_NONE, _L1, _L2, _L3, _WRITABLE = PGT.NONE, PGT.L1, PGT.L2, PGT.L3, PGT.WRITABLE


def pte_flags(entry: int) -> int:
    """get_pte_flags: bits 0-11 plus 44-63 folded into 12-31."""
    return (entry & 0xFFF) | ((entry >> 32) & 0xFFFFF000)


def entry_mfn(entry: int) -> int:
    return (entry & PADDR_MASK) >> 12


class Validator:
    """Page-table validation for one domain.

    `charge(event, n)` bills the current VCPU; `hooks` is the engine's XenArea with
    `l2_validated(info)`, `l3_validated(info) -> bool`, `l2_entry_changed(mfn, idx)`,
    `l3_entry_changed(mfn, idx)` and `table_freed(info)`.
    """

    def __init__(self, frames: FrameTable, memory: PhysicalMemory, dom: int,
                 charge: Callable[[str, int], None]):
        self.frames = frames
        self.memory = memory
        self.dom = dom
        self.charge = charge
        self.hooks = None
        self.extended_cr3 = False     # VMASST_TYPE_pae_extended_cr3
        self.l3_below_4g_enforced = False   # once vcpu0 is up (tools get slack)
        self.allow_shared_xen_l2 = False    # strategy: may several L3s share slot 3's L2?
        self.last_error = ""
        self._kl2_cache: dict[tuple, tuple] = {}    # kernel L2 guest slots -> _kernel_l2
        self._kl2_replaced = frames.replaced
        frames.alloc_page_type = self.alloc_page_type
        frames.free_page_type = self.free_page_type

    def _fail(self, msg: str) -> bool:
        self.last_error = msg
        return False

    # -- single entries ---------------------------------------------------------------------
    def get_page_from_l1e(self, e: int) -> bool:
        if not e & P:
            return True
        if not e & L1_DISALLOW_RAW:
            # fast paths: a data frame of the domain, for which get_page (and, if RW,
            # get_page_type(WRITABLE)) cannot fail and needs no flush, done in one step
            frames = self.frames
            m = (e & PADDR_MASK) >> 12
            info = _dget(frames.pages, m)
            if info is None and m in frames.lazy_direct:
                info = frames.pages[m]               # materialise, then the paths below
            if info is None:
                owner = frames.lazy_owner.get(m)
                if owner is not None and owner == self.dom:
                    # never used: count 1 (allocation), no type, stamp 0 (no stale TLB)
                    frames.pages[m] = (PageInfo(m, owner, 2, _WRITABLE, 1, True) if e & RW
                                       else PageInfo(m, owner, 2))
                    frames.touched.add(m)
                    return True
            elif info.owner == self.dom and info.count < PGC_COUNT_MAX:
                if not e & RW:
                    info.count += 1
                    frames.touched.add(m)
                    return True
                if info.type == _WRITABLE:
                    if info.tcount < PGT_COUNT_MAX and (
                            info.tcount or (info.validated and not info.xen_l2)):
                        info.count += 1
                        info.tcount += 1
                        frames.touched.add(m)
                        return True
                elif info.type == _NONE and not info.tcount and not info.stamp:
                    info.count += 1
                    info.type, info.tcount, info.validated = _WRITABLE, 1, True
                    frames.touched.add(m)
                    return True
        if pte_flags(e) & L1_DISALLOW_MASK:
            return self._fail(f"L1e {e:#018x}: disallowed flags "
                              f"{pte_flags(e) & L1_DISALLOW_MASK:#x}")
        mfn = entry_mfn(e)
        if not self.frames.get_page(mfn, self.dom):
            return self._fail(f"L1e {e:#018x}: mfn {mfn:#x} not owned by the domain")
        if e & RW and not self.frames.get_page_type(mfn, _WRITABLE):
            self.frames.put_page(mfn)
            info = self.frames.pages[mfn]
            return self._fail(f"L1e {e:#018x}: mfn {mfn:#x} is a {info.type.name} page; "
                              f"a page-table page may not be writable")
        return True

    def put_page_from_l1e(self, e: int) -> None:
        if not e & P:
            return
        mfn = entry_mfn(e)
        info = _dget(self.frames.pages, mfn)
        if info is not None:                         # fast paths
            if e & RW:
                if info.tcount > 1 and info.count > 1:   # other writable holders remain
                    info.tcount -= 1
                    info.count -= 1
                    self.frames.touched.add(mfn)
                    return
                if (info.tcount == 1 and info.type == _WRITABLE and not info.pinned
                        and info.count > 0):         # the last: put_page_type's 1 -> 0
                    info.tcount = 0
                    info.stamp = self.frames.tlbclock
                    info.xen_l2 = False
                    info.count -= 1
                    self.frames.touched.add(mfn)
                    return
            elif info.count > 0:                     # put_page of a read-only mapping
                info.count -= 1
                self.frames.touched.add(mfn)
                return
        if e & RW:
            self.frames.put_page_type(mfn)
        self.frames.put_page(mfn)

    def get_page_from_l2e(self, e: int) -> bool:
        if not e & P:
            return True
        if not e & L2_DISALLOW_RAW:                  # fast path: an L1 already in use
            info = _dget(self.frames.pages, (e & PADDR_MASK) >> 12)
            if (info is not None and info.owner == self.dom and info.type == _L1
                    and info.tcount and info.tcount < 0xFFFF and info.count < 0x1FFFFFFF):
                info.count += 1
                info.tcount += 1
                self.frames.touched.add(info.mfn)
                return True
        if pte_flags(e) & L2_DISALLOW_MASK:
            return self._fail(f"L2e {e:#018x}: disallowed flags "
                              f"{pte_flags(e) & L2_DISALLOW_MASK:#x} (no PSE for PV)")
        mfn = entry_mfn(e)
        if not self.frames.get_page_and_type(mfn, self.dom, _L1):
            return self._fail(self.last_error if self.last_error.startswith("L1")
                              else f"L2e {e:#018x}: mfn {mfn:#x} cannot be an L1 "
                                   f"({self.frames.pages.get(mfn)!r})")
        return True

    def put_page_from_l2e(self, e: int) -> None:
        if e & P:
            info = _dget(self.frames.pages, (e & PADDR_MASK) >> 12)
            if info is not None and info.tcount > 1 and info.count > 1:   # fast path
                info.tcount -= 1
                info.count -= 1
                self.frames.touched.add(info.mfn)
                return
            self.frames.put_page_and_type(entry_mfn(e))

    def get_page_from_l3e(self, e: int, slot: int) -> bool:
        if not e & P:
            if slot == 3:
                return self._fail("L3 slot 3 must be present (it holds Xen's L2)")
            return True
        if pte_flags(e) & L3_DISALLOW_MASK:
            return self._fail(f"L3e {e:#018x}: disallowed flags "
                              f"{pte_flags(e) & L3_DISALLOW_MASK:#x}")
        mfn = entry_mfn(e)
        if not self.frames.get_page_and_type(mfn, self.dom, _L2, xen_l2=(slot == 3)):
            kind = "L2|pae_xen_l2" if slot == 3 else "L2"
            return self._fail(f"L3e {slot} {e:#018x}: mfn {mfn:#x} cannot be an {kind} "
                              f"({self.frames.pages.get(mfn)!r})")
        return True

    def put_page_from_l3e(self, e: int) -> None:
        if e & P:
            self.frames.put_page_and_type(entry_mfn(e))

    # -- whole tables -----------------------------------------------------------------------
    # alloc_lN_table / free_lN_table. The loops below inline the single-entry fast paths of
    # get/put_page_from_lNe (same tests, same order, same side effects) and fall back to the
    # methods above for everything else; zero words are skipped in C (`filter(None, ...)`)
    # before the present test. A table is read once, before its first entry is taken.
    def _entries(self, mfn: int, limit: int = 512) -> list[int]:
        """The present entries of a table, slots below `limit`."""
        words = self.memory.frame_words(mfn)
        return [e for e in filter(None, words[:limit] if limit < 512 else words) if e & P]

    def alloc_page_type(self, info: PageInfo, type_: PGT) -> bool:
        self.charge("pv_validate_table", 1)
        if type_ == _L1:
            return self._alloc_l1(info.mfn)
        if type_ == _L2:
            if not self._alloc_l2(info.mfn, FIRST_XEN_SLOT if info.xen_l2 else 512):
                return False
            if info.xen_l2:
                self.hooks.l2_validated(info)
            return True
        if type_ == _L3:
            return self._alloc_l3(info)
        return True

    def _alloc_l1(self, mfn: int) -> bool:
        words = self.memory.frame_words(mfn)
        present = [e for e in filter(None, words) if e & P]
        if present and self._alloc_l1_fresh(present):
            self.charge("pv_validate_entry", len(present))
            return True
        get = self.get_page_from_l1e
        n = 0
        for e in present:
            if not get(e):
                return self._undo(words, 512, n, self.put_page_from_l1e)
            n += 1
        self.charge("pv_validate_entry", n)
        return True

    def _alloc_l1_fresh(self, present: list[int]) -> bool:
        """An L1 whose entries are all writable mappings of distinct frames of the domain
        that were never used (a direct map being built): each entry would take
        get_page_from_l1e's never-used path, so do them all at once, leaving the frames
        unmaterialised in the state that path gives them (FrameTable.lazy_direct). False:
        nothing done."""
        if set(map((L1_DISALLOW_RAW | RW | P).__and__, present)) != {RW | P}:
            return False
        frames, dom = self.frames, self.dom
        mfns = [(e & PADDR_MASK) >> 12 for e in present]
        fresh = dict.fromkeys(mfns, dom)
        if (len(fresh) != len(mfns) or not fresh.keys().isdisjoint(dict.keys(frames.pages))
                or not fresh.keys().isdisjoint(frames.lazy_direct.keys())
                or set(map(frames.lazy_owner.get, mfns)) != {dom}):
            return False
        frames.lazy_direct.update(fresh)
        frames.touched.update(mfns)
        return True

    def _alloc_l2(self, mfn: int, limit: int) -> bool:
        words = self.memory.frame_words(mfn)
        if limit == FIRST_XEN_SLOT:
            hit = self._kernel_l2(words)
            if hit is not None:                  # same checks, same order, fewer lookups
                present, infos, mfns = hit
                dom, n = self.dom, 0
                for info in infos:
                    if not (info.owner == dom and info.type == _L1 and info.tcount
                            and info.tcount < PGT_COUNT_MAX and info.count < PGC_COUNT_MAX):
                        break
                    info.count += 1
                    info.tcount += 1
                    n += 1
                else:
                    self.frames.touched.update(mfns)
                    self.charge("pv_validate_entry", n)
                    return True
                return self._alloc_l2_entries(words, limit, present, n)
        present = [e for e in filter(None, words[:limit] if limit < 512 else words) if e & P]
        return self._alloc_l2_entries(words, limit, present, 0)

    def _alloc_l2_entries(self, words: list[int], limit: int, present: list[int],
                          n: int) -> bool:
        """alloc_l2_table from present entry n on (the n before it are taken)."""
        dom, pages = self.dom, self.frames.pages
        try:
            for e in present[n:] if n else present:
                if not e & L2_DISALLOW_RAW:             # get_page_from_l2e's fast path
                    info = _dget(pages, (e & PADDR_MASK) >> 12)
                    if (info is not None and info.owner == dom and info.type == _L1
                            and info.tcount and info.tcount < PGT_COUNT_MAX
                            and info.count < PGC_COUNT_MAX):
                        info.count += 1
                        info.tcount += 1
                        n += 1
                        continue
                if not self.get_page_from_l2e(e):
                    return self._undo(words, limit, n, self.put_page_from_l2e)
                n += 1
        finally:
            self._touch(present, n)
        self.charge("pv_validate_entry", n)
        return True

    def _kernel_l2(self, words: list[int]):
        """(present entries, their PageInfos, their mfns) of a kernel L2's guest slots, when
        every entry passes get_page_from_l2e's flag test and every target has a PageInfo;
        else None. Per-pagetable pins validate one private copy of the same kernel L2 per
        pgd, so the result is kept per content (a PageInfo, once made, stays the frame's
        own unless FrameTable.add replaces it)."""
        if self._kl2_replaced != self.frames.replaced or len(self._kl2_cache) > 64:
            self._kl2_cache.clear()
            self._kl2_replaced = self.frames.replaced
        key = tuple(words[:FIRST_XEN_SLOT])
        hit = self._kl2_cache.get(key)
        if hit is None:
            present = [e for e in filter(None, key) if e & P]
            if any(e & L2_DISALLOW_RAW for e in present):
                return None
            mfns = [(e & PADDR_MASK) >> 12 for e in present]
            infos = [_dget(self.frames.pages, m) for m in mfns]
            if None in infos:
                return None
            hit = self._kl2_cache[key] = (present, infos, mfns)
        return hit

    def _touch(self, present: list[int], n: int) -> None:
        """The fast paths' `touched.add` of the first n entries' targets, batched (a target
        the general path took a reference on is in the set already)."""
        self.frames.touched.update([(e & PADDR_MASK) >> 12 for e in present[:n]])

    def _undo(self, words: list[int], limit: int, n: int, put: Callable[[int], None]) -> bool:
        """Entry n of a table failed: charge the n + 1 entries looked at and release the n
        taken, last first (XSA-58: exactly what was taken)."""
        self.charge("pv_validate_entry", n + 1)
        done = [e for e in words[:limit] if e & P][:n]
        for old in reversed(done):
            put(old)
        return False

    def _alloc_l3(self, info: PageInfo) -> bool:
        if info.mfn >= L3_LIMIT_MFN and not self.extended_cr3 and self.l3_below_4g_enforced:
            return self._fail(f"L3 mfn {info.mfn:#x} is above 4 GiB and the guest has not "
                              f"enabled VMASST_TYPE_pae_extended_cr3")
        entries = self.memory.frame_words(info.mfn)[:4]
        done = []
        self.charge("pv_validate_entry", 4)
        for slot, e in enumerate(entries):
            if not self.get_page_from_l3e(e, slot):
                for old in reversed(done):
                    self.put_page_from_l3e(old)
                return False
            done.append(e)
        kl2 = self.frames.pages[entry_mfn(entries[3])]
        if kl2.tcount != 1 and not self.allow_shared_xen_l2:
            for old in reversed(done):
                self.put_page_from_l3e(old)
            return self._fail(f"L3 mfn {info.mfn:#x}: PAE L3 3rd slot is shared (L2 mfn "
                              f"{kl2.mfn:#x} has type count {kl2.tcount})")
        self.hooks.l3_validated(info)
        return True

    def free_page_type(self, info: PageInfo, type_: PGT) -> None:
        mfn = info.mfn
        if type_ == _L1:
            self._free_l1(mfn)
        elif type_ == _L2:
            self._free_l2(mfn, FIRST_XEN_SLOT if info.xen_l2 else 512)
        elif type_ == _L3:
            for e in self._entries(mfn, 4):
                self.put_page_from_l3e(e)
        self.hooks.table_freed(info)

    def _free_l1(self, mfn: int) -> None:
        pages = self.frames.pages
        present = [e for e in filter(None, self.memory.frame_words(mfn)) if e & P]
        n = 0
        try:
            for e in present:
                info = _dget(pages, (e & PADDR_MASK) >> 12)
                if info is not None and (                # put_page_from_l1e's fast paths
                        (info.tcount > 1 and info.count > 1) if e & RW else info.count > 0):
                    info.count -= 1
                    if e & RW:
                        info.tcount -= 1
                else:
                    self.put_page_from_l1e(e)
                n += 1
        finally:
            self._touch(present, n)

    def _free_l2(self, mfn: int, limit: int) -> None:
        words = self.memory.frame_words(mfn)
        n = 0
        if limit == FIRST_XEN_SLOT:
            hit = self._kernel_l2(words)
            if hit is not None:                 # put_page_from_l2e's fast path, fewer lookups
                present, infos, mfns = hit
                for info in infos:
                    if not (info.tcount > 1 and info.count > 1):
                        break
                    info.tcount -= 1
                    info.count -= 1
                    n += 1
                else:
                    self.frames.touched.update(mfns)
                    return
        if not n:
            present = [e for e in filter(None, words[:limit] if limit < 512 else words)
                       if e & P]
        pages = self.frames.pages
        try:
            for e in present[n:] if n else present:
                info = _dget(pages, (e & PADDR_MASK) >> 12)
                if info is not None and info.tcount > 1 and info.count > 1:   # fast path
                    info.tcount -= 1
                    info.count -= 1
                else:
                    self.put_page_from_l2e(e)
                n += 1
        finally:
            self._touch(present, n)

    # -- checked updates (mod_lN_entry) -----------------------------------------------------
    def mod_l1_entry(self, old: int, new: int, where, addr: int) -> bool:
        """Update one L1e whose current value is `old`, stored by `where.write_u64(addr,
        ...)`: a VCPU's CPU and a linear address (a store that may fault: nothing is
        changed then) or machine memory and a machine address."""
        if new & P:
            if new & L1_DISALLOW_RAW:                # == pte_flags(new) & L1_DISALLOW_MASK
                return self._fail(f"L1e {new:#018x}: disallowed flags "
                                  f"{pte_flags(new) & L1_DISALLOW_MASK:#x}")
            if old & P and not (old ^ new) & ~FASTPATH_WHITELIST:
                try:
                    where.write_u64(addr, new)
                except PageFault:
                    return self._fail("L1e store faulted")
                return True
            if not self.get_page_from_l1e(new):
                return False
        try:
            where.write_u64(addr, new)
        except PageFault:
            self.put_page_from_l1e(new)
            return self._fail("L1e store faulted")
        if old & P:
            self.put_page_from_l1e(old)
        return True

    def mod_l2_entry(self, l2: PageInfo, idx: int, new: int) -> bool:
        if l2.xen_l2 and idx >= FIRST_XEN_SLOT:
            return self._fail(f"L2 mfn {l2.mfn:#x} slot {idx}: a Xen slot cannot be written")
        pa = (l2.mfn << 12) + 8 * idx
        old = self.memory.read_u64(pa)
        if new & P:
            if pte_flags(new) & L2_DISALLOW_MASK:
                return self._fail(f"L2e {new:#018x}: disallowed flags "
                                  f"{pte_flags(new) & L2_DISALLOW_MASK:#x} (no PSE for PV)")
            if old & P and not (old ^ new) & ~FASTPATH_WHITELIST:
                self.memory.write_u64(pa, new)
                self.hooks.l2_entry_changed(l2.mfn, idx, old, new)
                return True
            if not self.get_page_from_l2e(new):
                return False
        self.memory.write_u64(pa, new)
        self.put_page_from_l2e(old)
        self.hooks.l2_entry_changed(l2.mfn, idx, old, new)
        return True

    def mod_l3_entry(self, l3: PageInfo, idx: int, new: int) -> bool:
        if idx >= 3:
            return self._fail(f"L3 mfn {l3.mfn:#x} slot {idx}: slot 3 (Xen's L2) is "
                              f"immutable")
        pa = (l3.mfn << 12) + 8 * idx
        old = self.memory.read_u64(pa)
        if new & P:
            if pte_flags(new) & L3_DISALLOW_MASK:
                return self._fail(f"L3e {new:#018x}: disallowed flags "
                                  f"{pte_flags(new) & L3_DISALLOW_MASK:#x}")
            if old & P and not (old ^ new) & ~(0xE00):
                self.memory.write_u64(pa, new)
                return True
            if not self.get_page_from_l3e(new, idx):
                return False
        self.memory.write_u64(pa, new)
        self.put_page_from_l3e(old)
        self.hooks.l3_entry_changed(l3.mfn, idx)
        return True
