"""A minimal PV guest for engine tests: allocates pseudo-physical frames from the bootstrap
region (mapped RW at 0xC0000000 by the domain builder), builds page tables of machine frames,
makes them read-only and pins them, and switches base pointers, all through the ABI.

Small domains (16 MiB) on a 256 MiB machine keep the tests fast; the machine frames are
still scattered by the builder.
"""
from __future__ import annotations

from engines.api import DomainSpec, load_cost_table
from engines.api.xen import (DOMID_SELF, MACH2PHYS_VIRT_START, MMU_NORMAL_PT_UPDATE,
                             UVMF_INVLPG, VMASST_CMD_enable, Hypercall, MmuextOp, MMUExt,
                             MmuUpdate, SuccessCount, VMAssist, VcpuGuestContext, VcpuOp,
                             xen_pfn_to_cr3)
from engines.paravirt import PVEngine

P, RW, US, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
PAGE_OFFSET = 0xC0000000
KERNEL_PDE = P | RW | A | D
USER_PDE = P | RW | US | A | D
COSTS = load_cost_table()


def make_engine(strategy="per-pagetable", vcpus=2, memory_mib=16, machine_mib=256, **opts):
    spec = DomainSpec(vcpus=vcpus, memory_mib=memory_mib, machine_memory_mib=machine_mib,
                      options={"strategy": strategy, **opts})
    return PVEngine(spec, COSTS)


class MiniGuest:
    def __init__(self, strategy="per-pagetable", vcpus=2, ptwr=True, extended_cr3=True,
                 machine_mib=256, debug_audit=None, **opts):
        if debug_audit is None:       # audit after every hypercall, except the broken design
            debug_audit = not (strategy == "shared" and vcpus > 1)
        self.e = make_engine(strategy, vcpus, machine_mib=machine_mib, ptwr=ptwr,
                             debug_audit=debug_audit, **opts)
        self.boot = self.e.boot_info()
        self.si = self.boot.start_info
        self.next_pfn = self.si.first_free_pfn
        self.region_pfns = (self.si.boot_region_end - PAGE_OFFSET) >> 12
        if ptwr:
            assert self.hc(0, Hypercall.vm_assist, VMASST_CMD_enable,
                           VMAssist.writable_pagetables) == 0
        if extended_cr3:
            assert self.hc(0, Hypercall.vm_assist, VMASST_CMD_enable,
                           VMAssist.pae_extended_cr3) == 0
        self.boot_l3 = self.read(0, self.si.pt_base) and self.mfn_of_va(self.si.pt_base)
        self.kernel_l2 = self.read(0, self.si.pt_base + 24) >> 12 & 0xFFFFFFF

    # -- plumbing --------------------------------------------------------------------------
    def hc(self, v, nr, *args):
        return self.e.hypercall(v, nr, *args)

    def read(self, v, va, access=0):
        return self.e.read(v, va, access)

    def write(self, v, va, value, access=0):
        self.e.write(v, va, value, access)

    def p2m(self, pfn: int) -> int:
        va = self.si.mfn_list + 4 * pfn
        word = self.read(0, va & ~7)
        return (word >> 32) if va & 4 else word & 0xFFFFFFFF

    def m2p(self, mfn: int) -> int:
        va = MACH2PHYS_VIRT_START + 4 * mfn
        word = self.read(0, va & ~7)
        return (word >> 32) if va & 4 else word & 0xFFFFFFFF

    def mfn_of_va(self, va: int) -> int:
        return self.p2m((va - PAGE_OFFSET) >> 12)

    @staticmethod
    def kva(pfn: int) -> int:
        return PAGE_OFFSET + (pfn << 12)

    def alloc(self) -> int:
        pfn = self.next_pfn
        assert pfn < self.region_pfns, "test guest ran out of bootstrap-mapped frames"
        self.next_pfn += 1
        return pfn

    # -- page-table building -----------------------------------------------------------------
    def set_prot(self, v, pfn, flags, uvmf=UVMF_INVLPG):
        return self.hc(v, Hypercall.update_va_mapping, self.kva(pfn),
                       (self.p2m(pfn) << 12) | flags, uvmf)

    def make_ro(self, v, pfn):
        assert self.set_prot(v, pfn, P | A) == 0, self.e.validator.last_error

    def make_rw(self, v, pfn):
        return self.set_prot(v, pfn, P | RW | A | D)

    def ext(self, v, cmd, arg1=0, arg2=0):
        return self.hc(v, Hypercall.mmuext_op, [MmuextOp(cmd, arg1, arg2)], 1, None,
                       DOMID_SELF)

    def mmu(self, v, *pairs, done=None):
        reqs = [MmuUpdate(ptr | MMU_NORMAL_PT_UPDATE, val) for ptr, val in pairs]
        return self.hc(v, Hypercall.mmu_update, reqs, len(reqs), done, DOMID_SELF)

    def new_pgd(self, v=0, l3=None, pin=True):
        """pgd_alloc + pin: an L3, 3 user L2s and (per-pagetable) a private kernel L2 that
        copies the boot kernel L2's guest slots; returns (l3 pfn, [l2 pfns])."""
        l3 = self.alloc() if l3 is None else l3
        l2s = [self.alloc() for _ in range(3)]
        if self.boot.shared_kernel_pmd:
            kl2_mfn = self.kernel_l2
        else:
            k = self.alloc()
            for i, e in self.e.memory.nonzero_words(self.kernel_l2):
                if i < 428:
                    self.write(v, self.kva(k) + 8 * i, e)
            l2s.append(k)
            kl2_mfn = self.p2m(k)
        mfns = [self.p2m(p) for p in l2s[:3]] + [kl2_mfn]
        for i, m in enumerate(mfns):
            self.write(v, self.kva(l3) + 8 * i, (m << 12) | P)
        for pfn in l2s + [l3]:
            self.make_ro(v, pfn)
        if pin:
            assert self.ext(v, MMUExt.PIN_L3_TABLE, self.p2m(l3)) == 0, \
                self.e.validator.last_error
        return l3, l2s

    def new_l1(self, v, l2_pfn, slot, user=True):
        """A fresh L1 hooked at `slot` of the (pinned) L2 `l2_pfn`."""
        l1 = self.alloc()
        self.make_ro(v, l1)
        flags = USER_PDE if user else KERNEL_PDE
        l2_ma = (self.p2m(l2_pfn) << 12) + 8 * slot
        assert self.mmu(v, (l2_ma, (self.p2m(l1) << 12) | flags)) == 0, \
            self.e.validator.last_error
        return l1

    def switch(self, v, l3_pfn):
        return self.ext(v, MMUExt.NEW_BASEPTR, self.p2m(l3_pfn))

    def start_vcpu(self, ap, l3_mfn=None):
        ctxt = VcpuGuestContext(ctrlreg3=xen_pfn_to_cr3(l3_mfn or self.boot_l3))
        assert self.hc(0, Hypercall.vcpu_op, VcpuOp.initialise, ap, ctxt) == 0
        assert self.hc(0, Hypercall.vcpu_op, VcpuOp.up, ap) == 0

    def done(self):
        return SuccessCount()
