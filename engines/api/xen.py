"""The Xen PV ABI a paravirtualised PAE guest is written against (Xen 3.0.3,
`xen/include/public/xen.h`, `vcpu.h`, `arch-x86_32.h`; reference/xen-pv.md §2): hypercall
numbers, the MMU_* and MMUEXT_* commands, UVMF flags, VMASST types, negative errno values,
the request records and the StartInfo record the domain builder hands the guest.

The guest imports only `engines.api`, so these constants live here, not in the engine.
Arguments that Xen reads from guest memory (request arrays, `success_count`, VCPU bitmaps,
the VCPU context) are passed as the Python records below; an argument of the wrong kind
stands for an unreadable guest pointer and gets `-EFAULT`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence


class Hypercall(IntEnum):
    """Hypercall numbers (`__HYPERVISOR_*`, public/xen.h). x86_32 enters with int 0x82."""
    mmu_update = 1
    set_gdt = 2
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    mmuext_op = 26


class Errno(IntEnum):
    """Xen returns these negated (`-EINVAL`); `Errno.EINVAL.neg` is that value."""
    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EINVAL = 22
    ENOSYS = 38

    @property
    def neg(self) -> int:
        return -int(self)


# --- mmu_update (xen-pv.md §2.1) -----------------------------------------------------------
MMU_NORMAL_PT_UPDATE = 0      # checked *ptr = val, ptr a machine address of an entry
MMU_MACHPHYS_UPDATE = 1       # M2P[ptr >> 12] = val
MMU_UPDATE_PREEMPTED = 1 << 31   # set in `count` of a continuation (x86_32: MSB of 32 bits)

DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2


class MMUExt(IntEnum):
    """mmuext_op commands (xen-pv.md §2.2)."""
    PIN_L1_TABLE = 0
    PIN_L2_TABLE = 1
    PIN_L3_TABLE = 2
    PIN_L4_TABLE = 3
    UNPIN_TABLE = 4
    NEW_BASEPTR = 5
    TLB_FLUSH_LOCAL = 6
    INVLPG_LOCAL = 7
    TLB_FLUSH_MULTI = 8
    INVLPG_MULTI = 9
    TLB_FLUSH_ALL = 10
    INVLPG_ALL = 11
    FLUSH_CACHE = 12
    SET_LDT = 13


# --- update_va_mapping flags (xen-pv.md §2.3) ----------------------------------------------
UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_LOCAL = 0
UVMF_ALL = 4
# UVMF_MULTI: in Xen any other scope value is a pointer to a VCPU bitmap; here pass
# `flags` as the pair (VcpuMask, flush type). An int with other scope bits is an unreadable
# pointer (-EFAULT).


class VMAssist(IntEnum):
    """vm_assist types (`VMASST_TYPE_*`)."""
    four_gb_segments = 0
    four_gb_segments_notify = 1
    writable_pagetables = 2
    pae_extended_cr3 = 3


VMASST_CMD_enable = 0
VMASST_CMD_disable = 1


class VcpuOp(IntEnum):
    """vcpu_op commands (public/vcpu.h)."""
    initialise = 0
    up = 1
    down = 2
    is_up = 3


# --- the virtual layout Xen imposes (xen-pv.md §1.5) ---------------------------------------
HYPERVISOR_VIRT_START = 0xF5800000
MACH2PHYS_VIRT_START = 0xF5800000          # read-only M2P, 4-byte entries, guest-readable
MACH2PHYS_VIRT_END = 0xF6800000            # guest segment limit ends here
M2P_ENTRY_BYTES = 4
P2M_ENTRY_BYTES = 4                        # XenLinux x86_32 phys_to_machine_mapping[]
INVALID_P2M_ENTRY = 0xFFFFFFFF

SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1


def xen_pfn_to_cr3(mfn: int) -> int:
    """CR3 value for a pgdir at `mfn` (extended-cr3 encoding: MFN bits 31:20 go to 11:0)."""
    return ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF


def xen_cr3_to_pfn(cr3: int) -> int:
    return ((cr3 >> 12) | ((cr3 & 0xFFF) << 20)) & 0xFFFFFFFF


# --- request records ---------------------------------------------------------------------
@dataclass(frozen=True)
class MmuUpdate:
    """`struct mmu_update`: command in ptr bits 2:0, machine address of the entry above."""
    ptr: int
    val: int


@dataclass(frozen=True)
class VcpuMask:
    """A VCPU bitmap in guest memory (`vcpumask` of *_MULTI ops, UVMF_MULTI)."""
    bits: int


@dataclass(frozen=True)
class MmuextOp:
    """`struct mmuext_op`: arg1 is an mfn or linear_addr, arg2 a VcpuMask or nr_ents."""
    cmd: int
    arg1: int = 0
    arg2: object = 0


@dataclass
class SuccessCount:
    """The `success_count`/`pdone` word Xen writes back."""
    value: int = 0


@dataclass
class MulticallEntry:
    """`struct multicall_entry`: Xen stores each call's return value in `result`."""
    op: int
    args: tuple = ()
    result: int = 0


@dataclass(frozen=True)
class VcpuGuestContext:
    """The part of `vcpu_guest_context` the model uses: the VCPU's pgdir (ctrlreg[3],
    extended-cr3 encoded) and its kernel entry point."""
    ctrlreg3: int
    kernel_entry: int = 0


@dataclass(frozen=True)
class StartInfo:
    """`start_info_t` as the domain builder fills it (xen-pv.md §2.5). VAs are in the
    bootstrap mapping at 0xC0000000; `shared_info` is a machine address."""
    magic: str
    nr_pages: int
    shared_info: int
    flags: int
    pt_base: int                 # VA of the bootstrap L3 (pgdir)
    nr_pt_frames: int            # bootstrap page-table frames (L3 + 4 L2 + L1s)
    mfn_list: int                # VA of the P2M array (4-byte entries)
    first_p2m_pfn: int = 0
    first_free_pfn: int = 0      # first pfn after the bootstrap region (stack included)
    boot_region_end: int = 0     # VA end of the bootstrap mapping
    store_mfn: int = 0
    console_mfn: int = 0
    features: Sequence[str] = field(default_factory=tuple)


__all__ = [
    "Hypercall", "Errno", "MMU_NORMAL_PT_UPDATE", "MMU_MACHPHYS_UPDATE",
    "MMU_UPDATE_PREEMPTED", "DOMID_SELF", "DOMID_IO", "DOMID_XEN", "MMUExt", "UVMF_NONE",
    "UVMF_TLB_FLUSH", "UVMF_INVLPG", "UVMF_FLUSHTYPE_MASK", "UVMF_LOCAL", "UVMF_ALL",
    "VMAssist", "VMASST_CMD_enable", "VMASST_CMD_disable", "VcpuOp", "HYPERVISOR_VIRT_START",
    "MACH2PHYS_VIRT_START", "MACH2PHYS_VIRT_END", "M2P_ENTRY_BYTES", "P2M_ENTRY_BYTES",
    "INVALID_P2M_ENTRY", "SIF_PRIVILEGED", "SIF_INITDOMAIN", "xen_pfn_to_cr3",
    "xen_cr3_to_pfn", "MmuUpdate", "VcpuMask", "MmuextOp", "SuccessCount", "MulticallEntry",
    "VcpuGuestContext", "StartInfo",
]
