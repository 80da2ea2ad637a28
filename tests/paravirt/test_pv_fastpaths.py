"""The validator's fast paths (inlined single-entry checks, whole-table loops, the never-used
direct-map batch, the per-content kernel-L2 lists) are an optimisation only: a domain driven
through them must end in exactly the state a validator that takes Xen's general path for
every entry (get_page + get_page_type per entry, `alloc_lN_table` one entry at a time)
reaches: the same counts, types, flags and stamps of every frame, the same frames noted for
the audit, the same charges, statistics, memory and TLB counters, the same errors.
"""
import random

import pytest

from engines.api import GuestCrash, GuestPageFault
from engines.api.xen import UVMF_INVLPG, UVMF_NONE, Hypercall, MMUExt
from engines.paravirt import engine as pv_engine
from engines.paravirt.builder import _write_u32_array, _write_u32_list, scatter
from engines.paravirt.frames import PGT
from engines.paravirt.validate import (FIRST_XEN_SLOT, L1_DISALLOW_MASK, L1_DISALLOW_RAW,
                                       L2_DISALLOW_MASK, L2_DISALLOW_RAW, P, RW, Validator,
                                       entry_mfn, pte_flags)

from pv_harness import A, D, G, NX, PS, US, USER_PDE, MiniGuest


class GeneralPathValidator(Validator):
    """Every entry through get_page / get_page_type, tables one entry at a time (the
    reference the fast paths must match)."""

    def get_page_from_l1e(self, e):
        if not e & P:
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

    def put_page_from_l1e(self, e):
        if e & P:
            if e & RW:
                self.frames.put_page_type(entry_mfn(e))
            self.frames.put_page(entry_mfn(e))

    def get_page_from_l2e(self, e):
        if not e & P:
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

    def put_page_from_l2e(self, e):
        if e & P:
            self.frames.put_page_and_type(entry_mfn(e))

    def _table(self, mfn, limit, get, put):
        done = []
        for e in [e for e in self.memory.frame_words(mfn)[:limit] if e & P]:
            if not get(e):
                self.charge("pv_validate_entry", len(done) + 1)
                for old in reversed(done):
                    put(old)
                return False
            done.append(e)
        self.charge("pv_validate_entry", len(done))
        return True

    def _alloc_l1(self, mfn):
        return self._table(mfn, 512, self.get_page_from_l1e, self.put_page_from_l1e)

    def _alloc_l2(self, mfn, limit):
        return self._table(mfn, limit, self.get_page_from_l2e, self.put_page_from_l2e)

    def _free_l1(self, mfn):
        for e in self._entries(mfn):
            self.put_page_from_l1e(e)

    def _free_l2(self, mfn, limit):
        for e in self._entries(mfn, limit):
            self.put_page_from_l2e(e)


def state(g):
    """Everything the validator may change; frames left unmaterialised by the direct-map
    batch (FrameTable.lazy_direct) in the state a PageInfo would have."""
    e = g.e
    assert not e.frames.lazy_direct.keys() & dict.keys(e.frames.pages)
    pages = {m: (owner, 2, PGT.WRITABLE, 1, False, True, False, 0)
             for m, owner in e.frames.lazy_direct.items()}
    pages.update({m: (i.owner, i.count, i.type, i.tcount, i.pinned, i.validated, i.xen_l2,
                      i.stamp) for m, i in dict.items(e.frames.pages)})
    return (pages, set(e.frames.touched), set(e.frames.pt_frames), set(e.frames.pinned),
            dict(e.stats), dict(e.cycles_by), list(e._cycles), e.hw_counters(),
            e.memory._frames, e.validator.last_error, e.crashed, list(e.base))


def test_the_raw_64_bit_masks_are_the_folded_flag_masks():
    """get_pte_flags folds bits 44-63 into 12-31: testing the raw entry is the same test."""
    for bit in range(64):
        e = 1 << bit
        assert bool(pte_flags(e) & L1_DISALLOW_MASK) == bool(e & L1_DISALLOW_RAW), bit
        assert bool(pte_flags(e) & L2_DISALLOW_MASK) == bool(e & L2_DISALLOW_RAW), bit


def test_scatter_takes_the_affine_sequence_in_order_skipping_values_out_of_range():
    def reference(first, end, n, seed):
        span = end - first
        k = max(span - 1, 1).bit_length()
        rng = random.Random(f"pv-domain-{seed}")
        a = rng.randrange(1 << (k - 1), 1 << k) | 1
        b = rng.randrange(1 << k)
        out, x = [], 0
        while len(out) < n:
            v = (a * x + b) & ((1 << k) - 1)
            if v < span:
                out.append(first + v)
            x += 1
        return out
    for first, end, n, seed in ((16384, 2097152, 131072, 1), (16384, 65536, 4096, 0),
                                (16384, 16384 + 4096, 4096, 3), (100, 101, 1, 2)):
        assert scatter(first, end, n, seed) == reference(first, end, n, seed)


def test_u32_arrays_pair_neighbours_into_words_and_skip_zero_words():
    class Mem(dict):
        def write_u64(self, pa, value):
            self[pa] = value
    values = [5, 0, 0, 0, 7, 9, 0]
    dense, sparse = Mem(), Mem()
    _write_u32_list(dense, 0x1000, values)
    _write_u32_array(sparse, 0x1000, enumerate(values))
    assert dense == sparse == {0x1000: 5, 0x1010: 7 | (9 << 32)}
    assert list(dense) == list(sparse)


FLAGS = [P, P | RW, P | RW | US, P | US | A, P | PS, P | G, P | RW | PS, P | (1 << 52),
         P | NX, 0, RW, P | A | D | RW, P | RW | A | D | US]


class Twins:
    """The same guest twice: one engine with the fast paths, one with the general path."""

    def __init__(self, strategy, monkeypatch):
        self.fast = MiniGuest(strategy, vcpus=2, debug_audit=False)
        with monkeypatch.context() as m:
            m.setattr(pv_engine, "Validator", GeneralPathValidator)
            self.ref = MiniGuest(strategy, vcpus=2, debug_audit=False)
        assert type(self.ref.e.validator) is GeneralPathValidator
        for g in self.both:
            g.start_vcpu(1)
        self.pool = [self.fast.alloc() for _ in range(24)]
        assert [self.ref.alloc() for _ in range(24)] == self.pool
        self.spare = self.fast.region_pfns       # never-used frames beyond the boot region
        self.pgds = []

    @property
    def both(self):
        return (self.fast, self.ref)

    def do(self, fn):
        """Run fn(guest) on both; results, faults and crashes must agree."""
        out = []
        for g in self.both:
            try:
                out.append(("ok", fn(g)))
            except GuestPageFault as f:
                out.append(("pf", f.va, f.error_code))
            except GuestCrash as c:
                out.append(("crash", str(c)))
        assert out[0] == out[1]
        assert state(self.fast) == state(self.ref)
        for g in self.both:              # as an audit does: each step's notes compared
            g.e.frames.touched.clear()
        return out[0][1] if out[0][0] == "ok" else None

    def step(self, rng):
        pool, mfn = self.pool, lambda g, i: g.p2m(self.pool[i % 24])
        op = rng.randrange(9)
        i, j, slot, f, v = (rng.randrange(24), rng.randrange(41), rng.randrange(512),
                            rng.choice(FLAGS), rng.randrange(2))
        if op == 0:                          # a store, direct (ptwr or a bounce)
            self.do(lambda g: g.write(v, g.kva(pool[i]) + 8 * slot, (mfn(g, j) << 12) | f))
        elif op == 1:                        # mmu_update of any pool page
            self.do(lambda g: g.mmu(v, ((mfn(g, i) << 12) + 8 * slot, (mfn(g, j) << 12) | f)))
        elif op == 2:                        # protection changes of pool pages
            prot = rng.choice([P | A, P | RW | A | D])
            self.do(lambda g: g.set_prot(v, pool[i], prot, UVMF_INVLPG))
        elif op == 3:
            cmd = rng.choice([MMUExt.PIN_L1_TABLE, MMUExt.PIN_L2_TABLE, MMUExt.PIN_L3_TABLE,
                              MMUExt.UNPIN_TABLE])
            self.do(lambda g: g.ext(0, cmd, mfn(g, i)))
        elif op == 4 and self.fast.next_pfn + 6 < self.fast.region_pfns:
            self.new_pgd(v)
        elif op == 5 and self.pgds:
            k = rng.randrange(len(self.pgds))
            self.do(lambda g: g.switch(v, self.pgds[k]))
        elif op == 6 and self.pgds:          # unpin (and maybe repin) a pgd
            k, again = rng.randrange(len(self.pgds)), rng.random() < 0.5
            self.do(lambda g: (g.ext(0, MMUExt.UNPIN_TABLE, g.p2m(self.pgds[k])),
                               again and g.ext(0, MMUExt.PIN_L3_TABLE, g.p2m(self.pgds[k]))))
        elif op == 7:                        # update_va_mapping of user addresses
            va = rng.choice([0x08048000, 0x08049000, 0x40000000, 0xBFFFF000])
            self.do(lambda g: g.hc(v, Hypercall.update_va_mapping, va,
                                   (mfn(g, j) << 12) | f, rng.choice([UVMF_NONE, 2, 6])))
        elif op == 8:
            self.fresh_l1(rng)

    def new_pgd(self, v):
        l3 = self.do(lambda g: g.new_pgd(v)[0])
        if l3 is not None:
            self.pgds.append(l3)

    def fresh_l1(self, rng):
        """An L1 filled with writable mappings of never-used frames (as a direct map is
        built), sometimes spoilt by one entry, then hooked under a pinned user L2."""
        if not self.pgds or self.spare + 600 > self.fast.si.nr_pages:
            return
        n, spoil = rng.choice([1, 17, 512]), rng.random() < 0.3
        targets = list(range(self.spare, self.spare + n))
        self.spare += n
        l2s = {g: g.read(0, g.kva(self.pgds[-1])) for g in self.both}
        if rng.random() < 0.3:
            targets[-1] = targets[0]         # a frame twice
        l1 = self.pool[rng.randrange(24)]

        def fill(g):
            for k, t in enumerate(targets):
                flags = (P | A) if spoil and k == n // 2 else (P | RW | A | D)
                g.write(0, g.kva(l1) + 8 * k, (g.p2m(t) << 12) | flags)
            g.make_ro(0, l1)
            l2 = (l2s[g] >> 12) & 0xFFFFFFF
            return g.mmu(0, ((l2 << 12) + 8 * rng_slot, (g.p2m(l1) << 12) | USER_PDE))
        rng_slot = rng.randrange(0x40, 0x50)
        self.do(fill)



@pytest.mark.parametrize("strategy", ["per-pagetable", "shared-percpu", "walk"])
@pytest.mark.parametrize("seed", [1, 2])
def test_fast_paths_reach_the_state_of_the_general_path(strategy, seed, monkeypatch):
    t = Twins(strategy, monkeypatch)
    rng = random.Random(f"{strategy}-{seed}")
    for _ in range(3):
        t.new_pgd(0)
    for _ in range(160):
        t.step(rng)
        if t.fast.e.crashed:
            break
    assert t.fast.e.audit(full=True) == t.ref.e.audit(full=True)


def test_a_kernel_l2_pinned_again_after_its_l1s_changed_matches_the_general_path(monkeypatch):
    """The per-content kernel-L2 lists: pins of copies whose L1s are in use, then one whose
    L1 count has gone (a fallback in the middle of the table), then a changed copy."""
    t = Twins("per-pagetable", monkeypatch)
    for _ in range(4):
        t.new_pgd(0)
    kl2 = t.fast.kernel_l2
    first = next(i for i, e in t.fast.e.memory.nonzero_words(kl2) if i < FIRST_XEN_SLOT)
    t.do(lambda g: g.mmu(0, ((kl2 << 12) + 8 * (first + 1),
                             g.e.memory.read_u64((kl2 << 12) + 8 * first))))
    for _ in range(3):
        t.new_pgd(0)
