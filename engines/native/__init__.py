"""Bare hardware: the guest owns the MMU. The reference run for correctness and cost.

Page faults go straight to the guest kernel (charged `pf_delivery`); privileged operations
execute directly on the VCPU's CPU and cost their instruction (`cr3_write`, `invlpg`,
`tlb_flush`, `cr_write`); TLB refills are charged by the clock from the CPU's walks. Guest
physical frames are machine frames (machine memory = guest memory). The kernel is entered
with paging off, as a PC BIOS/boot loader leaves it. There is no hypervisor: no Xen hole,
superpages allowed, every hypercall is -ENOSYS.
"""
from __future__ import annotations

from engines.api import ABI, BootInfo, CostTable, DomainSpec, Engine, GuestPageFault
from engines.hw import PAGE_SHIFT, PageFault

MIB = 1 << 20
OPTIONS: dict[str, tuple] = {}   # bare hardware has no engine options
DEFAULTS: dict[str, object] = {}


class NativeEngine(Engine):
    name = "native"
    abi = ABI.NATIVE
    COST_EVENTS = Engine.COST_EVENTS + ("cr3_write", "invlpg", "tlb_flush", "cr_write",
                                        "pf_delivery")

    def __init__(self, spec: DomainSpec, costs: CostTable):
        super().__init__(spec, costs, spec.memory_mib * MIB)
        for cpu in self.cpus:
            cpu.cr0_pg = False

    def boot_info(self) -> BootInfo:
        return BootInfo(abi=ABI.NATIVE, vcpus=self.spec.vcpus,
                        nr_pages=self.memory.size >> PAGE_SHIFT, paging_on_at_entry=False,
                        hypervisor_virt_start=None, superpages=True)

    # -- memory access: a fault goes straight to the guest's handler -----------------------
    def _deliver(self, vcpu: int, pf: PageFault) -> GuestPageFault:
        self.charge(vcpu, "pf_delivery")
        return GuestPageFault(pf.vaddr, pf.error_code)

    def read(self, vcpu: int, va: int, access: int = 0) -> int:
        try:
            return self.cpus[vcpu].read_u64(va, access)
        except PageFault as pf:
            raise self._deliver(vcpu, pf) from None

    def write(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        try:
            self.cpus[vcpu].write_u64(va, value, access)
        except PageFault as pf:
            raise self._deliver(vcpu, pf) from None

    def write_u32(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        try:
            self.cpus[vcpu].write_u32(va, value, access)
        except PageFault as pf:
            raise self._deliver(vcpu, pf) from None

    def translate(self, vcpu: int, va: int, access: int = 0) -> int:
        try:
            return self.cpus[vcpu].translate(va, access)
        except PageFault as pf:
            raise self._deliver(vcpu, pf) from None

    # -- privileged operations execute directly ---------------------------------------------
    def write_cr3(self, vcpu: int, cr3: int) -> None:
        self.charge(vcpu, "cr3_write")
        self.cpus[vcpu].load_cr3(cr3)

    def invlpg(self, vcpu: int, va: int) -> None:
        self.charge(vcpu, "invlpg")
        self.cpus[vcpu].invlpg(va)

    def flush_tlb(self, vcpu: int, include_global: bool = False) -> None:
        self.charge(vcpu, "tlb_flush")
        self.cpus[vcpu].flush_tlb(include_global)

    def set_control(self, vcpu: int, *, pg: bool | None = None, wp: bool | None = None,
                    pge: bool | None = None, nxe: bool | None = None) -> None:
        cpu = self.cpus[vcpu]
        for value, attr in ((nxe, "efer_nxe"), (wp, "cr0_wp"), (pge, "cr4_pge"), (pg, "cr0_pg")):
            if value is not None:
                self.charge(vcpu, "cr_write")
                setattr(cpu, attr, value)
