"""Writes to shadowed guest page tables: emulate, unshadow, or let the page go out of sync.

Follows reference/shadow.md §2 step 5 and §4 "Unshadowing heuristics" (Xen 3.3
`sh_page_fault`'s emulate path, `sh_x86_emulate_write`, `validate_guest_pt_write`,
`check_for_early_unshadow`):
- a supervisor write is emulated: the store is done to the guest frame the walk named and
  re-propagated into every shadow of that frame, flushing every VCPU's TLB when a present
  shadow entry was removed or narrowed (SHADOW_SET_FLUSH -> flush_tlb_mask);
- a PAE PTE written as two 32-bit halves costs one trap: Xen emulates up to 4 more
  instructions to catch the second half;
- fork/exit detection (SHOPT_EARLY_UNSHADOW): two emulated writes of zero to the same page
  in a row, with no other fault between, unshadow it; for PAE only the low half counts
  (a086d29d0e);
- a user-mode write is taken as a sign the page is no longer a page table: unshadow it and
  let the write go through. A page table that maps itself cannot be unshadowed (the walk
  that reaches it shadows it again), so its writes are emulated;
- whole-page stores (clear_page, copy_page): zeros trigger early unshadow after two stores;
  copy_page's `rep movs` is beyond the x86_emulate of the time and an emulation failure
  unshadows; otherwise all 512 stores are trapped and emulated;
- guest CR0.WP=0: a supervisor write the guest allows but the shadow refuses is done in
  software (the real CR0.WP stays 1).
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from engines.hw import A_USER, A_WRITE

from .accounting import SH_EMULATE
from .modes import F_P
from .p2m import XEN_FIRST_SLOT
from .pool import SH_L1, SH_L2H

_DONE = object()          # the fault path finished the access itself (emulated)
_RETRY = object()         # the shadow is ready: retry the access on the hardware


class Emulation:
    """Mixin: what happens to writes aimed at shadowed page tables."""

    def _pt_write(self, vcpu, va, access, walk, value, size, maddr, cont):
        """A write to a shadowed page table: unshadow (user mode), unsync, or emulate.
        None means "go on and fill the shadow", _RETRY "retry on the hardware"."""
        gfn = walk.gfn
        if value is None or access & A_USER:
            # a page table that maps itself is shadowed again by the very walk that reaches
            # it: unshadowing cannot make progress, so its writes are emulated
            own = False
            for gpa in walk.gpas:
                if gpa is not None and gpa >> 12 == gfn:
                    own = True
                    break
            if value is None:
                return self._pt_bulk(vcpu, gfn, maddr, own)
            if not own:
                if self._remove_shadows(vcpu, gfn, "user_write"):
                    return None if walk.writable else self._plain_write(vcpu, maddr, value,
                                                                        size)
                return self._emulate(vcpu, va, gfn, value, size, cont)
        # a supervisor write, or a user write to a page table that maps itself
        if walk.writable and self.opt["oos"] and self._oos_candidate(gfn) is not None:
            sp, idx = self._fill(vcpu, va, walk)
            sl1 = self._oos_candidate(gfn)          # the fill may have evicted it
            if sp is not None and sl1 is not None:
                self._unsync(vcpu, gfn, sl1, sp, idx)
                self.charge(vcpu, "sh_fill")
                return _RETRY
        return self._emulate(vcpu, va, gfn, value, size, cont)

    def _pt_bulk(self, vcpu: int, gfn: int, maddr: int, own: bool):
        """A whole-page store onto a shadowed page table. clear_page's zeros: two trapped,
        emulated stores, then early unshadow fires. copy_page's `rep movs` cannot be emulated
        by x86_emulate of the time, and an emulation failure unshadows. Without early
        unshadow, or when the frame is a top-level shadow in use (so cannot be unshadowed),
        every one of the 512 stores is trapped and emulated."""
        vs = self.vs[vcpu]
        src = vs.bulk_src
        if src is not None:
            zeros = src < 0
            if not own and (not zeros or self.opt["early_unshadow"]):
                self.charge(vcpu, "sh_emulate", 2 if zeros else 1)
                if zeros:
                    self.charge(vcpu, "trap")
                if self._remove_shadows(vcpu, gfn, "early" if zeros else "emulation_failed"):
                    return None
            self.charge(vcpu, "trap", 511)
            self.charge(vcpu, "sh_emulate", 512)
            vs.bulk_pending = gfn
            return maddr
        if not own and self._remove_shadows(vcpu, gfn, "bulk"):
            return None
        self._unhook_for_bulk(vcpu, gfn)
        return maddr

    def _plain_write(self, vcpu: int, maddr: int, value, size: int):
        if value is None:
            return maddr
        if size == 8:
            self.memory.write_u64(maddr, value)
        else:
            self.memory.write_u32(maddr, value)
        self.charge(vcpu, "sh_emulate")
        return _DONE

    def _emulate(self, vcpu: int, va: int, gfn: int, value: int, size: int, cont: bool):
        """sh_x86_emulate_write + sh_validate_guest_pt_write + early-unshadow detection, for
        the write at `va` the guest walk mapped to `gfn`. (The frame and offset are kept
        apart: a machine address above 1 GiB is a two-digit int, slower to operate on.)"""
        vs = self.vs[vcpu]
        self._cycles[vcpu] += self._hot_cost[SH_EMULATE]
        self._n[SH_EMULATE] += 1
        mfn, off = self._p2m[gfn], va & 0xFFF
        i = off >> 3
        if size == 8:
            self.memory.write_u64((mfn << 12) | off, value)
            word = value
        else:
            # memory.write_u32 inlined for a materialised frame and no watchers, keeping the
            # whole word to re-validate; anything else goes through it
            words = self._frame(mfn)
            if words is None or off & 3 or not 0 <= value <= 0xFFFFFFFF or self.memory.watch:
                maddr = (mfn << 12) | off
                self.memory.write_u32(maddr, value)
                word = self.memory.read_u64(maddr & ~7)
            elif off & 4:
                word = words[i] = (words[i] & 0xFFFFFFFF) | (value << 32)
            else:
                word = words[i] = (words[i] & ~0xFFFFFFFF) | value
        shadows = self.pool.by_gfn.get(gfn)
        if shadows is None:
            pass
        elif len(shadows) == 1 and shadows[0].type == SH_L1:   # _validate_gpte's common case
            sp = shadows[0]
            new = self._sl1e_from_guest(word, vs.nxe, sp, i) if word & F_P else 0
            swords = self._frame(sp.smfn)
            if new != (0 if swords is None else swords[i]) and self._set_sl1e(sp, i, new):
                self._flush_all(vcpu)
        elif self._validate_gpte(vcpu, gfn, i, word):
            self._flush_all(vcpu)
        vs.half = va if size == 4 and not cont else None
        if size == 4 and off & 4:
            return _DONE                                 # a high half neither counts nor resets
        if value == 0 and self.opt["early_unshadow"]:
            if vs.last_unshadow == gfn:
                vs.last_unshadow = None
                self._remove_shadows(vcpu, gfn, "early")
            else:
                vs.last_unshadow = gfn
        else:
            vs.last_unshadow = None
        return _DONE

    def _bulk_write(self, vcpu: int, va: int, src_mfn: int | None) -> None:
        """clear_page/copy_page: 512 stores. Onto a shadowed page table each would trap and
        be emulated until early unshadow fires; without it, all 512 are emulated."""
        vs = self.vs[vcpu]
        vs.bulk_src, vs.bulk_pending = (-1 if src_mfn is None else src_mfn), None
        try:
            maddr = self.translate(vcpu, va & ~0xFFF, A_WRITE)
        finally:
            vs.bulk_src = None
        if src_mfn is None:
            self.memory.zero_frame(maddr >> 12)
        else:
            self.memory.copy_frame(src_mfn, maddr >> 12)
        gfn, vs.bulk_pending = vs.bulk_pending, None
        if gfn is not None:
            flush = False
            for idx in range(512):
                flush |= self._validate_gpte(vcpu, gfn, idx)
            if flush:
                self._flush_all(vcpu)

    def _unhook_for_bulk(self, vcpu: int, gfn: int) -> None:
        """A whole-page write to an in-use page table that cannot be unshadowed: charge the
        512 emulated stores and empty its shadows so they refill from the new contents."""
        self.charge(vcpu, "trap", 511)
        self.charge(vcpu, "sh_emulate", 512)
        for sp in list(self.pool.by_gfn.get(gfn, ())):
            for idx, _e in self._nonzero(sp.smfn):
                if sp.type == SH_L1:
                    self._set_sl1e(sp, idx, 0)
                elif not (sp.type == SH_L2H and idx >= XEN_FIRST_SLOT):
                    self._set_sl2e(sp, idx, 0)
        self._flush_all(vcpu)

