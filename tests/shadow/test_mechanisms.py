"""The shadow engine's mechanisms one at a time, each on the tiny guest: what Xen does and
what it is charged (reference/shadow.md §2-6, costs.md §2)."""
from __future__ import annotations

import pytest

from engines.api import ABI, DomainSpec, GuestPageFault, load_cost_table
from engines.hw import AddressError, GeneralProtection
from engines.shadow import DEFAULTS, OPTIONS, ShadowEngine, min_pool_pages

import tiny_guest as g


def booted(vcpus=1, costs="p4-xeon-2005", **options):
    e = g.make("shadow", vcpus, costs, **options)
    g.boot(e, vcpus)
    return e


def l1_shadowed(e, pfn):
    return any(sp.type == "l1" for sp in e.pool.by_gfn.get(pfn, ()))


def touch(e, pde=0, pte=0):
    return e.read(0, g.test_va(pde, pte), 4)


def test_boot_info_is_translated_with_xen_hole_and_no_superpages():
    info = g.make("shadow").boot_info()
    assert info.abi is ABI.TRANSLATED and not info.paging_on_at_entry
    assert info.hypervisor_virt_start == 0xF5800000
    assert not info.superpages and info.shared_kernel_pmd


def test_guest_frames_are_scattered_over_8_gib_some_above_4_gib():
    e = ShadowEngine(DomainSpec(vcpus=1, memory_mib=64, seed=5), load_cost_table())
    assert e.memory.size == 8 << 30
    assert any(m >= 1 << 20 for m in e.p2m.p2m) and len(set(e.p2m.p2m)) == len(e.p2m.p2m)
    assert all(v.sl3_mfn < 1 << 20 for v in e.vs)
    assert e.p2m.p2m == ShadowEngine(DomainSpec(vcpus=1, memory_mib=64, seed=5),
                                     load_cost_table()).p2m.p2m


def test_paging_off_runs_on_the_physical_mode_table_up_to_the_last_pfn():
    e = g.make("shadow")
    e.write(0, 0x5008, 42)
    assert e.read(0, 0x5008) == 42 == g.guest_page(e, 5)[1]
    with pytest.raises(AddressError):
        e.read(0, g.MEMORY_MIB << 20)


def test_xen_area_refuses_everything_but_supervisor_reads_of_the_p2m():
    e = booted()
    assert e.read(0, 0xF5800000 + 8) == e.p2m.p2m[1]          # RO_MPT: the domain's P2M
    for va, acc in ((0xF5800000, 2), (0xF5800000, 4), (0xFF400000, 0)):
        with pytest.raises(GeneralProtection):
            e.write(0, va, 1, acc) if acc & 2 else e.read(0, va, acc)


def test_pte_write_to_a_shadowed_l1_is_emulated_and_propagated():
    e = booted()
    touch(e)
    assert l1_shadowed(e, 5)
    before = e.stats["sh_emulate"]
    e.write(0, g.kva(5), (70 << 12) | g.P | g.RW | g.US)
    e.invlpg(0, g.test_va(0, 0))
    assert e.stats["sh_emulate"] == before + 1
    assert touch(e) == g.guest_page(e, 70)[0]
    assert e.audit() == []


def test_rights_change_of_a_writable_pte_keeps_its_writable_mapping_recorded():
    """shadow_set_l1e takes the new entry's references before dropping the old one's
    (multi.c); a new entry that maps the same frame writable again must stay recorded as a
    writable mapping, or write-access removal (sh_remove_write_access, I1) would miss it."""
    e = booted()
    e.write(0, g.test_va(0, 0), 1, 4)                   # user write: guest A/D, shadow RW
    mfn = e.p2m.p2m[g.DATA[0]]
    assert len(e.wrmaps[mfn]) == 1
    e.write(0, g.kva(5), (g.DATA[0] << 12) | g.P | g.RW | g.A | g.D)   # drop U/S only
    e.invlpg(0, g.test_va(0, 0))
    assert e.write(0, g.test_va(0, 0), 2) is None       # supervisor write, same frame
    assert len(e.wrmaps.get(mfn, ())) == 1
    assert e.audit() == []


def test_flags_change_of_a_pde_keeps_the_l1_shadow_linked_to_its_parent():
    """shadow_set_l2e takes a reference on the new child before dropping the old one; a
    PDE rewritten to the same L1 with other flags (here XD) must leave that L1 shadow's
    up-pointer to the entry, or unshadowing the L1 would leave the L2 entry pointing at
    a freed shadow page."""
    e = booted()
    touch(e)                                            # L1 5 shadowed under L2 3 entry 0
    l1 = next(sp for sp in e.pool.by_gfn[5] if sp.type == "l1")
    e.write(0, g.kva(3), (5 << 12) | g.P | g.RW | g.US | g.A | g.XD)
    assert len(l1.up) == 1 and l1.refs == 1
    assert e.audit() == []


def test_two_zero_writes_in_a_row_unshadow_the_page_unless_early_unshadow_is_off():
    for early in (True, False):
        e = booted(early_unshadow=early)
        touch(e)
        e.write(0, g.kva(5) + 8 * 0, 0)
        e.write(0, g.kva(5) + 8 * 1, 0)
        assert l1_shadowed(e, 5) is not early
        assert e.stats["sh.unshadow_early"] == int(early)
        assert e.audit() == []


def test_pae_high_half_write_does_not_count_for_early_unshadow_and_shares_a_trap():
    e = booted()
    touch(e)
    traps = e.stats["trap"]
    g.write_u32(e, 0, g.kva(5) + 4, 0)          # high half first, as Linux set_pte
    g.write_u32(e, 0, g.kva(5), 0)              # low half: caught in the same trap
    assert e.stats["trap"] == traps + 1 and e.stats["sh_emulate"] >= 2
    g.write_u32(e, 0, g.kva(5) + 12, 0)
    assert l1_shadowed(e, 5)                    # only one low-half zero write so far
    g.write_u32(e, 0, g.kva(5) + 8, 0)
    assert not l1_shadowed(e, 5)
    assert e.audit() == []


def test_the_second_half_of_a_pte_is_emulated_in_the_trap_never_run_on_the_hardware():
    # Xen emulates the instructions after a trapped PT write (sh_page_fault's "emulate up
    # to four more" loop): the second store never executes on the CPU, so it makes no
    # hardware walk and takes no #PF. Only the first half's walk is charged.
    e = booted()
    touch(e)
    cpu = e.cpus[0]

    def hw():
        return (cpu.walks, cpu.faults_not_present + cpu.faults_protection,
                cpu.pde_reads + cpu.pte_reads, cpu.tlb_misses_4k)
    g.write_u32(e, 0, g.kva(5) + 4, 0x12)         # high half: hardware walk, #PF, emulated
    before = hw()
    traps, emulated = e.stats["trap"], e.stats["sh_emulate"]
    g.write_u32(e, 0, g.kva(5), 0x3000 | 0x63)  # low half: caught in the same trap
    assert hw() == before
    assert (e.stats["trap"], e.stats["sh_emulate"]) == (traps, emulated + 1)
    assert e._gread(5 << 12) == (0x12 << 32) | 0x3063
    assert e.audit() == []


@pytest.mark.parametrize("between", ["invlpg", "flush_tlb", "write_cr3", "set_control"])
def test_a_trap_between_the_halves_ends_the_emulation_the_other_half_traps_again(between):
    # Xen's emulator carries on only into the instructions right after the trapped one:
    # a privileged operation between the halves is a trap of its own, so the other half
    # runs on the CPU again, walks, faults and is emulated in a new trap
    e = booted()
    touch(e)
    cpu = e.cpus[0]
    g.write_u32(e, 0, g.kva(5) + 4, 0x12)
    {"invlpg": lambda: e.invlpg(0, g.kva(5)),
     "flush_tlb": lambda: e.flush_tlb(0),
     "write_cr3": lambda: e.write_cr3(0, e.vs[0].gcr3),
     "set_control": lambda: e.set_control(0, nxe=e.vs[0].nxe)}[between]()
    walks, traps, emulated = cpu.walks, e.stats["trap"], e.stats["sh_emulate"]
    g.write_u32(e, 0, g.kva(5), 0x3000 | 0x63)
    assert cpu.walks > walks and e.stats["trap"] == traps + 1
    assert e.stats["sh_emulate"] == emulated + 1
    assert e._gread(5 << 12) == (0x12 << 32) | 0x3063
    assert e.audit() == []


def test_a_later_store_to_the_page_of_the_last_emulated_write_reuses_its_walk_while_it_holds():
    # a simulation shortcut only: the reused record is the one a new guest walk returns
    # (bar its va), charged as walked; once an entry it read changes, the guest is walked
    e = booted()
    touch(e)
    g.write_u32(e, 0, g.kva(5) + 4, 0)          # trapped, walked, emulated
    g.write_u32(e, 0, g.kva(5), 0)
    vs, va = e.vs[0], g.kva(5) + 16
    fresh = e._walkers[vs.nxe](va, g.A_WRITE, vs.gl3e, e._frame, None, vs.wp, e._p2m)
    again = e._walk_again(vs, va, g.A_WRITE)
    assert again is not None and again[1:] == fresh[1:] and fresh.refs == 2
    refs, traps = e.stats["sh_guest_walk_ref"], e.stats["trap"]
    g.write_u32(e, 0, va + 4, 0)
    assert (e.stats["sh_guest_walk_ref"], e.stats["trap"]) == (refs + 2, traps + 1)
    gpte = fresh.gpas[2]                        # the PTE mapping the page loses D
    e.memory.write_u64((e._p2m[gpte >> 12] << 12) | (gpte & 0xFFF), fresh.entries[2] & ~g.D)
    assert e._walk_again(vs, va, g.A_WRITE) is None
    assert e.audit() == []


def test_user_mode_write_to_a_page_table_unshadows_it_and_goes_through():
    e = booted()
    e.write(0, g.kva(6) + 8 * 7, (5 << 12) | g.P | g.RW | g.US)   # L1 5 mapped to the user
    e.flush_tlb(0, True)
    touch(e, 0, 0)
    touch(e, 1, 7)
    assert l1_shadowed(e, 5)
    e.write(0, g.test_va(1, 7) + 8 * 100, 99, 4)
    assert not l1_shadowed(e, 5) and g.guest_page(e, 5)[100] == 99
    assert e.stats["sh.unshadow_user_write"] == 1
    assert e.audit() == []


def test_user_write_to_a_page_table_that_maps_itself_is_emulated():
    e = booted()
    e.write(0, g.kva(5) + 8 * 7, (5 << 12) | g.P | g.RW | g.US)   # L1 5 maps itself
    e.flush_tlb(0, True)
    touch(e, 0, 7)
    e.write(0, g.test_va(0, 7) + 8 * 100, 99, 4)
    assert l1_shadowed(e, 5) and g.guest_page(e, 5)[100] == 99
    assert e.audit() == []


@pytest.mark.parametrize("heuristic,how", [(True, "heuristic"), (False, "scan")])
def test_promotion_removes_the_direct_map_writable_mapping(heuristic, how):
    e = booted(wrmap_heuristic=heuristic)
    e.write(0, g.kva(20), (64 << 12) | g.P | g.US)   # direct map of pfn 20 now writable
    e.write(0, g.kva(3) + 8 * 3, (20 << 12) | g.P | g.RW | g.US)
    e.flush_tlb(0, True)
    before = dict(e.stats)
    touch(e, 3, 0)                              # walks L1 20: promoted
    found = {k: e.stats[k] - before.get(k, 0) for k in e.stats if "wrmap_found" in k
             and e.stats[k] != before.get(k, 0)}
    assert l1_shadowed(e, 20) and found == {f"sh.wrmap_found_{how}": 1}
    assert e.stats["sh_wrmap_scan"] - before.get("sh_wrmap_scan", 0) == (0 if heuristic else 1)
    assert e.audit() == []


def test_out_of_sync_l1_takes_direct_writes_until_the_next_flush():
    e = booted(oos=True)
    touch(e)
    e.write(0, g.kva(5), (70 << 12) | g.P | g.RW | g.US)
    emul = e.stats["sh_emulate"]
    e.write(0, g.kva(5) + 8, (71 << 12) | g.P | g.RW | g.US)   # direct: no trap
    assert e.stats["sh_emulate"] == emul and e.stats["sh.oos_unsync"] == 1
    assert 5 in e.oos_pages and e.audit() == []
    e.invlpg(0, g.test_va(0, 0))
    assert 5 not in e.oos_pages and e.stats["sh_resync"] == 1
    assert touch(e) == g.guest_page(e, 70)[0]
    assert e.audit() == []


def test_prefetch_fills_following_entries_without_touching_guest_a_bits():
    e = booted(prefetch=True)
    for i in range(8):
        e.write(0, g.kva(5) + 8 * i, (64 << 12) | g.P | g.RW | g.US | g.A)
    e.flush_tlb(0, True)
    fills = e.stats["sh_fill"]
    for i in range(8):
        touch(e, 0, i)
    assert e.stats["sh_fill"] == fills + 1 and e.stats["sh_prefetch_entry"] > 0
    assert e.audit() == []


def test_true_guest_fault_costs_trap_bounce_and_delivery_on_both_cost_tables():
    for table, total in (("p4-xeon-2005", 1500 + 1500 + 1100), ("p4-vtx-2005", 11200)):
        e = booted(costs=table)
        before = dict(e.cycles_by)
        with pytest.raises(GuestPageFault):
            touch(e, 0, 9)
        spent = {k: v - before.get(k, 0) for k, v in e.cycles_by.items()}
        assert spent["trap"] + spent["pf_bounce"] + spent["pf_delivery"] == total


def test_options_are_validated_with_the_allowed_choices():
    assert set(DEFAULTS) == set(OPTIONS)
    with pytest.raises(ValueError, match="unknown"):
        g.make("shadow", 1, bogus=True)
    with pytest.raises(ValueError, match="allowed"):
        g.make("shadow", 1, oos="yes")
    with pytest.raises(ValueError, match=str(min_pool_pages(2))):
        g.make("shadow", 2, pool_pages=3)


def test_smp_write_access_removal_shoots_down_the_other_vcpu():
    e = booted(vcpus=2)
    e.write(1, g.kva(20), (64 << 12) | g.P | g.US)   # VCPU 1 caches a writable direct map
    e.write(0, g.kva(3) + 8 * 3, (20 << 12) | g.P | g.RW | g.US)
    e.flush_tlb(0, True)
    ipis = e.stats["ipi"]
    touch(e, 3, 0)
    assert e.stats["ipi"] > ipis
    assert not any(t.writable and t.pa >> 12 == e.p2m.p2m[20] for t in e.cpus[1].tlb_entries())
    e.write(1, g.kva(20) + 8, 6)                # now emulated
    assert e.audit() == []


def test_cr3_load_snapshots_the_pdptes_later_edits_wait_for_the_next_load():
    e = booted()
    e.write(0, g.kva(70), 0x7777)
    e.write(0, g.kva(6), (70 << 12) | g.P | g.RW | g.US)
    e.write(0, g.kva(1) + 8 * 1, (4 << 12) | g.P)        # PDPT A slot 1 -> L2 4 (unseen)
    e.write(0, g.kva(4) + 8 * 0, (6 << 12) | g.P | g.RW | g.US)
    e.flush_tlb(0, True)
    with pytest.raises(GuestPageFault):
        e.read(0, 1 << 30, 4)
    e.write_cr3(0, g.PDPT_A)
    assert e.read(0, 1 << 30, 4) == 0x7777
    assert e.audit() == []
