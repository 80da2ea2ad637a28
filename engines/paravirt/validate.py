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

from engines.hw import PhysicalMemory

from .frames import PGT, FrameTable, PageInfo

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
        frames.alloc_page_type = self.alloc_page_type
        frames.free_page_type = self.free_page_type

    def _fail(self, msg: str) -> bool:
        self.last_error = msg
        return False

    # -- single entries ---------------------------------------------------------------------
    def get_page_from_l1e(self, e: int) -> bool:
        if not e & P:
            return True
        if not e & L1_DISALLOW_RAW and e & RW:       # fast paths for writable data frames
            info = self.frames.pages.get((e & PADDR_MASK) >> 12)
            if info is not None and info.owner == self.dom and info.count < 0x1FFFFFFF:
                if info.type == PGT.WRITABLE and 0 < info.tcount < 0xFFFF:
                    info.count += 1
                    info.tcount += 1
                    self.frames.touched.add(info.mfn)
                    return True
                if info.type == PGT.NONE and not info.tcount and not info.stamp:
                    info.count += 1                  # never typed: no TLB can be stale
                    info.type, info.tcount, info.validated = PGT.WRITABLE, 1, True
                    self.frames.touched.add(info.mfn)
                    return True
        if pte_flags(e) & L1_DISALLOW_MASK:
            return self._fail(f"L1e {e:#018x}: disallowed flags "
                              f"{pte_flags(e) & L1_DISALLOW_MASK:#x}")
        mfn = entry_mfn(e)
        if not self.frames.get_page(mfn, self.dom):
            return self._fail(f"L1e {e:#018x}: mfn {mfn:#x} not owned by the domain")
        if e & RW and not self.frames.get_page_type(mfn, PGT.WRITABLE):
            self.frames.put_page(mfn)
            info = self.frames.pages[mfn]
            return self._fail(f"L1e {e:#018x}: mfn {mfn:#x} is a {info.type.name} page; "
                              f"a page-table page may not be writable")
        return True

    def put_page_from_l1e(self, e: int) -> None:
        if not e & P:
            return
        mfn = entry_mfn(e)
        if e & RW:                                   # fast path: other writable holders
            info = _dget(self.frames.pages, mfn)
            if info is not None and info.tcount > 1 and info.count > 1:
                info.tcount -= 1
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
            if (info is not None and info.owner == self.dom and info.type == PGT.L1
                    and info.tcount and info.tcount < 0xFFFF and info.count < 0x1FFFFFFF):
                info.count += 1
                info.tcount += 1
                self.frames.touched.add(info.mfn)
                return True
        if pte_flags(e) & L2_DISALLOW_MASK:
            return self._fail(f"L2e {e:#018x}: disallowed flags "
                              f"{pte_flags(e) & L2_DISALLOW_MASK:#x} (no PSE for PV)")
        mfn = entry_mfn(e)
        if not self.frames.get_page_and_type(mfn, self.dom, PGT.L1):
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
        if not self.frames.get_page_and_type(mfn, self.dom, PGT.L2, xen_l2=(slot == 3)):
            kind = "L2|pae_xen_l2" if slot == 3 else "L2"
            return self._fail(f"L3e {slot} {e:#018x}: mfn {mfn:#x} cannot be an {kind} "
                              f"({self.frames.pages.get(mfn)!r})")
        return True

    def put_page_from_l3e(self, e: int) -> None:
        if e & P:
            self.frames.put_page_and_type(entry_mfn(e))

    # -- whole tables -----------------------------------------------------------------------
    def _entries(self, mfn: int, limit: int = 512) -> list[int]:
        """The present entries of a table, slots below `limit`."""
        words = self.memory.frame_words(mfn)
        return [e for e in (words[:limit] if limit < 512 else words) if e & P]

    def alloc_page_type(self, info: PageInfo, type_: PGT) -> bool:
        self.charge("pv_validate_table", 1)
        if type_ == PGT.L1:
            return self._alloc_table(info.mfn, self.get_page_from_l1e,
                                     self.put_page_from_l1e, 512)
        if type_ == PGT.L2:
            limit = FIRST_XEN_SLOT if info.xen_l2 else 512
            if not self._alloc_table(info.mfn, self.get_page_from_l2e,
                                     self.put_page_from_l2e, limit):
                return False
            if info.xen_l2:
                self.hooks.l2_validated(info)
            return True
        if type_ == PGT.L3:
            return self._alloc_l3(info)
        return True

    def _alloc_table(self, mfn: int, get: Callable[[int], bool], put: Callable[[int], None],
                     limit: int) -> bool:
        done: list[int] = []
        for e in self._entries(mfn, limit):
            if not get(e):
                self.charge("pv_validate_entry", len(done) + 1)
                for old in reversed(done):     # XSA-58: release exactly what was taken
                    put(old)
                return False
            done.append(e)
        self.charge("pv_validate_entry", len(done))
        return True

    def _alloc_l3(self, info: PageInfo) -> bool:
        if info.mfn >= L3_LIMIT_MFN and not self.extended_cr3 and self.l3_below_4g_enforced:
            return self._fail(f"L3 mfn {info.mfn:#x} is above 4 GiB and the guest has not "
                              f"enabled VMASST_TYPE_pae_extended_cr3")
        entries = [self.memory.read_u64((info.mfn << 12) + 8 * i) for i in range(4)]
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
        if type_ == PGT.L1:
            for e in self._entries(mfn):
                self.put_page_from_l1e(e)
        elif type_ == PGT.L2:
            for e in self._entries(mfn, FIRST_XEN_SLOT if info.xen_l2 else 512):
                self.put_page_from_l2e(e)
        elif type_ == PGT.L3:
            for e in self._entries(mfn, 4):
                self.put_page_from_l3e(e)
        self.hooks.table_freed(info)

    # -- checked updates (mod_lN_entry) -----------------------------------------------------
    def mod_l1_entry(self, old: int, write: Callable[[int], bool], new: int) -> bool:
        """Update one L1e whose current value is `old`; `write` stores through a machine or
        linear access and returns False if the store faulted (nothing is changed then)."""
        if new & P:
            if pte_flags(new) & L1_DISALLOW_MASK:
                return self._fail(f"L1e {new:#018x}: disallowed flags "
                                  f"{pte_flags(new) & L1_DISALLOW_MASK:#x}")
            if old & P and not (old ^ new) & ~FASTPATH_WHITELIST:
                return write(new) or self._fail("L1e store faulted")
            if not self.get_page_from_l1e(new):
                return False
        if not write(new):
            self.put_page_from_l1e(new)
            return self._fail("L1e store faulted")
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
