"""Writable page tables by emulation, after Xen 3.0.3 `ptwr_do_page_fault` and
`ptwr_emulated_update` (`xen/arch/x86/mm.c`, since 228f081e08; reference/xen-pv.md §2.4).

Entry conditions: VMASST_TYPE_writable_pagetables enabled; a supervisor write fault on a
present read-only PTE (error code P|W, no U) below HYPERVISOR_VIRT_START; the PTE (found the
way Xen finds it: the linear map, or a software walk under the `walk` strategy) names a
frame of the domain whose type is L1 with a non-zero type count. Only L1s qualify: a write
to a read-only L2 or L3 is bounced to the guest.

The write must be aligned to its width (XSA-227: never a partial entry); a 4-byte write is
widened to 8 with the other half of the old entry. The new entry goes through the same
checks as mod_l1_entry; if it fails, the fault is bounced. PAE special case: a 4-byte write
that would leave a present but invalid entry (Linux writing the halves in the wrong order)
is accepted with PRESENT cleared.
"""
from __future__ import annotations

from .frames import DOMID_GUEST, PGT
from .validate import P, RW, entry_mfn
from .xenarea import HYPERVISOR_VIRT_START


def emulate(eng, v: int, va: int, value: int, width: int, error_code: int) -> bool:
    """Try to emulate the faulting write; True if done (charged), False to bounce."""
    if not eng.ptwr_enabled or error_code & 0x7 != 0x3 or not 0 <= va < HYPERVISOR_VIRT_START:
        return False
    if va % width or width not in (4, 8):
        return False
    eng.cur = v
    acc = eng.area.l1e_access(v, va)
    if acc is None:
        return False
    pte = acc[0]
    if not pte & P or pte & RW:
        return False
    mfn = entry_mfn(pte)
    info = eng.frames.pages.get(mfn)
    if info is None or info.owner != DOMID_GUEST or info.type != PGT.L1 or info.tcount == 0:
        return False
    pa = (mfn << 12) | (va & 0xFF8)
    mem = eng.memory
    old = mem.read_u64(pa)
    if width == 8:
        new = value & ((1 << 64) - 1)
    elif va & 4:
        new = (old & 0xFFFFFFFF) | ((value & 0xFFFFFFFF) << 32)
    else:
        new = (old & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)

    if not eng.frames.get_page(mfn, DOMID_GUEST):
        return False
    try:             # the L1 is held for the whole emulated write (the XSA-219 lesson)
        ok = eng.validator.mod_l1_entry(old, new, mem, pa)
        if not ok and width == 4 and new & P:
            ok = eng.validator.mod_l1_entry(old, new & ~P, mem, pa)
    finally:
        eng.frames.put_page(mfn)
    if not ok:
        return False
    eng.charge(v, "trap")
    eng.charge(v, "pv_ptwr_emulate")
    eng.stats["ptwr_emulations"] += 1
    return True
