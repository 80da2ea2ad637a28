"""The invariants of reference/xen-pv.md §4, checked from scratch against the engine's
bookkeeping, the tables in machine memory, the VCPUs' registers and their TLBs.

- I1 no writable PT: every target of a present RW L1e in a validated L1 has the writable
  type; no cached TLB translation below HYPERVISOR_VIRT_START is writable onto a frame
  whose page-table type count is above 0.
- I2 conservation: each guest frame's general count = allocation + L1e maps + typed holders
  (L2e -> L1, L3e -> L2, pins, VCPU bases, GDT frames); each type count = its typed holders;
  every typed holder agrees with the frame's type (and the pae_xen_l2 flag).
- I3 ownership: every present entry of a validated table and every cached translation below
  the Xen area names a frame of the domain.
- I4/I5 the Xen slots and linear maps per strategy (XenArea.audit); the PDPTE registers of
  each VCPU equal the four entries of the L3 Xen says it runs.
Plus any refcount corruption Xen ran into. Cost: one pass over the page-table frames and
the frame table; run at milestones, or after every hypercall with `debug_audit`.
"""
from __future__ import annotations

from collections import Counter

from .frames import DOMID_GUEST, PGT, PT_TYPES
from .validate import FIRST_XEN_SLOT, P, RW, entry_mfn
from .xenarea import HYPERVISOR_VIRT_START


def _holders(eng, out: list[str]):
    frames, mem = eng.frames, eng.memory
    count, tcount, need = Counter(), Counter(), {}

    def typed(target: int, type_: PGT, xen_l2: bool, who: str) -> None:
        count[target] += 1
        tcount[target] += 1
        need.setdefault(target, (type_, xen_l2, who))

    for mfn in sorted(frames.pt_frames):
        info = frames.pages[mfn]
        if not info.validated or info.tcount == 0:
            out.append(f"I2: mfn {mfn:#x} listed as a page table but {info!r}")
            continue
        limit = 4 if info.type == PGT.L3 else (FIRST_XEN_SLOT if info.xen_l2 else 512)
        for i, e in mem.nonzero_words(mfn):
            if i >= limit or not e & P:
                continue
            target = entry_mfn(e)
            owner = frames.owner_of(target)
            if owner != DOMID_GUEST:
                out.append(f"I3: {info.type.name} mfn {mfn:#x} entry {i} = {e:#x} names mfn "
                           f"{target:#x} owned by {owner}")
                continue
            if info.type == PGT.L1:
                count[target] += 1
                if e & RW:
                    tcount[target] += 1
                    need.setdefault(target, (PGT.WRITABLE, False, f"RW L1e in {mfn:#x}"))
            elif info.type == PGT.L2:
                typed(target, PGT.L1, False, f"L2 {mfn:#x}[{i}]")
            else:
                typed(target, PGT.L2, i == 3, f"L3 {mfn:#x}[{i}]")
    for mfn, info in frames.pages.items():
        if info.pinned:
            typed(mfn, info.type, info.xen_l2, "pin")
    for v, b in enumerate(eng.base):
        if b is not None:
            typed(b, PGT.L3, False, f"VCPU {v} base")
    for v, gdt in enumerate(eng.gdt):
        for m in gdt:
            typed(m, PGT.SEG_DESC, False, f"VCPU {v} GDT")
    return count, tcount, need


def _check_counts(eng, out: list[str]) -> None:
    count, tcount, need = _holders(eng, out)
    for mfn, info in eng.frames.pages.items():
        if info.owner != DOMID_GUEST:
            continue
        want = count[mfn] + 1
        if info.count != want or info.tcount != tcount[mfn]:
            out.append(f"I2: mfn {mfn:#x} has count {info.count} / type count {info.tcount}, "
                       f"holders say {want} / {tcount[mfn]} ({info!r})")
        n = need.get(mfn)
        if n and (info.type != n[0] or info.xen_l2 != n[1]):
            out.append(f"I1/I2: mfn {mfn:#x} is {info!r} but {n[2]} needs "
                       f"{n[0].name}{'|pae_xen_l2' if n[1] else ''}")


def _check_tlbs(eng, out: list[str]) -> None:
    pages = eng.frames.pages
    for v, cpu in enumerate(eng.cpus):
        for t in cpu.tlb_entries():
            if t.va >= HYPERVISOR_VIRT_START:
                continue
            info = pages.get(t.pa >> 12)
            if info is None or info.owner != DOMID_GUEST:
                out.append(f"I3: VCPU {v} TLB maps va {t.va:#x} to mfn {t.pa >> 12:#x}, not "
                           f"the domain's")
            elif t.writable and info.type in PT_TYPES and info.tcount:
                out.append(f"I1: VCPU {v} TLB maps va {t.va:#x} writable onto "
                           f"{info.type.name} mfn {info.mfn:#x}")


def _check_pdptes(eng, out: list[str]) -> None:
    mem = eng.memory
    for v, b in enumerate(eng.base):
        if b is None or not eng.up[v]:
            continue
        cpu = eng.cpus[v]
        at = cpu.cr3 & 0xFFFFFFE0
        loaded = tuple(mem.read_u64(at + 8 * i) for i in range(4))
        if tuple(cpu.pdptes) != loaded:
            out.append(f"I5: VCPU {v}'s PDPTE registers differ from the L3 at cr3 {at:#x}")
        if eng.area.name != "shared-percpu":
            guest = tuple(mem.read_u64((b << 12) + 8 * i) for i in range(4))
            if loaded != guest:
                out.append(f"I5: VCPU {v} runs cr3 {at:#x} whose entries differ from its "
                           f"base L3 {b:#x}")


def audit_domain(eng) -> list[str]:
    out = list(eng.integrity)
    _check_counts(eng, out)
    _check_tlbs(eng, out)
    _check_pdptes(eng, out)
    out += eng.area.audit()
    return out
