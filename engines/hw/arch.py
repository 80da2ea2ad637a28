"""Architectural names for x86 legacy PAE paging: address and frame kinds, entry flags,
access kinds, page-fault error codes, reserved-bit masks and the exceptions the hardware raises.

Follows Intel SDM Vol. 3A §4.4 (PAE paging, Tables 4-7..4-11), §4.6 (access rights) and
§4.7 (page-fault error code); reference/pae.md §§2-7 gives the same facts in short.
"""
from __future__ import annotations

from enum import IntFlag
from typing import NewType

# --- address and frame kinds (one type per address space) --------------------------------
Va = NewType("Va", int)        # 32-bit linear address
Maddr = NewType("Maddr", int)  # machine (host-physical) address
Paddr = NewType("Paddr", int)  # physical address as the guest sees it (== Maddr on bare hardware)
Mfn = NewType("Mfn", int)      # machine frame number
Pfn = NewType("Pfn", int)      # guest pseudo-physical frame number

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LARGE_PAGE_SHIFT = 21
LARGE_PAGE_SIZE = 1 << LARGE_PAGE_SHIFT
ENTRIES_PER_TABLE = 512          # PAE PDs and PTs: 512 entries of 8 bytes
PDPT_ENTRIES = 4
MAX_MEMORY = 1 << 36             # 64 GiB: a 36-bit machine
U64_MASK = (1 << 64) - 1


def mfn_to_maddr(mfn: int) -> Maddr:
    return Maddr(mfn << PAGE_SHIFT)


def maddr_to_mfn(maddr: int) -> Mfn:
    return Mfn(maddr >> PAGE_SHIFT)


def l3_index(va: int) -> int:
    """PDPT slot of `va` (linear bits 31:30)."""
    return (va >> 30) & 3


def l2_index(va: int) -> int:
    """Page-directory slot of `va` (linear bits 29:21)."""
    return (va >> 21) & 0x1FF


def l1_index(va: int) -> int:
    """Page-table slot of `va` (linear bits 20:12)."""
    return (va >> 12) & 0x1FF


class PageFlag(IntFlag):
    """Flag bits of PAE PDEs and PTEs (SDM Tables 4-9..4-11). PS in a PDE is PAT in a PTE."""
    P = 1 << 0
    RW = 1 << 1
    US = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5
    D = 1 << 6
    PS = 1 << 7
    G = 1 << 8
    AVL0 = 1 << 9
    AVL1 = 1 << 10
    AVL2 = 1 << 11
    XD = 1 << 63


PAT = PageFlag.PS  # bit 7 of a PTE


class Access(IntFlag):
    """Kind of memory access. `Access(0)` is a supervisor data read. Values line up with the
    W, U and I/D bits of the page-fault error code."""
    WRITE = 0x2
    USER = 0x4
    FETCH = 0x10


class PFEC(IntFlag):
    """Page-fault error code bits (SDM §4.7)."""
    P = 0x1
    W = 0x2
    U = 0x4
    RSVD = 0x8
    ID = 0x10


# plain-int copies for hot paths (IntFlag arithmetic is slow)
F_P, F_RW, F_US, F_A, F_D, F_PS, F_G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
F_XD = 1 << 63
A_WRITE, A_USER, A_FETCH = 0x2, 0x4, 0x10


def addr_mask(maxphyaddr: int) -> int:
    """Bits (M-1):12 of an entry: the frame address."""
    return ((1 << maxphyaddr) - 1) & ~0xFFF


def pde_pte_reserved(maxphyaddr: int, nxe: bool) -> int:
    """Reserved bits of a present PTE or non-leaf PDE: 62:M, and 63 unless EFER.NXE (§4)."""
    mask = ((1 << 63) - 1) & ~((1 << maxphyaddr) - 1)
    return mask if nxe else mask | F_XD


LARGE_PDE_EXTRA_RESERVED = 0x1FE000  # bits 20:13 of a PS=1 PDE


def pdpte_reserved(maxphyaddr: int) -> int:
    """Reserved bits of a present PAE PDPTE: 2:1, 8:5 and 63:M (no XD even with NXE) (§2)."""
    return 0x1E6 | (U64_MASK & ~((1 << maxphyaddr) - 1))


class HwError(Exception):
    """Base of every exception raised by the hardware model."""


class AddressError(HwError, ValueError):
    """A physical access that is misaligned or outside the machine's memory."""


class GeneralProtection(HwError):
    """#GP(0), e.g. MOV CR3 with a present PDPTE that has a reserved bit set (SDM §4.4.1)."""


class PageFault(HwError):
    """#PF with the faulting linear address (CR2) and the architectural error code:
    `PageFault(vaddr, error_code[, detail])`.

    The values live in `args` only (no Python-level `__init__`: page faults are frequent
    and mostly caught, so raising one stays in C); the message is built only when shown."""

    @property
    def vaddr(self) -> int:
        return self.args[0]

    @property
    def error_code(self) -> int:
        return self.args[1]

    @property
    def detail(self) -> str:
        return self.args[2] if len(self.args) > 2 else ""

    def __str__(self) -> str:
        msg = (f"#PF at va {self.vaddr:#010x}, error code {self.error_code:#x} "
               f"({PFEC(self.error_code)!r})")
        return f"{msg}: {self.detail}" if self.detail else msg
