"""Out-of-sync L1 shadows (Xen 3.3 "shadow 3"), switchable per race cell.

Follows reference/shadow.md §4 "OOS" (commits 047782fa01 / 7ee9469202 / d067e4b077,
`sh_unsync`, `sh_resync`, `sh_resync_all`, `oos_fixup_add` in
`xen/arch/x86/mm/shadow/common.c`):
- a guest L1 that is shadowed *only* as an L1 and *only once* may be unsynced on a guest
  supervisor write fault instead of emulating the write: Xen snapshots the page, records
  the faulting writable mapping as a "fixup" (at most SHADOW_OOS_FIXUPS = 2 per page; a
  third evicts the oldest, which loses write access) and lets the guest write directly;
- each VCPU's table holds SHADOW_OOS_PAGES = 3 pages; unsyncing a fourth resyncs the
  oldest;
- resync compares every entry with the snapshot, re-propagates the ones that changed,
  write-protects the page again (removing its fixups) and flushes;
- resync points: CR3 load, guest TLB flush and invlpg, before a frame gains another
  shadow (promotion), and before a frame loses its shadows. This model resyncs *every*
  VCPU's out-of-sync pages at each flush point of any VCPU (Xen's `sh_resync_all` with
  `others`), so a correctly flushing guest on several VCPUs sees no difference from
  hardware;
- Xen 3.3 enabled OOS for HVM guests only; here it is an option of the translated PV
  guest, so the race can show what it would have bought.
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress, count
from operator import is_not

from .modes import F_RW
from .pool import SH_L1, ShadowPage

SHADOW_OOS_PAGES = 3
SHADOW_OOS_FIXUPS = 2


@dataclass
class OosPage:
    vcpu: int
    snapshot: list[int]
    fixups: list[tuple[int, int]] = field(default_factory=list)   # (sl1 smfn, index)


class OutOfSync:
    """Mixin: sh_unsync / sh_resync."""

    def _oos_candidate(self, gfn: int) -> ShadowPage | None:
        shadows = self.pool.by_gfn.get(gfn)
        if self.opt["oos"] and shadows and len(shadows) == 1 and shadows[0].type == SH_L1:
            return shadows[0]
        return None

    def _unsync(self, vcpu: int, gfn: int, sl1: ShadowPage, sp_map: ShadowPage,
                idx_map: int) -> None:
        """Let the guest write `gfn` directly through mapping (sp_map, idx_map)."""
        rec = self.oos_pages.get(gfn)
        if rec is None:
            table = self.vs[vcpu].oos
            if len(table) >= SHADOW_OOS_PAGES:
                self._resync(vcpu, table[0])
            rec = OosPage(vcpu, self.memory.frame_words(self.p2m.p2m[gfn]))
            self.charge(vcpu, "page_copy")                    # the snapshot
            self.oos_pages[gfn] = rec
            self.vs[vcpu].oos.append(gfn)
            sl1.oos = True
            self._stat("sh.oos_unsync")
        if (sp_map.smfn, idx_map) in rec.fixups:
            self._refresh_sl1e(vcpu, sp_map, idx_map)
            return
        if len(rec.fixups) >= SHADOW_OOS_FIXUPS:
            smfn, idx = rec.fixups.pop(0)
            sp = self.pool.by_smfn.get(smfn)
            if sp is not None:
                old = self.memory.read_u64((smfn << 12) | (idx << 3))
                if self._set_sl1e(sp, idx, old & ~F_RW):
                    self._flush_all(vcpu)
        rec.fixups.append((sp_map.smfn, idx_map))
        self._refresh_sl1e(vcpu, sp_map, idx_map)

    def _refresh_sl1e(self, vcpu: int, sp: ShadowPage, idx: int) -> bool:
        """Re-propagate entry `idx` of L1/fl1 shadow `sp` from the guest."""
        gword = 0
        if sp.type == SH_L1:
            gword = self.memory.read_u64((self.p2m.p2m[sp.gfn] << 12) | (idx << 3))
        return self._set_sl1e(sp, idx, self._sl1e_for(sp, idx, gword, self.vs[vcpu].nxe))

    def _resync(self, vcpu: int, gfn: int) -> None:
        """sh_resync: bring out-of-sync `gfn` back in sync and write-protect it again."""
        rec = self.oos_pages.pop(gfn)
        self.vs[rec.vcpu].oos.remove(gfn)
        self.charge(vcpu, "sh_resync")
        sl1 = self.pool.lookup((gfn, SH_L1))
        flush = False
        if sl1 is not None:
            sl1.oos = False
            nxe = self.vs[rec.vcpu].nxe
            words = self.memory.frame_words(self.p2m.p2m[gfn])
            snap = rec.snapshot
            # the entries that changed (the snapshot shares the word objects of those that
            # were not rewritten, so an identity test finds the candidates)
            for idx in compress(count(), map(is_not, words, snap)):
                now = words[idx]
                if now != snap[idx]:
                    flush |= self._set_sl1e(sl1, idx, self._sl1e_from_guest(now, nxe, sl1, idx))
        for smfn, idx in rec.fixups:
            sp = self.pool.by_smfn.get(smfn)
            if sp is not None:
                flush |= self._refresh_sl1e(vcpu, sp, idx)
        if flush:
            self._flush_all(vcpu)

    def _resync_all(self, vcpu: int) -> None:
        for gfn in list(self.oos_pages):
            self._resync(vcpu, gfn)

    def _drop_oos(self, gfn: int) -> None:
        """The L1 shadow of an out-of-sync page is going away: forget the page."""
        rec = self.oos_pages.pop(gfn, None)
        if rec is not None:
            self.vs[rec.vcpu].oos.remove(gfn)
