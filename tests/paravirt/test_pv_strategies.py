"""The four kernel-L2 strategies of the seed post as mechanisms (reference/xen-pv.md §3,
seed-xen-devel-post.txt), and Xen's linear map reached through the simulated MMU."""
import pytest

from engines.api.xen import Hypercall, MMUExt, UVMF_INVLPG, UVMF_NONE
from engines.paravirt.xenarea import LINEAR_PT_VIRT_START, LINEAR_SLOT, linear_l1e_va

from pv_harness import P, US, MiniGuest

STRATEGIES = ("per-pagetable", "shared", "shared-percpu", "walk")


def two_processes(strategy):
    """Two pgds with a user page each at the same VA, VCPU v running pgd v."""
    g = MiniGuest(strategy)
    g.start_vcpu(1)
    procs = []
    for v in (0, 1):
        l3, l2s = g.new_pgd(v)
        g.new_l1(v, l2s[0], 0x40)
        assert g.switch(v, l3) == 0
        page = g.alloc()
        g.write(v, g.kva(page), 0x1000 + v)
        procs.append((l3, l2s, page))
    return g, procs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_boot_info_says_whether_the_kernel_pmd_may_be_shared(strategy):
    g = MiniGuest(strategy)
    assert g.boot.shared_kernel_pmd is (strategy != "per-pagetable")


@pytest.mark.parametrize("strategy", ["per-pagetable", "shared-percpu", "walk"])
def test_smp_safe_strategies_give_each_vcpu_its_own_page_table(strategy):
    g, procs = two_processes(strategy)
    va = 0x08048000
    for v, (_, _, page) in enumerate(procs):
        assert g.hc(v, Hypercall.update_va_mapping, va, (g.p2m(page) << 12) | P | US,
                    UVMF_INVLPG) == 0
    assert [g.read(v, va, 4) for v in (0, 1)] == [0x1000, 0x1001]
    assert g.e.audit() == []


def test_shared_kernel_l2_breaks_on_smp_visibly():
    """Option #1: the linear slots follow the last NEW_BASEPTR, so VCPU 0's update lands in
    VCPU 1's page table (or fails) and the audit names the wrong mapping."""
    g, procs = two_processes("shared")
    problems = g.e.audit()
    assert any("VCPU 0 runs L3" in p and "another page table" in p for p in problems)
    va = 0x08048000
    page0 = procs[0][2]
    rc = g.hc(0, Hypercall.update_va_mapping, va, (g.p2m(page0) << 12) | P | US, UVMF_NONE)
    l1_of_vcpu1 = g.e.memory.read_u64((g.p2m(procs[1][1][0]) << 12) + 8 * 0x40) >> 12
    assert rc == 0 and g.e.memory.read_u64((l1_of_vcpu1 << 12) + 8 * 0x48) >> 12 == \
        g.p2m(page0)                                   # written into VCPU 1's L1


def test_shared_works_on_one_vcpu_by_rewriting_the_slots_at_each_switch():
    g = MiniGuest("shared", vcpus=1)
    a, _ = g.new_pgd()
    b, _ = g.new_pgd()
    slots = g.e.stats["pv_linear_slot"]
    for l3 in (a, b, a):
        assert g.switch(0, l3) == 0 and g.e.audit() == []
    assert g.e.stats["pv_linear_slot"] == slots + 12


def test_per_pagetable_costs_a_private_kernel_l2_per_pgd():
    g = MiniGuest("per-pagetable")
    l3, l2s = g.new_pgd()
    assert len(l2s) == 4 and g.p2m(l2s[3]) != g.kernel_l2
    words = g.e.memory.frame_words(g.p2m(l2s[3]))
    want = [g.p2m(p) for p in l2s]
    assert [(words[LINEAR_SLOT + i] >> 12) & 0xFFFFFF for i in range(4)] == want


def test_shared_percpu_keeps_per_vcpu_copies_coherent_with_the_kernel_l2():
    g = MiniGuest("shared-percpu")
    g.start_vcpu(1)
    kl2 = g.kernel_l2
    slot = 400
    l1 = g.alloc()
    g.make_ro(0, l1)
    assert g.mmu(0, ((kl2 << 12) + 8 * slot, (g.p2m(l1) << 12) | P | 0x62)) == 0
    for v in (0, 1):
        copy = g.e.area.pc_l2[v]
        assert g.e.memory.read_u64((copy << 12) + 8 * slot) >> 12 == g.p2m(l1)
        assert g.e.cpus[v].cr3 >> 12 == g.e.area.pc_l3[v]
    assert g.e.audit() == []


def test_walk_has_no_linear_slots_and_charges_each_entry_read():
    g = MiniGuest("walk")
    l3, l2s = g.new_pgd()
    g.new_l1(0, l2s[0], 0x40)
    assert g.switch(0, l3) == 0
    words = g.e.memory.frame_words(g.kernel_l2)
    assert all(words[LINEAR_SLOT + i] == 0 for i in range(4))
    n = g.e.stats["pv_soft_walk_ref"]
    assert g.hc(0, Hypercall.update_va_mapping, 0x08048000,
                (g.p2m(g.alloc()) << 12) | P | US, UVMF_INVLPG) == 0
    assert g.e.stats["pv_soft_walk_ref"] == n + 3


def test_xen_reads_l1es_through_the_vcpu_mmu_and_fills_its_tlb():
    g = MiniGuest("per-pagetable")
    l3, l2s = g.new_pgd()
    g.new_l1(0, l2s[0], 0x40)
    assert g.switch(0, l3) == 0
    va = 0x08048000
    misses = g.e.cpus[0].tlb_misses_4k
    assert g.hc(0, Hypercall.update_va_mapping, va, 0, UVMF_NONE) == 0
    assert g.e.cpus[0].tlb_misses_4k == misses + 1
    lva = linear_l1e_va(va) & ~0xFFF
    assert any(t.va == lva and t.writable for t in g.e.cpus[0].tlb_entries())
    assert LINEAR_PT_VIRT_START <= lva < LINEAR_PT_VIRT_START + (8 << 20)


def test_a_stale_linear_mapping_has_real_consequences_when_xen_forgets_to_flush():
    """Break the XSA-286 fix on purpose: with the queued invalidation dropped, VCPU 1's Xen
    writes through the stale linear translation into the old L1."""
    g = MiniGuest("per-pagetable", debug_audit=False)
    g.start_vcpu(1)
    l3, l2s = g.new_pgd()
    l1a = g.new_l1(0, l2s[0], 0x40)
    l1b = g.alloc()
    g.make_ro(0, l1b)          # before the switches: no type-change flush hides the bug
    assert g.switch(0, l3) == 0 and g.switch(1, l3) == 0
    va = 0x08048000
    assert g.hc(1, Hypercall.update_va_mapping, va, 0, UVMF_NONE) == 0
    assert g.mmu(0, ((g.p2m(l2s[0]) << 12) + 8 * 0x40, (g.p2m(l1b) << 12) | 0x67)) == 0
    g.e.area.pending[1].clear()                      # sabotage: forget the invalidation
    d = g.alloc()
    assert g.hc(1, Hypercall.update_va_mapping, va, (g.p2m(d) << 12) | P | US, 0) == 0
    assert g.e.memory.read_u64((g.p2m(l1a) << 12) + 8 * 0x48) >> 12 == g.p2m(d)
    assert g.e.memory.read_u64((g.p2m(l1b) << 12) + 8 * 0x48) == 0
    assert any("I2" in p for p in g.e.audit())       # l1a is no longer a table: counts lie


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_guest_flush_is_a_cr3_reload_the_k8_filter_may_keep(strategy):
    g = MiniGuest(strategy, vcpus=1)
    g.e.cpus[0].flush_filter = True
    g.read(0, g.si.pt_base)
    kept = g.e.cpus[0].filter_kept
    assert g.ext(0, MMUExt.TLB_FLUSH_LOCAL) == 0
    assert g.e.cpus[0].filter_kept == kept + 1
