"""The paravirt-ops native backend against the hardware: the page tables the guest kernel
builds through `NativeMMU` (set_pte/set_pmd/set_pdpte, write_cr3, flushes) are the tables
the simulated CPU walks, and they say what the kernel's bookkeeping says.

Three views are compared: the guest's own records (`MM.pages`, `MM.pt`, the kernel PMD),
an independent software walk of machine memory (guest_harness.soft_walk, SDM §4.4.2), and
the hardware model (`engines.hw.CPU`), both the engine's own VCPUs and a fresh CPU that
has only loaded the mm's CR3.
"""
from __future__ import annotations

import pytest

from engines.hw import A_USER, A_WRITE, PageFault
from guestkit.layout import kva

import guest_harness as h


@pytest.fixture(scope="module")
def booted():
    """A `tiny` boot on two VCPUs, run to quiescence (init, a daemon and the gettys live)."""
    return h.boot("tiny", vcpus=2)


def _present_user_ptes(engine, mm):
    """vpn -> pfn of every present PTE under the mm's three user PDPT slots, read from
    machine memory (the tables, not the bookkeeping)."""
    mem, out = engine.memory, {}
    for slot in range(3):
        pdpte = mem.read_u64(mm.pgd_pa + 8 * slot)
        for i in range(512):
            pde = mem.read_u64((pdpte & h.ADDR) + 8 * i)
            if not pde & h.P:
                continue
            for j in range(512):
                pte = mem.read_u64((pde & h.ADDR) + 8 * j)
                if pte & h.P:
                    out[(slot << 18) | (i << 9) | j] = (pte & h.ADDR) >> 12
    return out


def test_a_tiny_boot_leaves_live_address_spaces_to_check(booted):
    engine, guest = booted
    mms = h.live_mms(guest)
    assert len(mms) >= 3
    assert all(mm.pages for mm, _ in mms.values())


def test_every_page_in_an_mm_translates_to_its_frame_on_a_fresh_cpu(booted):
    """A CPU that has only loaded the mm's CR3 (empty TLB) reaches, for a user read of
    every vpn the kernel believes mapped, exactly the pfn the kernel recorded."""
    engine, guest = booted
    for mm, task in h.live_mms(guest).values():
        cpu = h.fresh_cpu(engine, mm.pgd_pa)
        for vpn, pfn in mm.pages.items():
            va = (vpn << 12) | 0x8
            assert cpu.translate(va, A_USER) == (pfn << 12) | 0x8, (task.place, hex(va))
            assert h.soft_walk(engine.memory, mm.pgd_pa, va).paddr == (pfn << 12) | 0x8


def test_the_engines_own_vcpus_translate_the_mm_they_have_loaded(booted):
    """engine.cpus[v] with the CR3 the kernel last loaded there agrees with MM.pages (its
    TLB may hold entries; a stale one would show up as a different frame)."""
    engine, guest = booted
    k = guest.kernel
    checked = 0
    for v, cpu in enumerate(engine.cpus):
        mm = k.active_mm[v]
        if mm is None or mm.dead:
            assert cpu.cr3 == (k.swapper_pa if mm is None else mm.pgd_pa)
            continue
        assert cpu.cr3 == mm.pgd_pa
        for vpn, pfn in mm.pages.items():
            assert cpu.translate(vpn << 12, A_USER) == pfn << 12
            checked += 1
    assert checked > 0


def test_the_tables_map_no_user_page_the_kernel_does_not_know(booted):
    """Converse of the above: every present user PTE in the tables is in MM.pages with
    the same pfn, and every L1 the tables point to is in MM.pt (no leaked mapping)."""
    engine, guest = booted
    for mm, task in h.live_mms(guest).values():
        assert _present_user_ptes(engine, mm) == mm.pages, task.place
        for key, l1_pfn in mm.pt.items():
            pde = engine.memory.read_u64((mm.pmds[key >> 9] << 12) + 8 * (key & 511))
            assert pde & (h.P | h.US | h.RW) == h.P | h.US | h.RW
            assert (pde & h.ADDR) >> 12 == l1_pfn


def test_user_ptes_carry_us_and_xd_exactly_where_the_vma_says(booted):
    """SDM §4.6: user pages need U/S=1 in the PDE and the PTE; with EFER.NXE the kernel
    sets XD on every page of a non-executable VMA (2.6 PAE NX) and never on text."""
    engine, guest = booted
    for mm, task in h.live_mms(guest).values():
        for vpn in mm.pages:
            walk = h.soft_walk(engine.memory, mm.pgd_pa, vpn << 12)
            vma = mm.find_vma(vpn << 12)
            assert walk.user, (task.place, hex(vpn << 12))
            assert bool(walk.leaf & h.XD) == (not vma.exec_), (task.place, hex(vpn << 12))


def _cow_violations(engine, guest) -> list[str]:
    """The COW rule (mm/memory.c copy_one_pte, do_wp_page): a private page is writable
    through a PTE only while that PTE is its sole mapping; the zero page and page-cache
    pages of private mappings are never writable. Also: mapcount counts the mappings."""
    k, mmm = guest.kernel, guest.kernel.mmm
    users, bad = {}, []
    for mm, _ in h.live_mms(guest).values():
        for vpn, pfn in mm.pages.items():
            users.setdefault(pfn, []).append((mm, vpn))
    for pfn, maps in users.items():
        if mmm.mapcount.get(pfn) != len(maps):
            bad.append(f"pfn {pfn:#x}: mapcount {mmm.mapcount.get(pfn)}, mapped {len(maps)}x")
        if len(maps) == 1 and pfn != mmm.zero_pfn and pfn not in k.cache_pfns:
            continue
        for mm, vpn in maps:
            if mm.find_vma(vpn << 12).shared:
                continue
            pte = engine.memory.read_u64((mm.pt[vpn >> 9] << 12) + 8 * (vpn & 511))
            if pte & h.RW:
                bad.append(f"mm {mm.id} va {vpn << 12:#010x}: pfn {pfn:#x} mapped "
                           f"{len(maps)}x is writable")
    return bad


def test_a_page_mapped_twice_is_writable_in_neither_mapping(booted):
    engine, guest = booted
    assert _cow_violations(engine, guest) == []
    shared = [pfn for pfn, n in guest.kernel.mmm.mapcount.items() if n > 1]
    assert shared                 # the boot leaves COW-shared pages (init and its children)


def _check_cow(engine, guest, v):
    bad = _cow_violations(engine, guest)
    assert not bad, "; ".join(bad[:3])


def test_the_cow_rule_holds_after_every_step_of_a_boot():
    engine, guest = h.boot("tiny", vcpus=2, after_step=_check_cow)
    assert guest.kernel.stats["cow_copy"] > 0 and guest.kernel.stats["cow_reuse"] > 0


def test_the_cow_check_catches_a_fork_that_leaves_the_parent_writable():
    """The step check above can fail: without ptep_set_wrprotect in copy_page_range the
    parent keeps writing into the frame its child maps."""
    with pytest.raises(AssertionError, match="mapped 2x is writable"):
        h.boot("tiny", vcpus=2, sabotage={"skip_cow_wrprotect"}, after_step=_check_cow)


def test_the_direct_map_sends_kva_of_every_pfn_to_that_pfn(booted):
    """paging_init: lowmem is mapped at PAGE_OFFSET, kva(pfn) -> pfn << 12 (supervisor)."""
    engine, guest = booted
    k = guest.kernel
    cpu = h.fresh_cpu(engine, k.swapper_pa)
    pfns = list(range(0, k.lowmem_pages, 61)) + [k.lowmem_pages - 1]
    for pfn in pfns:
        assert cpu.translate(kva(pfn) + 0x10) == (pfn << 12) + 0x10
        assert cpu.translate(kva(pfn), A_WRITE) == pfn << 12


def test_user_mode_cannot_touch_the_direct_map(booted):
    """SDM §4.6 / §4.7: a user access to a present supervisor page faults with P=1, U=1
    (error code 0x5 for a read, 0x7 for a write)."""
    engine, guest = booted
    cpu = h.fresh_cpu(engine, guest.kernel.swapper_pa)
    for access, code in ((A_USER, 0x5), (A_USER | A_WRITE, 0x7)):
        with pytest.raises(PageFault) as exc:
            cpu.translate(kva(0x123), access)
        assert exc.value.error_code == code


def test_native_maps_lowmem_with_2mib_global_supervisor_pages(booted):
    """linux-guest.md §1.2: with PSE the direct map is PS=1 PDEs, global with PGE, in the
    kernel PMD (PDPT slot 3); no PTE pages are spent on it."""
    engine, guest = booted
    k = guest.kernel
    for chunk in range(k.lowmem_pages >> 9):
        pde = engine.memory.read_u64((k.kernel_pmd << 12) + 8 * chunk)
        assert pde & (h.P | h.RW | h.PS | h.G | h.US) == h.P | h.RW | h.PS | h.G, hex(pde)
        assert pde & h.ADDR == chunk << 21


def test_a_global_direct_map_translation_survives_a_cr3_switch(booted):
    """SDM §4.10.4.1: MOV to CR3 keeps global translations when CR4.PGE=1, so the kernel's
    2 MiB direct-map entries stay in the TLB across context switches."""
    engine, guest = booted
    k = guest.kernel
    mm = next(iter(h.live_mms(guest).values()))[0]
    cpu = h.fresh_cpu(engine, k.swapper_pa)
    cpu.cr4_pge = True
    cpu.translate(kva(0x200))
    cpu.load_cr3(mm.pgd_pa)
    kept = [e for e in cpu.tlb_entries() if e.va == kva(0x200) & ~0x1FFFFF]
    assert len(kept) == 1 and kept[0].size == 2 << 20 and kept[0].global_
    misses = cpu.tlb_misses_2m
    cpu.translate(kva(0x200))
    assert cpu.tlb_misses_2m == misses


def test_every_pgd_shares_the_kernel_pmd_and_its_pdptes_carry_only_p(booted):
    """linux-guest.md §1.1: PDPT slot 3 of every pgd points at swapper's kernel PMD on
    native PAE; pae.md §2: PDPTE bits 2:1 and 8:5 are reserved, so only P is set."""
    engine, guest = booted
    k = guest.kernel
    pgds = [k.swapper_pa] + [mm.pgd_pa for mm, _ in h.live_mms(guest).values()]
    for pgd in pgds:
        pdptes = [engine.memory.read_u64(pgd + 8 * i) for i in range(4)]
        assert all(e & 0xFFF == h.P for e in pdptes), [hex(e) for e in pdptes]
        assert (pdptes[3] & h.ADDR) >> 12 == k.kernel_pmd
    assert len({pgd >> 12 for pgd in pgds[1:]}) < len(pgds) - 1   # 32-byte slab pgds


def test_module_pages_are_4k_global_pages_reached_without_vmalloc_faults(booted):
    """vmalloc maps 4 KiB global pages into init_mm's (shared) kernel PMD; on native PAE
    every pgd sees them at once: linux-guest.md §1.2 expects ~0 vmalloc faults."""
    engine, guest = booted
    k = guest.kernel
    assert k.module_pages and k.stats["vmalloc_faults"] == 0
    for mm, _ in h.live_mms(guest).values():
        for va in k.module_pages:
            walk = h.soft_walk(engine.memory, mm.pgd_pa, va)
            assert walk.pte is not None and walk.leaf & h.G and not walk.user
            assert walk.paddr is not None and walk.paddr < k.lowmem_pages << 12


# --------------------------------------------------------------- TLB coherence, every step

def _tlb_incoherence(engine, guest) -> list[str]:
    """Cached translations that give more than the tables give now (a different frame,
    write where the tables forbid it, user where they forbid it), on every VCPU; and PDPTE
    registers that differ from the PDPT in memory they were loaded from."""
    bad = []
    for v, cpu in enumerate(engine.cpus):
        pdpt = tuple(engine.memory.read_u64((cpu.cr3 & 0xFFFFFFE0) + 8 * i) for i in range(4))
        if cpu.cr0_pg and pdpt != cpu.pdptes:
            bad.append(f"vcpu {v}: PDPTE registers {cpu.pdptes} but memory holds {pdpt}")
        for e in cpu.tlb_entries():
            walk = h.soft_walk(engine.memory, cpu.cr3, e.va)
            where = f"vcpu {v} cr3 {cpu.cr3:#x} va {e.va:#010x}"
            if walk.paddr is None:
                bad.append(f"{where}: cached, but not present in the tables")
            elif walk.paddr & ~(e.size - 1) != e.pa:
                bad.append(f"{where}: cached frame {e.pa:#x}, tables say {walk.paddr:#x}")
            elif e.writable and not walk.writable:
                bad.append(f"{where}: cached writable, tables say read-only")
            elif e.user and not walk.user:
                bad.append(f"{where}: cached user, tables say supervisor")
    return bad


def _check_coherent(engine, guest, v):
    bad = _tlb_incoherence(engine, guest)
    assert not bad, "; ".join(bad[:3])


def test_no_vcpu_ever_caches_more_rights_than_the_tables_give():
    """SDM §4.10.4: after changing a PTE the kernel must invalidate; stale entries with
    fewer rights are harmless (the spurious fault re-walks), stale entries with more
    rights or another frame are the bug. Checked after every scheduler step of a tiny
    boot on two VCPUs (shootdowns by IPI included)."""
    engine, guest = h.boot("tiny", vcpus=2, after_step=_check_coherent)
    assert guest.quiescent() and guest.kernel.stats["forks"] > 10


def test_the_coherence_check_catches_a_fork_without_its_tlb_flush():
    """The step check above can fail: without flush_tlb_mm after copy_page_range the
    parent keeps a writable translation of a page its PTE now write-protects."""
    with pytest.raises(AssertionError, match="cached writable, tables say read-only"):
        h.boot("tiny", vcpus=2, sabotage={"skip_fork_flush"}, after_step=_check_coherent)
