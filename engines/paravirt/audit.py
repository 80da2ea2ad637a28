"""The invariants of reference/xen-pv.md §4, checked from scratch against the engine's
bookkeeping, the tables in machine memory, the VCPUs' registers and their TLBs.

- I1 no writable PT: every target of a present RW L1e in a validated L1 has the writable
  type; no cached TLB translation below HYPERVISOR_VIRT_START is writable onto a frame
  whose page-table type count is above 0.
- I2 conservation: each guest frame's general count = allocation + L1e maps + typed holders
  (L2e -> L1, L3e -> L2, pins, VCPU bases, GDT frames); each type count = its typed holders;
  every typed holder agrees with the frame's type (and the pae_xen_l2 flag).
- I3 ownership: every present entry of a validated table and every cached translation below
  the Xen area names a frame of the domain.
- I4/I5 the Xen slots and linear maps per strategy (XenArea.audit); the PDPTE registers of
  each VCPU equal the four entries of the L3 Xen says it runs.
Plus any refcount corruption Xen ran into. The holder side comes from machine memory
(engines.paravirt.holders, cached per table by content); I2 compares only the frames whose
counts or holders changed since the last audit unless `full`. Run at milestones, or after
every hypercall with `debug_audit`.
"""
from __future__ import annotations

import gc
from collections import Counter
from itertools import compress, repeat
from operator import attrgetter

from .frames import DOMID_GUEST, PGT, PT_TYPES
from .xenarea import HYPERVISOR_VIRT_START

_DIRECT = (PGT.WRITABLE, False)   # the kind of a frame in FrameTable.lazy_direct
FULL_ABOVE = 20000        # candidates beyond which one C-level pass over all frames is cheaper


def _check_counts(eng, out: list[str], count: Counter, tcount: Counter, extra: Counter,
                  need: dict[tuple[PGT, bool], set[int]]) -> None:
    """Counts, type counts and types of every frame against what the holders imply
    (`count`/`tcount` from tables, `extra` from holders outside them; a type is only
    constrained while the frame is typed). Frames the direct map left unmaterialised
    (FrameTable.lazy_direct) count with the state they would materialise in.

    Proven equal with C-level passes in frame-table order (its PageInfos are read in the
    order they sit in memory; 10^5 frames in hash order cost a cache miss each); where
    anything differs, the per-frame comparison names the frames."""
    pages, lazy = eng.frames.pages, eng.frames.lazy_direct
    values = list(pages.values())
    keys = list(pages.keys()) + list(lazy.keys())
    counts = list(map(attrgetter("count"), values)) + [2] * len(lazy)
    tcounts = list(map(attrgetter("tcount"), values)) + [1] * len(lazy)
    if len(set().union(*need.values())) != sum(len(m) for m in need.values()):
        names = list(need)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for mfn in sorted(need[a] & need[b])[:3]:
                    out.append(f"I1/I2: mfn {mfn:#x} is needed as {a[0].name} and as "
                               f"{b[0].name} at once")
    known = pages.keys() | lazy.keys()
    if not _counts_agree(known, keys, counts, tcounts, count, tcount, extra):
        expect = dict.fromkeys(keys, (1, 0))              # the allocation reference only
        expect.update(zip(count.keys(), zip(map((1).__add__, count.values()),
                                            map(tcount.get, count.keys(), repeat(0)))))
        for mfn, n in extra.items():                      # pins, bases, GDT frames
            expect[mfn] = (1 + count.get(mfn, 0) + n, tcount.get(mfn, 0) + n)
        _diff(out, "(count, type count)", dict(zip(keys, zip(counts, tcounts))), expect)
        _report_types(out, pages, need)
        return
    kinds = list(map(attrgetter("type", "xen_l2"), values)) + [_DIRECT] * len(lazy)
    for kind, mfns in need.items():                       # holders of one kind agree
        if len(mfns) > len(keys) >> 3:     # the frames of another kind, and none needed
            ok = mfns.isdisjoint(compress(keys, map(kind.__ne__, kinds)))
        else:                                # (counts agree: every needed frame is known)
            kind_of = attrgetter("type", "xen_l2")
            ok = not mfns or {_DIRECT if m in lazy else kind_of(pages[m])
                              for m in mfns} == {kind}
        if not ok:
            _report_types(out, pages, need)
            return


def _counts_agree(known, keys, counts, tcounts, count, tcount, extra) -> bool:
    """Every frame's (count, type count) is (1 + holders, typed holders), and every frame
    holders name is known."""
    if not count.keys() <= known or not extra.keys() <= known:
        return False
    want_c = list(map((1).__add__, map(count.get, keys, repeat(0))))
    want_t = list(map(tcount.get, keys, repeat(0)))
    if extra:
        where = dict(zip(keys, range(len(keys))))
        for mfn, n in extra.items():
            want_c[where[mfn]] += n
            want_t[where[mfn]] += n
    return counts == want_c and tcounts == want_t


def _report_types(out: list[str], pages, need: dict[tuple[PGT, bool], set[int]]) -> None:
    want: dict[int, tuple] = {}
    for key, mfns in need.items():
        want.update(dict.fromkeys(mfns, key))
    have = dict(zip(want.keys(), map(attrgetter("type", "xen_l2"),
                                     map(pages.__getitem__, want.keys()))))
    for mfn in sorted(m for m in want if have[m] != want[m])[:10]:
        t, x = want[mfn]
        out.append(f"I1/I2: mfn {mfn:#x} is {pages[mfn]!r} but a holder needs "
                   f"{t.name}{'|pae_xen_l2' if x else ''}")


def _diff(out: list[str], what: str, actual: dict, expect: dict) -> None:
    if actual == expect:
        return
    bad = sorted(m for m in set(actual) | set(expect) if actual.get(m) != expect.get(m))
    for mfn in bad[:10]:
        out.append(f"I2: mfn {mfn:#x} has {what} {actual.get(mfn)}, its holders make "
                   f"{expect.get(mfn)}")


def _check_tlbs(eng, out: list[str]) -> None:
    pages = eng.frames.pages
    for v, cpu in enumerate(eng.cpus):
        for t in cpu.tlb_entries():
            if t.va >= HYPERVISOR_VIRT_START:
                continue
            info = pages.get(t.pa >> 12)
            if info is None or info.owner != DOMID_GUEST:
                out.append(f"I3: VCPU {v} TLB maps va {t.va:#x} to mfn {t.pa >> 12:#x}, not "
                           f"the domain's")
            elif t.writable and info.type in PT_TYPES and info.tcount:
                out.append(f"I1: VCPU {v} TLB maps va {t.va:#x} writable onto "
                           f"{info.type.name} mfn {info.mfn:#x}")


def _check_pdptes(eng, out: list[str]) -> None:
    mem = eng.memory
    for v, b in enumerate(eng.base):
        if b is None or not eng.up[v]:
            continue
        cpu = eng.cpus[v]
        at = cpu.cr3 & 0xFFFFFFE0
        loaded = tuple(mem.read_u64(at + 8 * i) for i in range(4))
        if tuple(cpu.pdptes) != loaded:
            out.append(f"I5: VCPU {v}'s PDPTE registers differ from the L3 at cr3 {at:#x}")
        if eng.area.name != "shared-percpu":
            guest = tuple(mem.read_u64((b << 12) + 8 * i) for i in range(4))
            if loaded != guest:
                out.append(f"I5: VCPU {v} runs cr3 {at:#x} whose entries differ from its "
                           f"base L3 {b:#x}")


def audit_domain(eng, full: bool = False) -> list[str]:
    """All invariants. I2 compares every frame when `full` (or when most frames changed),
    otherwise only the frames whose counts or holders changed since the last audit."""
    was = gc.isenabled()
    gc.disable()                   # the audit allocates ~10^5 tuples: no heap-wide GC passes
    try:
        return _audit(eng, full)
    finally:
        if was:
            gc.enable()


def _audit(eng, full: bool) -> list[str]:
    out = list(eng.integrity)
    state, frames = eng.audit_state, eng.frames
    certain = full or len(frames.touched) > FULL_ABOVE     # the candidates can only grow
    changed = state.sync(eng, out, track=not certain)
    extra, extra_need = state.extras(eng)
    candidates = set() if certain else (changed | frames.touched | set(extra)
                                        | state.extra_prev)
    if certain or len(candidates) > FULL_ABOVE:
        _check_counts(eng, out, *state.totals(extra, extra_need))
    else:
        state.check(eng, out, candidates, extra, extra_need)
    state.extra_prev = set(extra)
    frames.touched.clear()
    _check_tlbs(eng, out)
    _check_pdptes(eng, out)
    out += eng.area.audit()
    return out
