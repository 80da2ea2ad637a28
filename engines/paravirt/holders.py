"""What the audit expects of every frame's counts, kept up to date incrementally: the
references each validated table's entries imply, cached per table by its exact contents
(any change of a word, A/D included, re-derives that table; when the references come out
the same, the counters are left alone), summed into counters; plus the holders outside
tables (pins, VCPU bases, GDT frames), recomputed at every audit.

The holder side is derived from machine memory, never from Xen's own reference operations,
so it stays an independent check. Between audits the frame table records which frames had
their counts or type changed (`FrameTable.touched`); an audit then compares only those
frames and the targets of tables whose contents changed, unless a full comparison is asked
for or cheaper.
"""
from __future__ import annotations

from collections import Counter
from itertools import compress

from .frames import PGT
from .validate import FIRST_XEN_SLOT, P, PADDR_MASK, RW

Key = tuple  # (PGT, pae_xen_l2)


def _groups(info, words: list[int]) -> list[tuple[list[int], list[int], Key]]:
    """(general refs, type refs, type needed) implied by a table's entries."""
    if info.type == PGT.L3:
        used = words[:4]
    elif info.xen_l2:
        used = words[:FIRST_XEN_SLOT]
    else:
        used = words
    present = [e for e in used if e & P]
    targets = [(e & PADDR_MASK) >> 12 for e in present]
    if info.type == PGT.L1:
        rw = [(e & PADDR_MASK) >> 12 for e in present if e & RW]
        return [(targets, rw, (PGT.WRITABLE, False))]
    if info.type == PGT.L2:
        return [(targets, targets, (PGT.L1, False))]
    slot3 = [(e & PADDR_MASK) >> 12 for e in words[3:4] if e & P]
    low = [(e & PADDR_MASK) >> 12 for e in words[:3] if e & P]
    return [(low, low, (PGT.L2, False)), (slot3, slot3, (PGT.L2, True))]


class HolderState:
    def __init__(self):
        self.cache: dict[int, tuple] = {}          # table mfn -> (key, groups)
        self.count: Counter = Counter()
        self.tcount: Counter = Counter()
        self.need: dict[Key, Counter] = {}
        self.extra_prev: set[int] = set()

    def _apply(self, groups, sign: int, changed: set[int] | None) -> None:
        for refs, typed, key in groups:
            need = self.need.setdefault(key, Counter())
            if sign > 0:
                self.count.update(refs)
                self.tcount.update(typed)
                need.update(typed)
            else:
                self.count.subtract(refs)
                self.tcount.subtract(typed)
                need.subtract(typed)
            if changed is not None:
                changed.update(refs)

    def sync(self, eng, out: list[str], track: bool = True) -> set[int]:
        """Bring the table-derived counters up to date; return the frames whose expected
        counts may have changed since the last sync (not collected unless `track`)."""
        frames, pages, mem = eng.frames, eng.frames.pages, eng.memory
        changed: set[int] = set()
        noted = changed if track else None
        live = set()
        for mfn in frames.pt_frames:
            info = pages[mfn]
            if not info.validated or info.tcount == 0:
                out.append(f"I2: mfn {mfn:#x} listed as a page table but {info!r}")
                continue
            live.add(mfn)
            words = mem.frame_words(mfn)           # a copy: safe to keep as the key
            key = (words, info.type, info.xen_l2)
            hit = self.cache.get(mfn)
            if hit is not None and hit[0] == key:
                continue
            groups = _groups(info, words)
            foreign = set().union(*[g[0] for g in groups]) - frames.guest_mfns
            if foreign:
                out.append(f"I3: {info.type.name} mfn {mfn:#x} maps mfn {min(foreign):#x}, "
                           f"which is not the domain's")
                groups = []
            if hit is not None:
                if hit[1] == groups:                # e.g. only A/D bits changed: same holders
                    self.cache[mfn] = (key, groups)
                    continue
                self._apply(hit[1], -1, noted)
            self._apply(groups, +1, noted)
            self.cache[mfn] = (key, groups)
        for mfn in set(self.cache) - live:
            self._apply(self.cache.pop(mfn)[1], -1, noted)
        return changed

    @staticmethod
    def extras(eng) -> tuple[Counter, dict[int, list[Key]]]:
        """Typed holders outside tables: pins, VCPU bases, GDT frames."""
        count: Counter = Counter()
        need: dict[int, list[Key]] = {}
        pages = eng.frames.pages

        def hold(mfn: int, key: Key) -> None:
            count[mfn] += 1
            need.setdefault(mfn, []).append(key)
        for mfn in eng.frames.pinned:
            hold(mfn, (pages[mfn].type, pages[mfn].xen_l2))
        for b in eng.base:
            if b is not None:
                hold(b, (PGT.L3, False))
        for gdt in eng.gdt:
            for m in gdt:
                hold(m, (PGT.SEG_DESC, False))
        return count, need

    def check(self, eng, out: list[str], candidates: set[int], extra: Counter,
              extra_need: dict[int, list[Key]]) -> None:
        """Compare the candidate frames one by one."""
        pages = eng.frames.pages
        for mfn in sorted(candidates):
            info = pages.get(mfn)
            if info is None:
                continue
            want = (self.count.get(mfn, 0) + extra.get(mfn, 0) + 1,
                    self.tcount.get(mfn, 0) + extra.get(mfn, 0))
            if (info.count, info.tcount) != want:
                out.append(f"I2: mfn {mfn:#x} has (count, type count) "
                           f"{(info.count, info.tcount)}, its holders make {want}")
            if want[1] <= 0:
                continue
            keys = {k for k, c in self.need.items() if c.get(mfn, 0) > 0}
            keys.update(extra_need.get(mfn, ()))
            if keys != {(info.type, info.xen_l2)}:
                names = ", ".join(f"{t.name}{'|pae_xen_l2' if x else ''}" for t, x in keys)
                out.append(f"I1/I2: mfn {mfn:#x} is {info!r} but its holders need {names}")
            if len(out) > 40:
                return

    def totals(self, extra: Counter, extra_need: dict[int, list[Key]]):
        """count and type count from tables (the live counters: read only), `extra`, and
        {(type, xen_l2): set of mfns} over every holder."""
        positive = (0).__lt__
        need = {k: set(compress(c.keys(), map(positive, c.values())))
                for k, c in self.need.items()}
        for mfn, keys in extra_need.items():
            for k in keys:
                need.setdefault(k, set()).add(mfn)
        return self.count, self.tcount, extra, need
