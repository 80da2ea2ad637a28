"""The PV interface as an attack surface (reference/xen-pv.md §4-5): one test per XSA attack
class that applies to this model (what the guest tries, the error it must get, the invariant
that must hold), and a Hypothesis state machine playing a malicious guest on two VCPUs with
`audit()` after every step.

Not applicable here (documented, no test): XSA-109/113 on other domain kinds (one PV
domain), 173/176/219/243/249/250/280/294/410 (shadow paging), 214/287 (page transfer and
stealing), 242 (page_unlock), 273 (speculation is not modelled), 299/309/310 (3.0.3
validation is not preemptible), 402 (cache attributes are carried, not modelled).
"""
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engines.api import GuestCrash, GuestPageFault
from engines.api.xen import (DOMID_SELF, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
                             UVMF_ALL, UVMF_INVLPG, UVMF_NONE, UVMF_TLB_FLUSH, Errno,
                             Hypercall, MmuextOp, MMUExt, MmuUpdate, MulticallEntry,
                             SuccessCount, VcpuMask)
from engines.paravirt import ptwr
from engines.paravirt.hypercalls import PREEMPT_EVERY
from engines.paravirt.xenarea import LINEAR_SLOT

from pv_harness import A, D, G, NX, P, PS, RW, US, USER_PDE, MiniGuest

EINVAL, EFAULT, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS


def counts(g, pfn):
    i = g.e.frames.pages[g.p2m(pfn)]
    return i.count, i.tcount, i.type


def user_l1(g, strategy_vcpu=0):
    l3, l2s = g.new_pgd()
    l1 = g.new_l1(0, l2s[0], 0x40)
    assert g.switch(strategy_vcpu, l3) == 0
    return l3, l2s, l1


# -- one test per attack class ------------------------------------------------------------------
def test_xsa45_huge_batches_are_preempted_not_run_unbounded():
    """XSA-45: long operations must be preemptible; here the batch loop is (3.0.3)."""
    g = MiniGuest()
    ma = g.p2m(g.alloc()) << 12
    n = 2 * PREEMPT_EVERY + 1
    done = SuccessCount()
    reqs = [MmuUpdate(ma + 8 * (i % 512), i) for i in range(n)]
    assert g.hc(0, Hypercall.mmu_update, reqs, n, done, DOMID_SELF) == 0
    assert g.e.stats["pv_preemptions"] == 2 and done.value == n


def test_xsa58_a_failed_pin_releases_exactly_the_references_it_took():
    g = MiniGuest()
    l1 = g.alloc()
    data = [g.alloc() for _ in range(5)]
    for i, d in enumerate(data):
        g.write(0, g.kva(l1) + 8 * i, (g.p2m(d) << 12) | P | RW | A)
    g.write(0, g.kva(l1) + 8 * 511, (g.p2m(data[0]) << 12) | P | PS)    # bad, the last slot
    g.make_ro(0, l1)
    before = [counts(g, d) for d in data]
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(l1)) == EINVAL
    assert [counts(g, d) for d in data] == before
    assert g.e.audit() == []


def test_xsa113_machphys_update_keeps_references_balanced():
    g = MiniGuest()
    pfn = g.alloc()
    before = counts(g, pfn)
    ok = MmuUpdate((g.p2m(pfn) << 12) | MMU_MACHPHYS_UPDATE, 5)
    bad = MmuUpdate((g.p2m(pfn) << 12) | MMU_MACHPHYS_UPDATE, 1 << 40)
    assert g.hc(0, Hypercall.mmu_update, [ok, bad], 2, None, DOMID_SELF) == EINVAL
    assert counts(g, pfn) == before and g.e.audit() == []


def test_xsa148_setting_pse_on_an_existing_l2e_is_refused_not_fast_pathed():
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    ptr = (g.p2m(l2s[0]) << 12) + 8 * 0x40
    old = g.e.memory.read_u64(ptr)
    assert g.mmu(0, (ptr, old | PS)) == EINVAL
    assert g.e.memory.read_u64(ptr) == old and g.e.audit() == []


def test_xsa182_the_fast_path_cannot_make_a_mapping_of_a_page_table_writable():
    """A read-only mapping of the L1 itself (a would-be recursive entry) may not gain RW."""
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    ptr = g.p2m(l1) << 12
    assert g.mmu(0, (ptr, (g.p2m(l1) << 12) | P | US | A)) == 0          # RO self-map: fine
    assert g.mmu(0, (ptr, (g.p2m(l1) << 12) | P | US | A | RW)) == EINVAL
    assert g.hc(0, Hypercall.update_va_mapping, 0x08000000, (g.p2m(l1) << 12) | P | RW,
                UVMF_INVLPG) == EINVAL
    assert g.e.audit() == []


def test_xsa212_batch_counts_beyond_the_array_are_refused_before_any_work():
    g = MiniGuest()
    ma = g.p2m(g.alloc()) << 12
    done = SuccessCount()
    assert g.hc(0, Hypercall.mmu_update, [MmuUpdate(ma, 1)], 1000, done, DOMID_SELF) == EFAULT
    assert g.e.memory.read_u64(ma) == 0 and done.value == 0
    assert g.hc(0, Hypercall.mmuext_op, [MmuextOp(MMUExt.TLB_FLUSH_LOCAL)], 1, "ptr",
                DOMID_SELF) == EFAULT
    assert g.hc(0, Hypercall.multicall, [MulticallEntry(Hypercall.vm_assist, (0, 2))], 5) \
        == EFAULT


def test_xsa213_iret_inside_a_multicall_is_refused_and_the_batch_stays_in_kernel_mode():
    g = MiniGuest()
    pfn = g.alloc()
    calls = [MulticallEntry(Hypercall.iret, ()),
             MulticallEntry(Hypercall.update_va_mapping,
                            (g.kva(pfn), (g.p2m(pfn) << 12) | P | A, UVMF_INVLPG))]
    assert g.hc(0, Hypercall.multicall, calls) == 0
    assert calls[0].result == ENOSYS and calls[1].result == 0
    assert g.e.base[0] == g.boot_l3 and g.e.audit() == []


def test_xsa227_misaligned_page_table_writes_are_never_emulated():
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    va = g.kva(l1) + 4
    assert not ptwr.emulate(g.e, 0, va, (g.p2m(g.alloc()) << 12) | P, 8, 0x3)
    assert g.e.memory.read_u64(g.p2m(l1) << 12) == 0
    assert g.mmu(0, ((g.p2m(l1) << 12) | 4, 1)) == EINVAL        # low ptr bits = command 4


def test_ptwr_emulates_aligned_l1_writes_and_bounces_invalid_ones():
    """xen-pv.md §2.4: only L1s; the new entry is validated; PAE half-write rule."""
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    data = g.alloc()
    g.write(0, g.kva(l1), (g.p2m(data) << 12) | P | RW | US)
    assert g.e.stats["ptwr_emulations"] == 1
    with pytest.raises(GuestPageFault):
        g.write(0, g.kva(l1) + 8, (g.p2m(l1) << 12) | P | RW)        # writable self-map
    with pytest.raises(GuestPageFault):
        g.write(0, g.kva(l2s[0]), 0)                                   # L2: never emulated
    half = (g.p2m(l1) << 12) | P | RW                                  # low half names the L1
    assert ptwr.emulate(g.e, 0, g.kva(l1) + 16, half & 0xFFFFFFFF, 4, 0x3)
    assert g.e.memory.read_u64((g.p2m(l1) << 12) + 16) & P == 0        # PRESENT cleared
    assert g.e.audit() == []


def test_xsa240_no_linear_page_tables_on_pae():
    """An L2e naming an L2 (a linear / recursive entry) is refused (3.0.3 PAE)."""
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    ptr = (g.p2m(l2s[0]) << 12) + 8 * 0x41
    assert g.mmu(0, (ptr, (g.p2m(l2s[0]) << 12) | P)) == EINVAL
    assert g.mmu(0, (ptr, (g.p2m(l2s[1]) << 12) | P)) == EINVAL
    assert g.e.audit() == []


def test_xsa241_a_page_becomes_a_page_table_only_after_stale_writable_tlbs_die():
    """VCPU 1 caches a writable translation, the guest drops the PTE without a flush; when
    the frame becomes an L1, Xen's flush filter must flush VCPU 1 first."""
    g = MiniGuest()
    g.start_vcpu(1)
    l3, l2s, l1 = user_l1(g, 0)
    assert g.switch(1, l3) == 0
    victim = g.alloc()
    va = 0x08048000
    assert g.hc(0, Hypercall.update_va_mapping, va, (g.p2m(victim) << 12) | P | RW | US,
                UVMF_NONE) == 0
    g.write(1, va, 0x40, 4)                                         # VCPU 1 caches it RW
    assert any(t.va == va and t.writable for t in g.e.cpus[1].tlb_entries())
    assert g.hc(0, Hypercall.update_va_mapping, va, 0, UVMF_NONE) == 0   # no flush
    g.make_ro(0, victim)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(victim)) == 0
    assert not any(t.pa >> 12 == g.p2m(victim) for t in g.e.cpus[1].tlb_entries())
    assert g.e.stats["pv_typechange_flush"] >= 1 and g.e.audit() == []
    with pytest.raises(GuestPageFault):
        g.write(1, va, 0x40, 4)


def test_xsa279_failed_update_va_mapping_has_no_side_effect():
    g = MiniGuest()
    g.start_vcpu(1)
    before = [c.counters() for c in g.e.cpus]
    assert g.hc(0, Hypercall.update_va_mapping, 0xFFFFF000, 1, UVMF_TLB_FLUSH | UVMF_ALL) \
        == EINVAL
    after = [c.counters() for c in g.e.cpus]
    assert [a.flush_full for a in after] == [b.flush_full for b in before]
    assert g.e.stats["ipi"] == 0


@pytest.mark.parametrize("strategy", ["per-pagetable", "shared-percpu"])
def test_xsa286_xen_never_writes_through_a_stale_linear_mapping(strategy):
    """Change an L2e by mmu_update with no flush, then make Xen use its linear map: the
    update must land in the new L1, on this VCPU and on another running the same L3."""
    g = MiniGuest(strategy)
    g.start_vcpu(1)
    l1b = g.alloc()
    g.make_ro(0, l1b)                  # early: no type-change flush will hide a stale entry
    l3, l2s, l1a = user_l1(g, 0)
    assert g.switch(1, l3) == 0
    va = 0x08048000
    for v in (0, 1):                   # both VCPUs cache the linear translation of l1a
        assert g.hc(v, Hypercall.update_va_mapping, va, 0, UVMF_NONE) == 0
    ptr = (g.p2m(l2s[0]) << 12) + 8 * 0x40
    assert g.mmu(0, (ptr, (g.p2m(l1b) << 12) | USER_PDE)) == 0       # no flush asked
    for v, d in ((1, g.alloc()), (0, g.alloc())):
        assert g.hc(v, Hypercall.update_va_mapping, va, (g.p2m(d) << 12) | P | US,
                    UVMF_INVLPG) == 0
        assert g.e.memory.read_u64((g.p2m(l1b) << 12) + 8 * 0x48) >> 12 == g.p2m(d)
    assert g.e.audit() == []


def test_the_xen_slots_and_l3_slot_3_cannot_be_written():
    g = MiniGuest()
    l3, l2s, l1 = user_l1(g)
    kl2 = g.p2m(l2s[3])
    assert g.mmu(0, ((kl2 << 12) + 8 * LINEAR_SLOT, (kl2 << 12) | P | RW)) == EINVAL
    assert g.mmu(0, ((g.p2m(l3) << 12) + 24, (g.p2m(g.alloc()) << 12) | P)) == EINVAL
    assert g.ext(0, MMUExt.PIN_L2_TABLE, kl2) == EINVAL            # cannot pin it alone
    assert g.e.audit() == []


def test_xen_owned_frames_can_never_be_mapped_or_updated():
    g = MiniGuest("shared-percpu")
    for xen_mfn in (g.e.area.pc_l3[0], g.e.area.pc_l2[0], g.e.layout.m2p_l1s[0]):
        assert g.mmu(0, (xen_mfn << 12, 0)) == EINVAL
        assert g.hc(0, Hypercall.update_va_mapping, g.kva(g.alloc()),
                    (xen_mfn << 12) | P, UVMF_INVLPG) == EINVAL
    assert g.e.audit() == []


# -- the malicious guest ------------------------------------------------------------------------
FLAGS = st.sampled_from([P, P | RW, P | RW | US, P | US | A, P | PS, P | G, P | RW | PS,
                         P | (1 << 52), P | NX, 0, RW, P | A | D | RW])


class MaliciousGuest(RuleBasedStateMachine):
    """Random and crafted sequences of the PV MMU interface on two VCPUs."""
    strategy = "per-pagetable"
    vcpus = 2

    @initialize()
    def boot(self):
        self.g = MiniGuest(self.strategy, vcpus=self.vcpus, debug_audit=False)  # invariant
        if self.vcpus > 1:
            self.g.start_vcpu(1)
        self.pool = [self.g.alloc() for _ in range(24)]
        self.pgds = []
        self.dead = False

    def mfn(self, i):
        return self.g.e.layout.p2m[self.pool[i % len(self.pool)]]

    def entry(self, i, flags):
        return (self.mfn(i) << 12) | flags

    def call(self, fn, *args):
        try:
            return fn(*args)
        except GuestPageFault:
            return None
        except GuestCrash:
            self.dead = True
            return None

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), slot=st.integers(0, 511), j=st.integers(0, 40), f=FLAGS,
          v=st.integers(0, 1))
    def direct_write(self, i, slot, j, f, v):
        self.call(self.g.write, v % self.vcpus, self.g.kva(self.pool[i]) + 8 * slot,
                  self.entry(j, f))

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), slot=st.integers(0, 511), j=st.integers(0, 40), f=FLAGS,
          cmd=st.sampled_from([MMU_NORMAL_PT_UPDATE] * 4 + [MMU_MACHPHYS_UPDATE, 3]))
    def mmu_update(self, i, slot, j, f, cmd):
        ptr = (self.mfn(i) << 12) + 8 * slot
        self.call(self.g.hc, 0, Hypercall.mmu_update, [MmuUpdate(ptr | cmd, self.entry(j, f))],
                  1, SuccessCount(), DOMID_SELF)

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), rw=st.booleans(), v=st.integers(0, 1))
    def protect(self, i, rw, v):
        pfn = self.pool[i]
        flags = (P | RW | A | D) if rw else (P | A)
        self.call(self.g.hc, v % self.vcpus, Hypercall.update_va_mapping, self.g.kva(pfn),
                  (self.mfn(i) << 12) | flags, UVMF_INVLPG)

    @precondition(lambda self: not self.dead)
    @rule(va=st.sampled_from([0x08048000, 0x08049000, 0x40000000, 0xBFFFF000, 0xF5800000]),
          j=st.integers(0, 40), f=FLAGS, flags=st.sampled_from([0, 1, 2, 5, 6, 9]),
          v=st.integers(0, 1))
    def update_va(self, va, j, f, flags, v):
        self.call(self.g.hc, v % self.vcpus, Hypercall.update_va_mapping, va,
                  self.entry(j, f), flags)

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), op=st.sampled_from([MMUExt.PIN_L1_TABLE, MMUExt.PIN_L2_TABLE,
                                                    MMUExt.PIN_L3_TABLE, MMUExt.UNPIN_TABLE]))
    def pin(self, i, op):
        self.call(self.g.ext, 0, op, self.mfn(i))

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), slot=st.integers(0, 511), j=st.integers(0, 40), f=FLAGS)
    def crafted_l1_then_direct_write(self, i, slot, j, f):
        """Make a pool page a pinned L1, then store into it directly (ptwr or a bounce)."""
        self.protect(i, False, 0)
        self.pin(i, MMUExt.PIN_L1_TABLE)
        self.direct_write(i, slot, j, f, 0)

    @precondition(lambda self: not self.dead and self.pgds)
    @rule(k=st.integers(0, 10), again=st.booleans())
    def unpin_pgd(self, k, again):
        mfn = self.g.e.layout.p2m[self.pgds[k % len(self.pgds)]]
        self.call(self.g.ext, 0, MMUExt.UNPIN_TABLE, mfn)
        if again:
            self.call(self.g.ext, 0, MMUExt.PIN_L3_TABLE, mfn)

    @precondition(lambda self: not self.dead)
    @rule(v=st.integers(0, 1))
    def build_pgd(self, v):
        if self.g.next_pfn + 6 < self.g.region_pfns:
            l3, _ = self.g.new_pgd(v % self.vcpus)
            self.pgds.append(l3)

    @precondition(lambda self: not self.dead and self.pgds)
    @rule(k=st.integers(0, 10), v=st.integers(0, 1))
    def switch(self, k, v):
        self.call(self.g.switch, v % self.vcpus, self.pgds[k % len(self.pgds)])

    @precondition(lambda self: not self.dead)
    @rule(v=st.integers(0, 1), op=st.sampled_from([MMUExt.TLB_FLUSH_LOCAL, MMUExt.INVLPG_LOCAL,
                                                   MMUExt.TLB_FLUSH_MULTI, MMUExt.INVLPG_ALL,
                                                   MMUExt.TLB_FLUSH_ALL, 17]))
    def flush(self, v, op):
        self.call(self.g.ext, v % self.vcpus, op, 0x08048000, VcpuMask(3))

    @precondition(lambda self: not self.dead)
    @rule(va=st.sampled_from([0x08048000, 0xC0000000, 0xF5800000]), v=st.integers(0, 1))
    def touch(self, va, v):
        self.call(self.g.read, v % self.vcpus, va)

    @precondition(lambda self: not self.dead)
    @rule(i=st.integers(0, 23), really=st.integers(0, 7))
    def new_baseptr_anything(self, i, really):
        """May crash the domain (3.0.3): the audit must still hold afterwards."""
        if really == 0:
            self.call(self.g.ext, 0, MMUExt.NEW_BASEPTR, self.mfn(i))

    @precondition(lambda self: self.dead)
    @rule(v=st.integers(0, 1))
    def a_crashed_domain_stays_dead(self, v):
        with pytest.raises(GuestCrash):
            self.g.hc(v % self.vcpus, Hypercall.mmuext_op, [MmuextOp(MMUExt.TLB_FLUSH_LOCAL)],
                      1, None, DOMID_SELF)

    @invariant()
    def audited(self):
        if hasattr(self, "g"):
            assert self.g.e.audit() == []              # incremental: what changed
            assert self.g.e.audit(full=True) == []     # every frame


SETTINGS = settings(max_examples=25, stateful_step_count=25, deadline=None,
                    suppress_health_check=list(HealthCheck))


class PerPagetableAttack(MaliciousGuest):
    strategy = "per-pagetable"


class PerCPUAttack(MaliciousGuest):
    strategy = "shared-percpu"


class WalkAttack(MaliciousGuest):
    strategy = "walk"


class SharedUPAttack(MaliciousGuest):
    strategy, vcpus = "shared", 1


TestMaliciousGuestPerPagetable = PerPagetableAttack.TestCase
TestMaliciousGuestSharedPercpu = PerCPUAttack.TestCase
TestMaliciousGuestWalk = WalkAttack.TestCase
TestMaliciousGuestSharedUP = SharedUPAttack.TestCase
TestMaliciousGuestPerPagetable.settings = TestMaliciousGuestSharedPercpu.settings = SETTINGS
TestMaliciousGuestWalk.settings = TestMaliciousGuestSharedUP.settings = SETTINGS
