"""engines.native: bare hardware. The guest owns the MMU; a page fault goes straight to
the guest kernel as GuestPageFault with the error code the hardware produced (SDM §4.7)
and costs `pf_delivery`; privileged operations execute on the VCPU's CPU and cost their
instruction (`cr3_write`, `invlpg`, `tlb_flush`, `cr_write`); the refills after an
invalidation are charged by the clock from the walks the CPU really makes.
"""
from __future__ import annotations

import pytest

from engines.api import ABI, EngineError, GuestPageFault
from engines.hw import A_FETCH, A_USER, A_WRITE, PageFault

import native_machine as m


def test_boot_info_says_native_abi_paging_off_superpages_and_no_hypervisor():
    e = m.engine(vcpus=3, paging=False)
    info = e.boot_info()
    assert info.abi is ABI.NATIVE and e.abi is ABI.NATIVE
    assert info.vcpus == 3 and info.nr_pages == (16 << 20) >> 12
    assert info.paging_on_at_entry is False and info.superpages is True
    assert info.hypervisor_virt_start is None and info.shared_kernel_pmd is True


def test_the_kernel_is_entered_with_paging_off_on_every_vcpu():
    """A PC boot loader leaves CR0.PG=0: linear addresses are physical."""
    e = m.engine(vcpus=2, paging=False)
    assert [cpu.cr0_pg for cpu in e.cpus] == [False, False]
    e.write(1, 0x123450, 0xABCDEF)
    assert e.memory.read_u64(0x123450) == 0xABCDEF
    assert e.read(0, 0x123450) == 0xABCDEF


def test_bare_hardware_has_no_hypercalls():
    e = m.engine()
    before = e.clock(0)
    assert e.hypercall(0, 1, 2, 3) == -38           # -ENOSYS
    assert e.clock(0) == before


# ------------------------------------------------------------------------------ faults

@pytest.mark.parametrize("va, access, code", [
    (m.ABSENT | 0x8, A_USER, 0x4),                         # not present, user read
    (m.ABSENT | 0x8, A_WRITE, 0x2),                        # not present, supervisor write
    (m.ABSENT | 0x10, A_USER | A_FETCH, 0x14),             # not present user fetch, NXE=1
    (m.USER_RO | 0x18, A_USER | A_WRITE, 0x7),             # user write to a read-only page
    (m.USER_RO | 0x18, A_WRITE, 0x3),                      # supervisor write, CR0.WP=1
    (m.KERNEL | 0x20, A_USER, 0x5),                        # user read of a supervisor page
    (m.NOEXEC | 0x28, A_USER | A_FETCH, 0x15),             # user fetch from an XD page
])
def test_a_fault_reaches_the_guest_with_the_hardware_error_code_and_full_cr2(va, access, code):
    """pae.md §7 (SDM §4.7): P says protection vs not-present, W the access was a write,
    U user mode, I/D a fetch with NXE=1; CR2 is the full linear address."""
    e = m.engine()
    with pytest.raises(GuestPageFault) as exc:
        if access & A_WRITE:
            e.write(0, va, 1, access & ~A_WRITE)
        else:
            e.read(0, va, access)
    assert (exc.value.va, exc.value.error_code) == (va, code)
    assert isinstance(exc.value, EngineError) and not isinstance(exc.value, PageFault)


def test_translate_delivers_the_same_fault_as_an_access():
    e = m.engine()
    with pytest.raises(GuestPageFault) as exc:
        e.translate(0, m.USER_RO, A_USER | A_WRITE)
    assert exc.value.error_code == 0x7
    assert e.translate(0, m.USER_RW | 0x123, A_USER) == m.FRAME[m.USER_RW] | 0x123


def test_each_delivered_fault_is_charged_pf_delivery_to_the_faulting_vcpu():
    e = m.engine()
    cost = e.costs["pf_delivery"]
    c0, c1 = e.clock(0), e.clock(1)
    for _ in range(3):
        with pytest.raises(GuestPageFault):
            e.read(1, m.ABSENT, A_USER)
    assert e.stats["pf_delivery"] == 3 and e.cycles_by["pf_delivery"] == 3 * cost
    # the walk read the PDE only (PDE 2 is not present): 1 entry per fault
    assert e.clock(1) - c1 == 3 * (cost + e.costs["walk_ref"])
    assert e.clock(0) == c0
    assert e.counters()["hw.faults_not_present"] == 3


def test_a_successful_access_is_not_charged_a_delivery():
    e = m.engine()
    e.write(0, m.USER_RW, 5, A_USER)
    assert e.read(0, m.USER_RW, A_USER) == 5 and e.memory.read_u64(m.FRAME[m.USER_RW]) == 5
    assert e.stats["pf_delivery"] == 0


# --------------------------------------------------------------- privileged operations

def test_write_cr3_is_charged_and_loads_cr3_and_the_pdpte_registers():
    e = m.engine()
    e.memory.write_u64(0x7000 + 0, m.PD | m.P)
    e.memory.write_u64(0x7000 + 24, m.PD | m.P)
    n, loads = e.stats["cr3_write"], e.cpus[0].cr3_loads
    c = e.clock(0)
    e.write_cr3(0, 0x7000)
    assert e.stats["cr3_write"] == n + 1 and e.clock(0) - c == e.costs["cr3_write"]
    cpu = e.cpus[0]
    assert cpu.cr3 == 0x7000 and cpu.cr3_loads == loads + 1
    assert cpu.pdptes == (m.PD | m.P, 0, 0, m.PD | m.P)
    assert e.read(0, 0xC0000000 | m.USER_RW, A_USER) == 0   # PDPTE 3 now maps the same PD
    assert e.cpus[1].cr3 == m.PDPT


def test_write_cr3_drops_non_global_translations_and_keeps_global_ones():
    """SDM §4.10.4.1: MOV to CR3 invalidates non-global TLB entries (CR4.PGE=1)."""
    e = m.engine()
    e.read(0, m.USER_RW, A_USER)
    e.read(0, m.GLOBAL)
    e.write_cr3(0, m.PDPT)
    assert {x.va for x in e.cpus[0].tlb_entries()} == {m.GLOBAL}


def test_invlpg_is_charged_and_drops_the_named_page_even_if_global():
    e = m.engine()
    e.read(0, m.USER_RW, A_USER)
    e.read(0, m.GLOBAL)
    e.read(0, m.USER_RO, A_USER)
    e.memory.write_u64(m.pte_addr(m.USER_RW), 0x20000 | m.P | m.RW | m.US | m.A | m.D)
    assert e.translate(0, m.USER_RW, A_USER) == m.FRAME[m.USER_RW]     # stale until invlpg
    c, n = e.clock(0), e.stats["invlpg"]
    e.invlpg(0, m.USER_RW | 0xFFF)
    e.invlpg(0, m.GLOBAL)
    assert e.stats["invlpg"] == n + 2 and e.cpus[0].counters().invlpg == 2
    assert e.clock(0) - c == 2 * e.costs["invlpg"]
    assert {x.va for x in e.cpus[0].tlb_entries()} == {m.USER_RO}
    assert e.translate(0, m.USER_RW, A_USER) == 0x20000


def test_flush_tlb_is_charged_and_keeps_globals_unless_asked():
    e = m.engine()
    for va in (m.USER_RW, m.GLOBAL):
        e.read(0, va)
    c = e.clock(0)
    e.flush_tlb(0)
    assert e.clock(0) - c == e.costs["tlb_flush"] and e.stats["tlb_flush"] == 1
    assert {x.va for x in e.cpus[0].tlb_entries()} == {m.GLOBAL}
    e.flush_tlb(0, include_global=True)
    assert e.cpus[0].tlb_entries() == []
    hw = e.cpus[0].counters()
    assert hw.flush_full == 1 and hw.flush_global >= 1


def test_set_control_charges_one_cr_write_per_register_bit_written():
    e = m.engine(paging=False)
    c = e.clock(1)
    e.set_control(1, wp=True, nxe=True)
    e.set_control(1, pge=True)
    assert e.clock(1) - c == 3 * e.costs["cr_write"] and e.stats["cr_write"] == 3
    cpu = e.cpus[1]
    assert (cpu.cr0_wp, cpu.efer_nxe, cpu.cr4_pge, cpu.cr0_pg) == (True, True, True, False)
    e.write_cr3(1, m.PDPT)
    e.set_control(1, pg=True)
    assert cpu.cr0_pg and e.read(1, m.USER_RW, A_USER) == 0


def test_clear_and_copy_page_work_through_the_mmu_and_are_charged():
    e = m.engine()
    e.memory.write_u64(m.FRAME[m.KERNEL] + 16, 0x77)
    e.copy_page(0, m.USER_RW, m.KERNEL)
    assert e.memory.read_u64(m.FRAME[m.USER_RW] + 16) == 0x77
    e.clear_page(0, m.KERNEL | 0x40)
    assert e.memory.read_u64(m.FRAME[m.KERNEL] + 16) == 0
    assert (e.stats["page_copy"], e.stats["page_clear"]) == (1, 1)
    with pytest.raises(GuestPageFault) as exc:
        e.clear_page(0, m.USER_RO)                       # a supervisor write, WP=1
    assert exc.value.error_code == 0x3


def test_an_ipi_is_charged_to_both_ends():
    e = m.engine(vcpus=3)
    c = [e.clock(v) for v in range(3)]
    e.ipi(0, 2)
    cost = e.costs["ipi"]
    assert [e.clock(v) - c[v] for v in range(3)] == [cost, 0, cost]
    assert e.stats["ipi"] == 1 and e.cycles_by["ipi"] == 2 * cost


def test_a_4_byte_store_changes_only_its_half_and_faults_like_any_write():
    """Linux PAE stores a PTE as two 32-bit halves (Engine.write_u32)."""
    e = m.engine()
    e.write_u32(0, m.USER_RW + 4, 0xAABBCCDD)
    e.write_u32(0, m.USER_RW + 8, 0x11223344)
    assert e.read(0, m.USER_RW) == 0xAABBCCDD << 32
    assert e.read(0, m.USER_RW + 8) == 0x11223344
    with pytest.raises(GuestPageFault) as exc:
        e.write_u32(0, m.USER_RO + 4, 1, A_USER)
    assert exc.value.error_code == 0x7
