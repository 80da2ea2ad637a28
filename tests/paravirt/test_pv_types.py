"""The PV page-type system, validation and the MMU hypercall ABI (reference/xen-pv.md §1-2),
driven through the guest-facing contract of `engines.paravirt.PVEngine`."""
import pytest

from engines.api import ABI, GuestCrash, GuestPageFault
from engines.api.xen import (DOMID_IO, DOMID_SELF, DOMID_XEN, HYPERVISOR_VIRT_START,
                             MACH2PHYS_VIRT_START, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
                             UVMF_ALL, UVMF_INVLPG, UVMF_TLB_FLUSH, VMASST_CMD_enable, Errno,
                             Hypercall, MmuextOp, MMUExt, MmuUpdate, MulticallEntry,
                             SuccessCount, VcpuGuestContext, VcpuOp, VMAssist,
                             xen_cr3_to_pfn, xen_pfn_to_cr3)
from engines.paravirt import DEFAULTS, OPTIONS
from engines.paravirt.frames import PGT
from engines.paravirt.hypercalls import PREEMPT_EVERY

from pv_harness import A, D, G, NX, P, PS, RW, US, MiniGuest, make_engine

EINVAL, EFAULT, ESRCH, EEXIST, ENOSYS = (-Errno.EINVAL, -Errno.EFAULT, -Errno.ESRCH,
                                         -Errno.EEXIST, -Errno.ENOSYS)


@pytest.fixture
def g():
    return MiniGuest()


def info(g, pfn):
    return g.e.frames.pages[g.p2m(pfn)]


# -- the domain builder ---------------------------------------------------------------------
def test_boot_info_describes_a_xen_pv_domain_entered_with_paging_on():
    e = make_engine()
    b = e.boot_info()
    assert b.abi is ABI.XEN_PV and b.paging_on_at_entry and not b.superpages
    assert b.hypervisor_virt_start == 0xF5800000 and b.shared_kernel_pmd is False
    si = b.start_info
    assert si.nr_pages == 16 << 8 and si.nr_pt_frames >= 6
    assert si.pt_base >= 0xC0000000 and si.mfn_list >= 0xC0000000
    assert e.audit() == []


def test_options_describe_the_four_strategies_and_default_to_per_pagetable():
    assert OPTIONS["strategy"] == ("per-pagetable", "shared", "shared-percpu", "walk")
    assert DEFAULTS["strategy"] == "per-pagetable" and DEFAULTS["ptwr"] is True
    with pytest.raises(ValueError, match="strategy"):
        make_engine("nope")


def test_domain_frames_are_scattered_over_machine_memory_above_4_gib():
    """Default machine memory is 8 GiB: most frames of the domain sit above 4 GiB."""
    eng = make_engine(machine_mib=8192)
    high = sum(1 for m in eng.layout.p2m if m >= 0x100000)
    assert high > len(eng.layout.p2m) // 3
    assert eng.memory.size == 8 << 30


def test_p2m_and_m2p_agree_and_the_m2p_is_guest_readable_but_read_only(g):
    for pfn in (0, 7, g.si.nr_pages - 1):
        assert g.m2p(g.p2m(pfn)) == pfn
    with pytest.raises(GuestPageFault) as f:
        g.write(0, MACH2PHYS_VIRT_START, 0)
    assert f.value.error_code == 0x3


def test_the_bootstrap_tables_are_read_only_and_the_bootstrap_l3_pinned(g):
    l3 = g.e.frames.pages[g.boot_l3]
    assert l3.pinned and l3.validated and l3.type == PGT.L3
    with pytest.raises(GuestPageFault) as f:
        g.write(0, g.si.pt_base, 0)
    assert f.value.error_code == 0x3                 # supervisor write, present: not ptwr (L3)


def test_accesses_beyond_the_guest_segment_limit_kill_the_kernel(g):
    with pytest.raises(GuestCrash, match="segment limit"):
        g.read(0, 0xFD800000)


# -- page types -----------------------------------------------------------------------------
def test_pinning_an_l1_that_is_still_mapped_writable_fails_with_einval(g):
    pfn = g.alloc()
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(pfn)) == EINVAL
    assert "may not be writable" in g.e.validator.last_error or info(g, pfn).tcount == 1
    g.make_ro(0, pfn)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(pfn)) == 0
    assert info(g, pfn).type == PGT.L1 and info(g, pfn).pinned
    assert g.e.audit() == []


def test_a_pinned_l1_cannot_be_mapped_writable(g):
    pfn = g.alloc()
    g.make_ro(0, pfn)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(pfn)) == 0
    assert g.make_rw(0, pfn) == EINVAL
    assert g.e.audit() == []


def test_pin_is_not_nested_and_unpin_of_an_unpinned_frame_fails(g):
    pfn = g.alloc()
    g.make_ro(0, pfn)
    mfn = g.p2m(pfn)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, mfn) == 0
    before = (info(g, pfn).count, info(g, pfn).tcount)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, mfn) == EINVAL
    assert (info(g, pfn).count, info(g, pfn).tcount) == before
    assert g.ext(0, MMUExt.UNPIN_TABLE, mfn) == 0
    assert g.ext(0, MMUExt.UNPIN_TABLE, mfn) == EINVAL
    assert not info(g, pfn).validated and info(g, pfn).tcount == 0
    assert g.e.audit() == []


def test_pin_l4_is_silently_ignored_on_pae(g):
    assert g.ext(0, MMUExt.PIN_L4_TABLE, g.p2m(g.alloc())) == 0


def test_an_unpinned_unreferenced_table_loses_validation_and_is_rescanned(g):
    pfn = g.alloc()
    g.make_ro(0, pfn)
    mfn = g.p2m(pfn)
    g.ext(0, MMUExt.PIN_L1_TABLE, mfn)
    g.ext(0, MMUExt.UNPIN_TABLE, mfn)
    n = g.e.stats["pv_validate_table"]
    g.ext(0, MMUExt.PIN_L1_TABLE, mfn)
    assert g.e.stats["pv_validate_table"] == n + 1


def test_validation_refuses_global_and_pat_bits_in_l1_entries(g):
    l1 = g.alloc()
    data = g.alloc()
    g.write(0, g.kva(l1), (g.p2m(data) << 12) | P | G)
    g.make_ro(0, l1)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(l1)) == EINVAL
    assert "disallowed flags 0x100" in g.e.validator.last_error


def test_validation_refuses_frames_the_domain_does_not_own(g):
    l1 = g.alloc()
    xen_frame = g.e.layout.m2p_first
    g.write(0, g.kva(l1), (xen_frame << 12) | P)
    g.make_ro(0, l1)
    assert g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(l1)) == EINVAL
    assert "not owned" in g.e.validator.last_error


def test_validation_refuses_pse_in_l2_entries_pv_has_no_superpages(g):
    l2 = g.alloc()
    g.write(0, g.kva(l2), (g.p2m(g.alloc()) << 12) | P | RW | PS)
    g.make_ro(0, l2)
    assert g.ext(0, MMUExt.PIN_L2_TABLE, g.p2m(l2)) == EINVAL
    assert "no PSE" in g.e.validator.last_error


def test_an_l3_needs_slot_3_present_and_may_not_carry_rw(g):
    l3 = g.alloc()
    l2 = g.alloc()
    g.write(0, g.kva(l3), (g.p2m(l2) << 12) | P)
    for p in (l3, l2):
        g.make_ro(0, p)
    assert g.ext(0, MMUExt.PIN_L3_TABLE, g.p2m(l3)) == EINVAL
    assert "slot 3 must be present" in g.e.validator.last_error
    assert g.e.audit() == []


def test_an_l3_above_4_gib_needs_the_extended_cr3_assist():
    """0b3823d582: PAE pgdirs below 4 GB unless VMASST_TYPE_pae_extended_cr3; with it,
    make_cr3 loads a below-4-GiB pae_l3_cache copy."""
    g = MiniGuest(extended_cr3=False, machine_mib=8192)
    pfn = g.alloc()
    while g.p2m(pfn) < 0x100000:
        pfn = g.alloc()
    high = g.p2m(pfn)
    l3, _ = g.new_pgd(l3=pfn, pin=False)
    assert g.ext(0, MMUExt.PIN_L3_TABLE, high) == EINVAL
    assert "above 4 GiB" in g.e.validator.last_error
    assert g.hc(0, Hypercall.vm_assist, VMASST_CMD_enable, VMAssist.pae_extended_cr3) == 0
    assert g.ext(0, MMUExt.PIN_L3_TABLE, high) == 0
    assert g.ext(0, MMUExt.NEW_BASEPTR, high) == 0
    cpu = g.e.cpus[0]
    assert cpu.cr3 < 1 << 32 and cpu.cr3 >> 12 != high          # the pae_l3_cache copy
    assert g.e.stats["pv_l3_cache_copies"] >= 1 and g.e.audit() == []
    assert g.read(0, g.si.pt_base) != 0                            # kernel still mapped


def test_the_kernel_l2_of_an_l3_can_sit_in_only_one_l3_per_pagetable(g):
    """PAE L3 3rd slot is shared: refused (type count of the Xen L2 must be 1)."""
    l3 = g.alloc()
    l2s = [g.alloc() for _ in range(3)]
    for i, l2 in enumerate(l2s):
        g.write(0, g.kva(l3) + 8 * i, (g.p2m(l2) << 12) | P)
    g.write(0, g.kva(l3) + 24, (g.kernel_l2 << 12) | P)
    for p in l2s + [l3]:
        g.make_ro(0, p)
    assert g.ext(0, MMUExt.PIN_L3_TABLE, g.p2m(l3)) == EINVAL
    assert "3rd slot is shared" in g.e.validator.last_error
    assert g.e.audit() == []


def test_the_xen_l2_cannot_be_an_ordinary_l2_in_slot_0(g):
    """Type-flag exclusivity: a pae_xen_l2 L2 cannot appear in slots 0-2 of an L3."""
    l3, l2s = g.new_pgd()
    other = g.alloc()
    g.write(0, g.kva(other), (g.p2m(l2s[3]) << 12) | P)    # slot 0 -> a pae_xen_l2 L2
    fresh = [g.alloc() for _ in range(3)]
    for i, p in enumerate(fresh):
        g.write(0, g.kva(other) + 8 * (i + 1), (g.p2m(p) << 12) | P)
    for p in fresh + [other]:
        g.make_ro(0, p)
    assert info(g, l2s[3]).xen_l2
    assert g.ext(0, MMUExt.PIN_L3_TABLE, g.p2m(other)) == EINVAL
    assert "cannot be an L2" in g.e.validator.last_error
    assert g.e.audit() == []


# -- mmu_update -----------------------------------------------------------------------------
def test_mmu_update_stops_at_the_first_failure_and_reports_how_many_were_done(g):
    l3, l2s = g.new_pgd()
    l1 = g.new_l1(0, l2s[0], 0x40)
    base = g.p2m(l1) << 12
    data = [g.p2m(g.alloc()) for _ in range(3)]
    done = SuccessCount()
    rc = g.mmu(0, (base, (data[0] << 12) | P | RW), (base + 8, (data[1] << 12) | P | G),
               (base + 16, (data[2] << 12) | P), done=done)
    assert rc == EINVAL and done.value == 1
    assert g.e.memory.read_u64(base) >> 12 == data[0]             # not rolled back
    assert g.e.memory.read_u64(base + 16) == 0                    # never reached
    assert g.e.audit() == []


def test_mmu_update_on_a_frame_that_is_no_page_table_is_a_plain_write(g):
    pfn = g.alloc()
    assert g.mmu(0, (g.p2m(pfn) << 12, 0x1234)) == 0
    assert g.read(0, g.kva(pfn)) == 0x1234


def test_mmu_update_fast_path_revalidates_a_change_of_rw(g):
    """Only A/D/NX/AVL/GLOBAL/USER may skip re-validation (XSA-182)."""
    l3, l2s = g.new_pgd()
    l1 = g.new_l1(0, l2s[0], 0x40)
    victim = g.alloc()
    g.make_ro(0, victim)
    g.ext(0, MMUExt.PIN_L1_TABLE, g.p2m(victim))
    ptr = g.p2m(l1) << 12
    assert g.mmu(0, (ptr, (g.p2m(victim) << 12) | P | A)) == 0
    assert g.mmu(0, (ptr, (g.p2m(victim) << 12) | P | A | D | US | NX)) == 0
    assert g.mmu(0, (ptr, (g.p2m(victim) << 12) | P | A | RW)) == EINVAL
    assert g.e.audit() == []


def test_mmu_update_errors_for_bad_command_foreign_domain_and_unreadable_array(g):
    pfn = g.alloc()
    ma = g.p2m(pfn) << 12
    assert g.mmu(0, (ma | 5, 0)) == EINVAL
    assert g.hc(0, Hypercall.mmu_update, [MmuUpdate(ma, 0)], 1, None, DOMID_XEN) == ESRCH
    assert g.hc(0, Hypercall.mmu_update, [MmuUpdate(ma, 0)], 2, None, DOMID_SELF) == EFAULT
    assert g.hc(0, Hypercall.mmu_update, "junk", 1, None, DOMID_SELF) == EFAULT


def test_domid_io_cannot_map_ram(g):
    l3, l2s = g.new_pgd()
    l1 = g.new_l1(0, l2s[0], 0x40)
    req = MmuUpdate((g.p2m(l1) << 12) | MMU_NORMAL_PT_UPDATE, (g.p2m(g.alloc()) << 12) | P)
    assert g.hc(0, Hypercall.mmu_update, [req], 1, None, DOMID_IO) == EINVAL


def test_machphys_update_writes_the_m2p_for_own_frames_only(g):
    pfn = g.alloc()
    assert g.hc(0, Hypercall.mmu_update,
                [MmuUpdate((g.p2m(pfn) << 12) | MMU_MACHPHYS_UPDATE, 0x777)], 1, None,
                DOMID_SELF) == 0
    assert g.m2p(g.p2m(pfn)) == 0x777
    xen = g.e.layout.m2p_first
    assert g.hc(0, Hypercall.mmu_update, [MmuUpdate((xen << 12) | MMU_MACHPHYS_UPDATE, 1)],
                1, None, DOMID_SELF) == EINVAL


def test_huge_batches_are_preempted_and_continued_transparently(g):
    pfn = g.alloc()
    ma = g.p2m(pfn) << 12
    n = 3 * PREEMPT_EVERY + 5
    done = SuccessCount()
    reqs = [MmuUpdate(ma + 8 * (i % 512), i) for i in range(n)]
    hc = g.e.stats["hypercall"]
    assert g.hc(0, Hypercall.mmu_update, reqs, n, done, DOMID_SELF) == 0
    assert done.value == n and g.e.stats["pv_preemptions"] == 3
    assert g.e.stats["hypercall"] == hc + 4


# -- mmuext_op, update_va_mapping, multicall ---------------------------------------------------
def test_new_baseptr_to_a_frame_that_cannot_be_an_l3_crashes_the_domain(g):
    """3.0.3 new_guest_cr3: retry without the old base, then domain_crash."""
    with pytest.raises(GuestCrash, match="baseptr"):
        g.ext(0, MMUExt.NEW_BASEPTR, g.p2m(g.alloc()))
    with pytest.raises(GuestCrash):
        g.read(0, g.si.pt_base)


def test_update_va_mapping_refuses_xen_addresses_and_unmapped_l2s(g):
    e = (g.p2m(g.alloc()) << 12) | P
    assert g.hc(0, Hypercall.update_va_mapping, HYPERVISOR_VIRT_START, e, 0) == EINVAL
    assert g.hc(0, Hypercall.update_va_mapping, 0x08048000, e, 0) == EINVAL
    assert g.hc(0, Hypercall.update_va_mapping, 0x1000, e, 7 << 8) == EFAULT


def test_a_failed_update_va_mapping_flushes_nothing(g):
    """XSA-279: no flush or other side effect from a failed update."""
    flushes = g.e.cpus[0].flush_full
    assert g.hc(0, Hypercall.update_va_mapping, 0x08048000, 1, UVMF_TLB_FLUSH | UVMF_ALL) \
        == EINVAL
    assert g.e.cpus[0].flush_full == flushes and g.e.stats["pv_tlb_flushes"] == 0


def test_update_va_mapping_with_invlpg_makes_the_new_mapping_visible(g):
    l3, l2s = g.new_pgd()
    g.new_l1(0, l2s[0], 0x40)
    assert g.switch(0, l3) == 0
    a, b = g.alloc(), g.alloc()
    g.write(0, g.kva(a), 0xAAAA)
    g.write(0, g.kva(b), 0xBBBB)
    va = 0x08048000
    assert g.hc(0, Hypercall.update_va_mapping, va, (g.p2m(a) << 12) | P | US, UVMF_INVLPG) == 0
    assert g.read(0, va, 4) == 0xAAAA
    assert g.hc(0, Hypercall.update_va_mapping, va, (g.p2m(b) << 12) | P | US, UVMF_INVLPG) == 0
    assert g.read(0, va, 4) == 0xBBBB


def test_multicall_runs_every_entry_and_stores_each_result(g):
    pfn = g.alloc()
    calls = [MulticallEntry(Hypercall.update_va_mapping, (g.kva(pfn),
                                                          (g.p2m(pfn) << 12) | P | A, 0)),
             MulticallEntry(Hypercall.update_va_mapping, (HYPERVISOR_VIRT_START, 0, 0)),
             MulticallEntry(Hypercall.mmuext_op, ([MmuextOp(MMUExt.PIN_L1_TABLE,
                                                            g.p2m(pfn))], 1, None, DOMID_SELF)),
             MulticallEntry(Hypercall.multicall, ([],))]
    assert g.hc(0, Hypercall.multicall, calls) == 0
    assert [c.result for c in calls] == [0, EINVAL, 0, EINVAL]
    assert g.e.stats["hypercall"] == 3          # 2 vm_assist + one crossing for the batch


def test_vcpu_initialise_once_then_up(g):
    ctxt = VcpuGuestContext(ctrlreg3=xen_pfn_to_cr3(g.boot_l3))
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.up, 1) == EINVAL
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.initialise, 1, ctxt) == 0
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.initialise, 1, ctxt) == EEXIST
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.is_up, 1) == 0
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.up, 1) == 0
    assert g.hc(0, Hypercall.vcpu_op, VcpuOp.is_up, 1) == 1
    assert g.read(1, g.si.pt_base) == g.read(0, g.si.pt_base)
    assert g.e.audit() == []


def test_extended_cr3_encoding_round_trips_mfns_above_4_gib():
    for mfn in (0x1234, 0xFFFFF, 0x100000, 0x1FFFFF):
        assert xen_cr3_to_pfn(xen_pfn_to_cr3(mfn)) == mfn


def test_unknown_hypercalls_and_vm_assist_types_are_refused(g):
    assert g.hc(0, 99) == ENOSYS
    assert g.hc(0, Hypercall.iret) == ENOSYS
    assert g.hc(0, Hypercall.vm_assist, VMASST_CMD_enable, 9) == EINVAL


def test_privileged_instructions_from_ring_1(g):
    """write_cr3 is emulated as NEW_BASEPTR; INVLPG and CR4 changes are fatal #GPs."""
    l3, _ = g.new_pgd()
    g.e.write_cr3(0, xen_pfn_to_cr3(g.p2m(l3)))
    assert g.e.base[0] == g.p2m(l3) and g.e.stats["pv_emulated_cr3"] == 1
    g.e.set_control(0, wp=True)                       # no change: allowed
    with pytest.raises(GuestCrash, match="INVLPG"):
        g.e.invlpg(0, 0x1000)


def test_set_gdt_takes_segment_descriptor_references(g):
    pfn = g.alloc()
    assert g.hc(0, Hypercall.set_gdt, [g.p2m(pfn)], 16) == EINVAL     # still writable
    g.make_ro(0, pfn)
    assert g.hc(0, Hypercall.set_gdt, [g.p2m(pfn)], 16) == 0
    assert info(g, pfn).type == PGT.SEG_DESC
    assert g.make_rw(0, pfn) == EINVAL
    assert g.mmu(0, (g.p2m(pfn) << 12, 0)) == EINVAL
    assert g.e.audit() == []


def test_the_incremental_audit_sees_a_reference_nobody_holds_and_the_full_one_any_drift(g):
    pfn = g.alloc()
    assert g.e.audit() == [] and g.e.audit(full=True) == []
    assert g.e.frames.get_page(g.p2m(pfn), 1)           # a reference without a holder
    assert any("I2" in p for p in g.e.audit())
    g.e.frames.put_page(g.p2m(pfn))
    assert g.e.audit() == []
    g.e.frames.pages[g.p2m(pfn)].count += 1              # drift behind Xen's back
    assert any("I2" in p for p in g.e.audit(full=True))
