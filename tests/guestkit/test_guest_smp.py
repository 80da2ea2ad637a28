"""SMP bring-up of the guest kernel on bare hardware (reference/linux-guest.md §1.3):
INIT-SIPI-SIPI per AP; the AP loads CR4 (PGE), EFER.NX, CR3 = swapper_pg_dir and sets
CR0.PG|WP, entering through the 16 MiB low identity map; when every CPU is up the BSP's
zap_low_mappings clears the 8 identity PMD entries and flushes every TLB, globals
included (flush_tlb_all by IPI; arch/i386/mm/init.c).
"""
from __future__ import annotations

import pytest

import guestkit.boot as bootcode
from engines.api import A_USER, A_WRITE, GuestPageFault
from engines.hw import PageFault
from guestkit import Guest, load_profile

import guest_harness as h

IDENTITY_ENTRIES = 8                  # 16 MiB of 2 MiB pages


def _start(vcpus: int, monkeypatch=None, observe=None):
    """start_kernel only (no init); `observe(phase, kernel)` runs just before and just
    after zap_low_mappings."""
    engine = h.native_engine(vcpus)
    guest = Guest(engine, load_profile("tiny"), 0)
    if observe is not None:
        zap = bootcode.zap_low_mappings

        def watched(k):
            observe("before", k)
            zap(k)
            observe("after", k)
        monkeypatch.setattr(bootcode, "zap_low_mappings", watched)
    guest.kernel.start_kernel()
    return engine, guest.kernel


def _pmd0(engine, k) -> list[int]:
    return [engine.memory.read_u64((k.swapper_pmds[0] << 12) + 8 * i)
            for i in range(IDENTITY_ENTRIES)]


@pytest.mark.parametrize("vcpus", [2, 4])
def test_every_vcpu_comes_online_and_smp_online_names_them_all(vcpus):
    events: list = []
    engine, guest = h.boot("tiny", vcpus=vcpus, events=events)
    assert guest.kernel.rq.online == [True] * vcpus
    smp = [d for e, v, d in events if e == "smp_online"]
    assert smp == [{"vcpus": vcpus}]
    ran = {t.vcpu for t in guest.kernel.tasks.values()}
    assert len(ran) > 1                    # work was spread beyond the BSP


@pytest.mark.parametrize("vcpus", [2, 4])
def test_aps_run_on_swapper_with_pge_wp_pg_and_nx_set(vcpus):
    """head.S startup_32_smp: CR4 from mmu_cr4_features, EFER.NX, CR3 = swapper_pg_dir,
    CR0.PG|WP. One CR3 load per AP (linux-guest.md §1.3 'MMU events per AP')."""
    engine, k = _start(vcpus)
    for ap in range(1, vcpus):
        cpu = engine.cpus[ap]
        assert (cpu.cr4_pge, cpu.cr0_wp, cpu.cr0_pg, cpu.efer_nxe) == (True,) * 4
        assert cpu.cr3 == k.swapper_pa
        assert cpu.cr3_loads == 1
        assert cpu.pdptes == tuple(engine.memory.read_u64(k.swapper_pa + 8 * i)
                                   for i in range(4))


def test_the_low_identity_map_serves_the_trampoline_then_is_zapped_everywhere(monkeypatch):
    """Before zap_low_mappings the first 16 MiB are identity-mapped (2 MiB pages, not
    global) and each CPU can use them; after it the 8 PMD entries are clear and no CPU
    still translates a low address, even one that had it cached."""
    seen = {}

    def observe(phase, k):
        e = k.engine
        seen[phase] = {"pmd0": _pmd0(e, k),
                       "flush_global": [c.flush_global for c in e.cpus],
                       "ipi": e.stats["ipi"]}
        if phase == "before":
            for cpu in e.cpus:
                assert cpu.translate(0x00345678) == 0x00345678
        else:
            for cpu in e.cpus:
                with pytest.raises(PageFault) as exc:
                    cpu.translate(0x00345678)
                assert exc.value.error_code == 0            # not present

    engine, k = _start(4, monkeypatch, observe)
    before, after = seen["before"], seen["after"]
    assert before["pmd0"] == [(i << 21) | h.P | h.RW | h.A | h.D | h.PS
                              for i in range(IDENTITY_ENTRIES)]
    assert after["pmd0"] == [0] * IDENTITY_ENTRIES and _pmd0(engine, k) == after["pmd0"]
    assert k.identity_entries == 0


def test_zap_low_mappings_flushes_globals_on_every_cpu_by_ipi(monkeypatch):
    """flush_tlb_all: the BSP flushes itself and IPIs every other online CPU; each flush
    toggles CR4.PGE, which drops global entries too (counted as hw.flush_global)."""
    seen = {}

    def observe(phase, k):
        seen[phase] = ([c.flush_global for c in k.engine.cpus], k.engine.stats["ipi"],
                       k.stats["flush_tlb_all"])
    _start(4, monkeypatch, observe)
    (g0, ipi0, all0), (g1, ipi1, all1) = seen["before"], seen["after"]
    assert all(b > a for a, b in zip(g0, g1)), (g0, g1)
    assert ipi1 - ipi0 == 3 and all1 - all0 == 1


def test_a_uniprocessor_boot_builds_no_identity_map_and_zaps_nothing(monkeypatch):
    calls = []
    engine, k = _start(1, monkeypatch, lambda phase, k: calls.append(phase))
    assert calls == []
    assert _pmd0(engine, k) == [0] * IDENTITY_ENTRIES
    assert k.rq.online == [True]


def test_the_boot_counts_a_global_flush_per_cpu_at_zap_time():
    """The result's hw.flush_global: paging_init (PGE on, then __flush_tlb_all: 3 on the
    BSP), each AP's CR4 load (1), and zap_low_mappings' flush_tlb_all (2 per CPU)."""
    for vcpus in (1, 2, 4):
        engine, k = _start(vcpus)
        zap = 2 * vcpus if vcpus > 1 else 0
        assert engine.hw_counters().flush_global == 3 + (vcpus - 1) + zap, vcpus


# ------------------------------------------------------------- cross-VCPU shootdowns

def _mm_on_two_vcpus(lazy_on_1: bool):
    """init's mm, loaded on VCPU 0 (init ran there and sleeps: lazy) and on VCPU 1 (as if
    another task of the mm ran there last), with VCPU 1's TLB caching the heap page
    writable."""
    engine, guest = h.run_init(h.heap_sleeper, vcpus=2)
    k = guest.kernel
    init = h.task_by_place(guest, "init")
    mm, va = init.mm, init.image.region(init.mm, "heap").start + 8
    k.switch_mm(1, mm)
    k.lazy[1] = lazy_on_1
    engine.write(1, va, 0x1234, A_USER | A_WRITE)
    assert mm.active_on == {0, 1}
    return engine, k, mm, va


def test_a_pte_change_reaches_the_tlb_of_another_vcpu_running_the_mm_by_ipi():
    """flush_tlb_mm sends an IPI to every other CPU in the mm's cpu_vm_mask
    (arch/i386/kernel/smp.c flush_tlb_others); the target flushes, so its next write
    through the now read-only PTE faults (P=1, W=1, U=1)."""
    engine, k, mm, va = _mm_on_two_vcpus(lazy_on_1=False)
    ipis, received = engine.stats["ipi"], k.stats["flush_ipis_received"]
    k.mmm.mprotect(0, mm, va & ~0xFFF, (va & ~0xFFF) + 4096, False)
    assert engine.stats["ipi"] == ipis + 1
    assert k.stats["flush_ipis_received"] == received + 1
    with pytest.raises(GuestPageFault) as exc:
        engine.write(1, va, 0x5678, A_USER | A_WRITE)
    assert exc.value.error_code == 0x7


def test_a_lazy_vcpu_answers_a_flush_ipi_by_leaving_the_mm():
    """smp_invalidate_interrupt on a CPU in lazy TLB mode calls leave_mm: it loads
    swapper_pg_dir and drops out of the mm's cpu_vm_mask, so later flushes skip it."""
    engine, k, mm, va = _mm_on_two_vcpus(lazy_on_1=True)
    k.mmm.mprotect(0, mm, va & ~0xFFF, (va & ~0xFFF) + 4096, False)
    assert engine.cpus[1].cr3 == k.swapper_pa and k.active_mm[1] is None
    assert mm.active_on == {0} and k.stats["leave_mm"] >= 1
    ipis = engine.stats["ipi"]
    k.mmm.mprotect(0, mm, va & ~0xFFF, (va & ~0xFFF) + 4096, False)
    assert engine.stats["ipi"] == ipis


def test_a_flush_of_an_mm_loaded_only_here_sends_no_ipi():
    engine, guest = h.run_init(h.heap_sleeper, vcpus=2)
    k = guest.kernel
    init = h.task_by_place(guest, "init")
    ipis = engine.stats["ipi"]
    start = init.image.region(init.mm, "heap").start
    k.mmm.mprotect(0, init.mm, start, start + 4096, False)
    assert engine.stats["ipi"] == ipis and init.mm.active_on == {0}
