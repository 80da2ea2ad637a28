"""Shadow entries: propagation from guest entries, installing them with references, making
and destroying shadows, re-validating guest page-table writes, and the pool's eviction.

Follows reference/shadow.md §3 (`_sh_propagate`, A/D emulation) and §4 (shadow types,
pinning, `_shadow_prealloc`), after Xen 3.3 `xen/arch/x86/mm/shadow/multi.c`
(`l1e_propagate_from_guest`, `shadow_set_l1e`/`shadow_set_l2e`, `sh_validate_guest_entry`)
and `common.c` (`shadow_prealloc`, `sh_destroy_shadow`):
- a shadow entry is present only if the guest entry is present, has A set, has no reserved
  bit and names a frame of the domain; an L1 (or fl1) shadow entry is writable only if the
  guest entry has D set and the target is not a shadowed page table (an out-of-sync page's
  recorded writable mappings excepted); higher-level shadow entries get A|D up front;
  GLOBAL is never propagated (Xen's pass-through mask has no G), so every shadow-root
  change flushes every translation a VCPU holds;
- each installed L1 entry takes a reference on its target frame, and a writable one is
  recorded as a writable mapping of that frame (Xen: get_page + PGT_writable_page type
  ref); each L2 entry takes a reference on the child shadow. An entry whose reference
  fails is never installed (XSA-249/250);
- a shadow whose last reference goes is destroyed; a change that removes or narrows a
  present shadow entry needs a TLB flush of every VCPU (SHADOW_SET_FLUSH ->
  flush_tlb_mask), which the caller does;
- pool exhaustion: unpin top-level shadows least-recently-used first (those not in any
  VCPU's CR3), then unhook every guest entry of the top-level shadows in use and flush;
  if that cannot free enough the domain is crashed, never the host (XSA-410).
This is a mixin of `ShadowEngine`; the attributes it uses are set up in engine.py.
"""
from __future__ import annotations

from itertools import compress, count

from engines.api import GuestCrash
from engines.hw import U64_MASK

from .modes import F_A, F_D, F_P, F_PS, F_RW, F_US, F_XD
from .p2m import XEN_FIRST_SLOT
from .pool import SH_FL1, SH_L1, SH_L2H, ShadowPage

REF_MAX = (1 << 26) - 1       # width of a frame's shadow reference count (PGC_count_mask-like)
PREFETCH_DISTANCE = 32        # Xen's PREFETCH_DISTANCE
_L2_FLAGS = F_P | F_A | F_D
_P_A, _P_A_D, _RW_D = F_P | F_A, F_P | F_A | F_D, F_RW | F_D
_INDICES = tuple(range(512))


class ShadowOps:
    """Mixin: shadow entry propagation, references, shadow lifetime, eviction."""

    # -- propagation (guest entry -> shadow entry) -----------------------------------------
    def _sl1e_from_guest(self, gl1e: int, nxe: bool, sp: ShadowPage, idx: int) -> int:
        if gl1e & _P_A != _P_A or gl1e & self._rsvd[nxe][0]:
            return 0
        gfn = (gl1e & self._amask) >> 12
        if gfn >= self.nr_pages:
            return 0
        flags = _P_A_D | (gl1e & F_US)
        if gl1e & _RW_D == _RW_D and (gfn not in self.pool.by_gfn
                                      or self._oos_may_write(gfn, sp.smfn, idx)):
            flags |= F_RW
        if nxe and gl1e >= F_XD:                 # (bit 63: a compare allocates nothing)
            flags |= F_XD
        return (self._p2m[gfn] << 12) | flags

    def _fl1e(self, sp: ShadowPage, idx: int) -> int:
        """Entry `idx` of an fl1 shadow (a splintered superpage, key[2] = guest D bit)."""
        gfn = sp.gfn + idx
        mfn = self.p2m.mfn(gfn)
        if mfn < 0:
            return 0
        flags = F_P | F_A | F_D | F_US
        if sp.key[2] and self._may_write(gfn, sp.smfn, idx):
            flags |= F_RW
        return (mfn << 12) | flags

    def _sl1e_for(self, sp: ShadowPage, idx: int, gword: int, nxe: bool) -> int:
        if sp.type == SH_FL1:
            return self._fl1e(sp, idx)
        return self._sl1e_from_guest(gword, nxe, sp, idx)

    def _may_write(self, gfn: int, smfn: int, idx: int) -> bool:
        return gfn not in self.pool.by_gfn or self._oos_may_write(gfn, smfn, idx)

    def _oos_may_write(self, gfn: int, smfn: int, idx: int) -> bool:
        """A page table's frame may be mapped writable only by an out-of-sync page's
        recorded writable mappings."""
        rec = self.oos_pages.get(gfn)
        return rec is not None and (smfn, idx) in rec.fixups

    def _sl2e_from_guest(self, gl2e: int, nxe: bool, vcpu: int, create: bool) -> int:
        if gl2e & (F_P | F_A) != F_P | F_A:
            return 0
        large = bool(gl2e & F_PS)
        if gl2e & self._rsvd[nxe][2 if large else 1]:
            return 0
        if large:
            base = self.mode.leaf_gfn(gl2e, 2, 0, self.spec.maxphyaddr)
            child = self._get_fl1(vcpu, base, bool(gl2e & F_D), create)
        else:
            gfn = (gl2e & self._amask) >> 12
            if gfn >= self.nr_pages:
                return 0
            child = self.pool.hash.get((gfn, SH_L1))
            if child is None and create:
                child = self._new_shadow(vcpu, SH_L1, gfn, (gfn, SH_L1))
        if child is None:
            return 0
        flags = _L2_FLAGS | (gl2e & (F_RW | F_US))
        if nxe and gl2e & F_XD:
            flags |= F_XD
        return (child.smfn << 12) | flags

    # -- installing entries -------------------------------------------------------------------
    def _set_sl1e(self, sp: ShadowPage, idx: int, new: int) -> bool:
        """shadow_set_l1e: install `new` at `idx`, moving frame references. True when a
        present entry was removed or narrowed (the caller must flush)."""
        words = self._frame(sp.smfn)
        old = 0 if words is None else words[idx]
        if old == new:
            return False
        amask = self._amask
        flush = False
        if new & F_P:
            mfn = (new & amask) >> 12
            mapcount = self.mapcount
            count = mapcount.get(mfn, 0)
            if count >= REF_MAX:                          # sh_get_ref failed: install nothing
                raise GuestCrash(f"shadow reference count of mfn {mfn:#x} would exceed "
                                 f"{REF_MAX:#x} mapping it from {sp!r} entry {idx}")
            mapcount[mfn] = count + 1
            if new & F_RW:
                maps = self.wrmaps.get(mfn)
                if maps is None:
                    self.wrmaps[mfn] = {(sp.smfn, idx)}
                else:
                    maps.add((sp.smfn, idx))
        if old & F_P:
            mfn = (old & amask) >> 12
            mapcount = self.mapcount
            n = mapcount[mfn] - 1
            if n:
                mapcount[mfn] = n
            else:
                del mapcount[mfn]
            if old & F_RW and (new & (F_P | F_RW) != F_P | F_RW
                               or (new ^ old) & amask):     # (not: the same mapping again)
                maps = self.wrmaps[mfn]
                maps.discard((sp.smfn, idx))
                if not maps:
                    del self.wrmaps[mfn]
            flush = bool(not new & F_P or (old ^ new) & amask or (old & ~new & (F_RW | F_US))
                         or (new & ~old & F_XD))
        # memory.write_u64 inlined for a materialised frame and no watchers
        memory = self.memory
        if words is None or memory.watch or not 0 <= new <= U64_MASK:
            memory.write_u64((sp.smfn << 12) | (idx << 3), new)
        else:
            words[idx] = new
        return flush

    def _set_sl2e(self, sp: ShadowPage, idx: int, new: int) -> bool:
        """shadow_set_l2e: install `new`, moving the child shadow's reference."""
        words = self._frame(sp.smfn)
        old = 0 if words is None else words[idx]
        if old == new:
            return False
        if new & F_P:
            child = self.pool.by_smfn[(new & self._amask) >> 12]
            child.refs += 1
            child.up.add((sp, idx))
        # memory.write_u64 inlined for a materialised frame and no watchers, as in _set_sl1e
        memory = self.memory
        if words is None or memory.watch or not 0 <= new <= U64_MASK:
            memory.write_u64((sp.smfn << 12) | (idx << 3), new)
        else:
            words[idx] = new
        if old & F_P:
            child = self.pool.by_smfn[(old & self._amask) >> 12]
            if not new & F_P or (new ^ old) & self._amask:    # (not: the same child again)
                child.up.discard((sp, idx))
            child.refs -= 1
            if child.refs == 0:
                self._destroy(child)
            return True
        return False

    def _nonzero(self, mfn: int) -> list[tuple[int, int]]:
        """`memory.nonzero_words(mfn)` (index, value) in index order, the scan done in C
        (over a tuple of the 512 indices: no int object made per word, as `enumerate`
        would; a shadow L1 being destroyed is mostly zeros)."""
        words = self._frame(mfn)
        return [] if words is None else [(i, words[i]) for i in compress(_INDICES, words)]

    # -- making and destroying shadows -------------------------------------------------------
    def _new_shadow(self, vcpu: int, type_: str, gfn: int, key: tuple) -> ShadowPage:
        if not self.pool.free:
            raise GuestCrash(f"shadow pool of {self.pool.size} pages exhausted building a "
                             f"{type_} shadow of gfn {gfn:#x} (no prealloc)")
        first = gfn not in self.pool.by_gfn
        sp = self.pool.take(type_, gfn, key)
        self.charge(vcpu, "page_clear")                   # shadow_alloc clears the page
        if type_ != SH_FL1:
            self._promote(vcpu, gfn, first)
        return sp

    def _promote(self, vcpu: int, gfn: int, first: bool) -> None:
        """A guest frame gains a page-table shadow: resync it if out of sync, and on first
        promotion remove every writable mapping of it."""
        if gfn in self.oos_pages:
            self._resync(vcpu, gfn)
        if first:
            self._remove_write_access(vcpu, gfn)

    def _get_fl1(self, vcpu: int, base: int, dirty: bool, create: bool) -> ShadowPage | None:
        key = (base, SH_FL1, dirty)
        sp = self.pool.lookup(key)
        if sp is None and create:
            sp = self._new_shadow(vcpu, SH_FL1, base, key)
            for idx in range(512):               # one guest entry decides all 512 entries
                e = self._fl1e(sp, idx)
                if e:
                    self._set_sl1e(sp, idx, e)
            self.charge(vcpu, "sh_prefetch_entry", 511)
        return sp

    def _get_top(self, vcpu: int, gfn: int, type_: str) -> ShadowPage:
        key = (gfn, type_)
        sp = self.pool.lookup(key)
        if sp is None:
            sp = self._new_shadow(vcpu, type_, gfn, key)
            if type_ == SH_L2H:
                self.xen.install(sp.smfn)
        self.pool.pin(sp)
        return sp

    def _destroy(self, sp: ShadowPage) -> None:
        """sh_destroy_shadow: drop every entry's reference and free the page."""
        if sp.type in (SH_L1, SH_FL1):
            self._clear_l1(sp)
            if sp.oos:
                self._drop_oos(sp.gfn)
        else:
            for idx, _e in self._nonzero(sp.smfn):
                if not (sp.type == SH_L2H and idx >= XEN_FIRST_SLOT):
                    self._set_sl2e(sp, idx, 0)
            self.memory.zero_frame(sp.smfn)
        self.pool.give_back(sp)

    def _clear_l1(self, sp: ShadowPage) -> None:
        """`_set_sl1e(sp, idx, 0)` for every non-zero entry, in index order, in one pass:
        the same reference and writable-mapping bookkeeping, and the frame left holding
        zeros (still materialised, as entry-by-entry stores leave it)."""
        memory = self.memory
        words = self._nonzero(sp.smfn)
        if not words:
            return
        smfn, amask, mapcount, wrmaps = sp.smfn, self._amask, self.mapcount, self.wrmaps
        for idx, old in words:
            if old & F_P:
                mfn = (old & amask) >> 12
                n = mapcount[mfn] - 1
                if n:
                    mapcount[mfn] = n
                else:
                    del mapcount[mfn]
                if old & F_RW:
                    maps = wrmaps[mfn]
                    maps.discard((smfn, idx))
                    if not maps:
                        del wrmaps[mfn]
        memory.zero_frame(smfn)
        memory.write_u64(smfn << 12, 0)

    def _unpin(self, sp: ShadowPage) -> None:
        if sp.pinned:
            sp.pinned = False
            self.pool.pinned.pop(sp, None)
            sp.refs -= 1
            if sp.refs == 0:
                self._destroy(sp)

    # -- guest page-table writes ------------------------------------------------------------
    def _validate_gpte(self, vcpu: int, gfn: int, idx: int, word: int | None = None) -> bool:
        """sh_validate_guest_entry: re-propagate entry `idx` of guest frame `gfn` (holding
        `word`, read here if not given) into every shadow of it. True when a TLB flush is
        needed."""
        shadows = self.pool.by_gfn.get(gfn)
        if not shadows:
            return False
        if word is None:
            words = self._frame(self._p2m[gfn])
            word = 0 if words is None else words[idx]
        nxe = self.vs[vcpu].nxe
        if len(shadows) == 1 and shadows[0].type == SH_L1:      # the common case
            sp = shadows[0]
            new = self._sl1e_from_guest(word, nxe, sp, idx)
            words = self._frame(sp.smfn)
            if new == (0 if words is None else words[idx]):
                return False                                 # (_set_sl1e's first test)
            return self._set_sl1e(sp, idx, new)
        flush = False
        for sp in list(shadows):
            if sp.type == SH_L1:
                flush |= self._set_sl1e(sp, idx, self._sl1e_from_guest(word, nxe, sp, idx))
            elif not (sp.type == SH_L2H and idx >= XEN_FIRST_SLOT):
                flush |= self._set_sl2e(sp, idx, self._sl2e_from_guest(word, nxe, vcpu, False))
        return flush

    # -- pool pressure ----------------------------------------------------------------------------
    def _prealloc(self, vcpu: int, need: int, keep: frozenset = frozenset()) -> None:
        """_shadow_prealloc: make sure `need` pages are free before building a chain
        (never unpinning the top-level shadows `keep`, about to be loaded)."""
        pool = self.pool
        if len(pool.free) >= need:
            return
        for sp in list(pool.pinned):                      # 1: unpin LRU tops not in use
            if not sp.users and sp.key not in keep:
                self._stat("sh.prealloc_unpin")
                self._unpin(sp)
                if len(pool.free) >= need:
                    return
        self._stat("sh.prealloc_unhook")                 # 2: unhook the tops in use
        for sp in self._tops_in_use():
            for idx, _e in self._nonzero(sp.smfn):
                if not (sp.type == SH_L2H and idx >= XEN_FIRST_SLOT):
                    self._set_sl2e(sp, idx, 0)
        self._flush_all(vcpu)
        if len(pool.free) < need:
            raise GuestCrash(f"shadow pool of {pool.size} pages cannot hold the {need} pages "
                             f"one fault needs after unpinning and unhooking everything")

    def _tops_in_use(self) -> list[ShadowPage]:
        """Top-level shadows in some VCPU's CR3, plus the physical-mode L2s."""
        seen: dict[int, ShadowPage] = {sp.smfn: sp for sp in self.unpaged}
        for vs in self.vs:
            for sp in vs.tops:
                if sp is not None:
                    seen[sp.smfn] = sp
        return list(seen.values())

    # -- prefetch ---------------------------------------------------------------------------------
    def _prefetch(self, vcpu: int, sp: ShadowPage, idx: int) -> bool:
        """SHOPT_PREFETCH: propagate the following guest entries whose shadows are empty,
        up to the first shadow entry already present. (Both pages are read whole up front:
        each step writes only its own shadow entry.)"""
        first, end = idx + 1, min(idx + PREFETCH_DISTANCE, 512)
        if first >= end:
            return False
        swords = self.memory.frame_words(sp.smfn)[first:end]
        n = next(compress(count(), swords), len(swords))       # empty shadow entries ahead
        if not n:
            return False
        gwords = self.memory.frame_words(self._p2m[sp.gfn])
        nxe = self.vs[vcpu].nxe
        flush = False
        for j in compress(range(first, first + n), gwords[first:first + n]):   # non-zero
            e = self._sl1e_from_guest(gwords[j], nxe, sp, j)
            if e:
                flush |= self._set_sl1e(sp, j, e)
        self.charge(vcpu, "sh_prefetch_entry", n)
        return flush
