"""One test per shadow-paging attack class of reference/shadow.md §7 (the Xen security
advisories that hit shadow code), each asserting the invariant that advisory broke.
"""
from __future__ import annotations

import pytest

from engines.api import DomainSpec, GuestCrash, load_cost_table
from engines.hw import AddressError, GeneralProtection
from engines.shadow import ShadowEngine, shadows
from engines.shadow.p2m import HYPERVISOR_VIRT_START, XEN_FIRST_SLOT

import tiny_guest as g


def booted(vcpus=1, **options):
    e = g.make("shadow", vcpus, **options)
    g.boot(e, vcpus)
    return e


def test_xsa173_superpage_gfns_beyond_32_bits_are_kept_whole():
    """XSA-173: a shadowed superpage whose GFN does not fit the back-pointer must not alias
    another GFN. A PS PDE naming gfn 2^28 + 0 (with MAXPHYADDR 52) must not reuse the fl1
    shadow of gfn 0, nor map anything the domain does not own."""
    spec = DomainSpec(vcpus=1, memory_mib=16, maxphyaddr=52, seed=3)
    e = ShadowEngine(spec, load_cost_table())
    g.boot(e, 1)
    e.write(0, g.kva(3) + 8 * 0, (0 << 21) | g.P | g.RW | g.US | g.PS)     # gfn 0: fine
    e.write(0, g.kva(3) + 8 * 1, (1 << 40) | g.P | g.RW | g.US | g.PS)     # gfn 2^28
    e.flush_tlb(0, True)
    assert e.read(0, g.test_va(0, 1), 4) == g.guest_page(e, 1)[0]
    with pytest.raises(AddressError):
        e.read(0, g.test_va(1, 1), 4)
    keys = {sp.key for sp in e.pool.by_smfn.values() if sp.type == "fl1"}
    assert (0, "fl1", False) in keys and not any(k[0] == 1 << 28 for k in keys)
    assert e.audit() == []


@pytest.mark.parametrize("entry,fault", [
    ((5 << 12) | g.P | g.US | g.PS | (1 << 13), 0x8 | 0x1 | 0x4),    # PS PDE, bit 13 reserved
    ((5 << 12) | g.P | g.US | (1 << 40), 0x8 | 0x1 | 0x4),           # above MAXPHYADDR
])
def test_xsa176_software_walk_raises_reserved_bit_faults_as_hardware(entry, fault):
    """XSA-176: the shadow's guest walk must fault on reserved bits exactly as the CPU."""
    native, shadow = g.make("native"), g.make("shadow")
    for e in (native, shadow):
        g.boot(e)
        e.write(0, g.kva(3) + 8 * 2, entry)
        e.flush_tlb(0, True)
    assert g.access(native, 0, g.test_va(2, 0), "read", True) == \
        g.access(shadow, 0, g.test_va(2, 0), "read", True) == ("pf", g.test_va(2, 0), fault)
    for e in (native, shadow):                      # a PDPTE with "PS" (bit 7) is reserved
        e.write(0, g.kva(1) + 0x20, (3 << 12) | 0x81)
        with pytest.raises(GeneralProtection):
            e.write_cr3(0, g.PDPT_B)
    assert shadow.audit() == []


def test_xsa219_emulated_write_lands_in_the_frame_the_walk_named():
    """XSA-219: the target frame must stay held for the whole emulated write. A PTE write
    that remaps the very page it is written through still lands in the original frame, and
    afterwards the domain still owns and tracks every frame mapped."""
    e = booted()
    # map test L1 page 5 itself at test_va(0, 7): a punned, read-only view of a page table
    e.write(0, g.kva(5) + 8 * 7, (5 << 12) | g.P | g.RW | g.US | g.A | g.D)
    e.flush_tlb(0, True)
    e.write(0, g.test_va(0, 7) + 8 * 7, (64 << 12) | g.P | g.RW | g.US)   # supervisor store
    assert g.guest_page(e, 5)[7] == (64 << 12) | g.P | g.RW | g.US
    assert e.stats["sh_emulate"] >= 1
    assert e.audit() == []


def test_xsa243_writable_heuristic_never_touches_xen_mappings():
    """XSA-243: heuristics and linear maps never alias Xen-owned mappings. A guess in
    Xen's area is never followed, l2h has no linear or self-linear slot, and Xen's slots
    stay intact after a promotion whose heuristic guess falls in Xen's area."""
    e = booted()
    before = [e.memory.frame_words(m) for m in e.xen.rompt_l1 + [e.xen.directmap_l1]]
    e._probe_va(0, HYPERVISOR_VIRT_START + 0x1000, e.xen.p2m_table[0])
    e._probe_va(0, 0xFF400000, e.p2m.xen_frames.start)
    assert [e.memory.frame_words(m) for m in e.xen.rompt_l1 + [e.xen.directmap_l1]] == before
    l2h = e.vs[0].tops[3]
    linear = [e.memory.read_u64((l2h.smfn << 12) | (i << 3)) for i in range(XEN_FIRST_SLOT, 512)]
    own = {sp.smfn for sp in e.pool.by_smfn.values()} | {e.vs[0].sl3_mfn}
    assert not any((v >> 12) in own for v in linear)          # no (shadow-)linear slot
    assert e.audit() == []


def test_xsa249_250_reference_overflow_installs_nothing_and_crashes_only_the_domain(
        monkeypatch):
    """XSA-249/250: a reference that cannot be taken is never installed; the domain is
    crashed with the counts still consistent."""
    monkeypatch.setattr(shadows, "REF_MAX", 3)
    e = booted()
    for pte in range(6):
        e.write(0, g.kva(5) + 8 * pte, (64 << 12) | g.P | g.RW | g.US)
    e.flush_tlb(0, True)
    with pytest.raises(GuestCrash, match="reference count"):
        for pte in range(6):
            e.read(0, g.test_va(0, pte), 4)
    assert e.mapcount[e.p2m.p2m[64]] == 3
    assert e.audit() == []


def test_xsa280_shadow_metadata_is_per_type_and_never_aliases():
    """XSA-280: metadata of different kinds must not share storage. A frame shadowed both
    as an L1 and as an L2 (punned) has one shadow of each type, each with its own
    reference count and back-pointer, and the audit's recount agrees with both."""
    e = booted()
    e.write(0, g.kva(3) + 8 * 3, (3 << 12) | g.P | g.RW | g.US)   # L2 3 used as an L1 too
    e.flush_tlb(0, True)
    e.read(0, g.test_va(3, 0), 4)
    types = sorted(sp.type for sp in e.pool.by_gfn[3])
    assert types == ["l1", "l2"]
    l1, l2 = sorted(e.pool.by_gfn[3], key=lambda sp: sp.type)
    assert l1.smfn != l2.smfn and l1.refs == len(l1.up) and l2.users
    assert e.audit() == []


def test_xsa294_every_change_of_shadow_root_flushes_even_with_the_flush_filter():
    """XSA-294: a new shadow root must never leave the old root's translations usable —
    even on a K8 whose TLB flush filter would keep them (Xen sets HWCR.FFDIS)."""
    spec = DomainSpec(vcpus=1, memory_mib=16, flush_filter=True, seed=1)
    e = ShadowEngine(spec, load_cost_table())
    g.boot(e)
    assert not e.cpus[0].flush_filter
    e.write(0, g.kva(64), 0xAAAA)
    e.write(0, g.kva(70), 0xBBBB)
    e.write(0, g.kva(4) + 8 * 0, (6 << 12) | g.P | g.RW | g.US)   # B: PDE 0 -> L1 6
    e.write(0, g.kva(6) + 8 * 0, (70 << 12) | g.P | g.RW | g.US)
    assert e.read(0, g.test_va(0, 0), 4) == 0xAAAA               # A: -> data 64, cached
    e.write_cr3(0, g.PDPT_B)
    assert e.read(0, g.test_va(0, 0), 4) == 0xBBBB               # B: -> data 70
    assert e.audit() == []


def test_xsa410_pool_exhaustion_slows_the_guest_and_never_crashes_the_host():
    """XSA-410: with the smallest pool, a guest touching many page tables keeps running:
    top-level shadows are unpinned LRU-first, in-use ones unhooked, and every access
    still translates as the guest's tables say."""
    e = booted(pool_pages=10)
    for pd in (3, 4):
        for i in range(4, 40):
            e.write(0, g.kva(pd) + 8 * i, ((16 + i) << 12) | g.P | g.RW | g.US)
            e.write(0, g.kva(16 + i) + 8 * 1, ((64 + i % 8) << 12) | g.P | g.RW | g.US)
    for cr3 in (g.PDPT_A, g.PDPT_B, g.PDPT_A):
        e.write_cr3(0, cr3)
        for i in range(4, 40):
            assert e.read(0, (i << 21) | (1 << 12), 4) == g.guest_page(e, 64 + i % 8)[0]
            assert e.audit() == []
    assert e.stats["sh.prealloc_unhook"] > 0
    assert e.pool.in_use <= 10
