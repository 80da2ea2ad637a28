"""Charging the shadow engine's events cheaply: the same cycles and counts as
`Engine.charge`, with the fault path's counts kept in a list, every other charge's in a
plain dict (a Counter's `+=` costs some ten times a dict's), and both added to `stats` and
`cycles_by` only when someone reads them.

A boot charges some 440,000 events, most of them on the page-fault path (a trap, the guest
walk's entry reads, the fill, emulation or bounce). Each still adds its cycles to the VCPU's
clock at once, so `clock()` never lags; only the per-event totals wait. The observable points
are the two Counters: reading `stats` or `cycles_by` (counters(), cycle_breakdown(), tests,
`unaccounted()`'s snapshot) first adds the pending counts, so every reader sees exactly what
`Engine.charge` would have left there. `unaccounted()` drops what was charged inside it, the
pending counts included. A charge of 0 events still creates its key, as a Counter's `+= 0`
does, so the fault path charges zero-count events through `charge()`. The engine's own
statistics (`sh.*` keys: no cost, no cycles) wait in the same dict (`_stat()`); only
`stats` gets them, as `self._stats[key] += 1` would have.
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from collections import Counter

# events the hot paths count by slot (index into `_n`); `ipi` costs both ends
HOT_EVENTS = ("trap", "sh_guest_walk_ref", "pf_bounce", "pf_delivery", "sh_fill",
              "sh_emulate", "tlb_flush", "ipi", "sh_flush_ipi_exit")
(TRAP, WALK_REF, PF_BOUNCE, PF_DELIVERY, SH_FILL, SH_EMULATE, TLB_FLUSH, IPI,
 IPI_EXIT) = range(len(HOT_EVENTS))
_ZEROS = [0] * len(HOT_EVENTS)


class Accounting:
    """Mixin: charge(), ipi() and the lazily completed `stats`/`cycles_by` Counters."""

    _stats: Counter
    _cycles_by: Counter

    def _init_accounting(self, cost: dict[str, int]) -> None:
        self._cost = cost
        self._n = list(_ZEROS)                  # pending counts per HOT_EVENTS slot
        self._pend: dict[str, int] = {}         # charge()'s pending counts per event
        self._hot_cost = [cost.get(e, 0) * (2 if e == "ipi" else 1) for e in HOT_EVENTS]

    def _flush_counts(self) -> None:
        n = self._n
        if any(n):
            st, by, cost = self._stats, self._cycles_by, self._hot_cost
            for i, count in enumerate(n):
                if count:
                    event = HOT_EVENTS[i]
                    st[event] += count
                    by[event] += count * cost[i]
            n[:] = _ZEROS
        pend = self._pend
        if pend:
            st, by, cost = self._stats, self._cycles_by, self._cost
            for event, count in pend.items():         # (a zero count still makes its key)
                st[event] += count
                c = cost.get(event)
                if c is not None:                     # (None: a statistic, no cycles)
                    by[event] += c * count
            pend.clear()

    @property
    def stats(self) -> Counter:
        self._flush_counts()
        return self._stats

    @stats.setter
    def stats(self, value: Counter) -> None:
        self._stats = value

    @property
    def cycles_by(self) -> Counter:
        self._flush_counts()
        return self._cycles_by

    @cycles_by.setter
    def cycles_by(self, value: Counter) -> None:
        self._cycles_by = value

    def charge(self, vcpu: int, event: str, count: int = 1) -> None:
        """Engine.charge without the cost table's method call; the clock moves now, the
        Counters when read (the cycles of an event are its count times its cost)."""
        self._cycles[vcpu] += self._cost[event] * count
        pend = self._pend
        pend[event] = pend.get(event, 0) + count

    def _stat(self, key: str) -> None:
        """`self.stats[key] += 1` for a statistic of the engine's own (no cost event)."""
        pend = self._pend
        pend[key] = pend.get(key, 0) + 1

    def ipi(self, src: int, dst: int) -> None:
        """Engine.ipi, counted by slot (every shadow shootdown sends one per VCPU)."""
        cost = self._hot_cost[IPI] >> 1
        self._cycles[src] += cost
        self._cycles[dst] += cost
        self._n[IPI] += 1

    def _save_accounting(self):
        return self.pool.peak

    def _restore_accounting(self, saved) -> None:
        self.pool.peak = saved
        self._n[:] = _ZEROS                     # counted inside unaccounted(): dropped
        self._pend.clear()
