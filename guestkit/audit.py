"""The guest's data-ledger audit: read every present user page of every live address space
back through the MMU (two words per page: word 0, a file page's token, and the ledger word)
and compare with what the ledger and the page cache say it must hold. Runs on VCPU 0 inside
`engine.unaccounted()` so it observes the race without taking part in it.

Address spaces that no VCPU has loaded yet (a child forked but not yet scheduled) are left
out: loading one would make the MMU backend do work on the race's behalf (a Xen PV backend
must pin an mm before its first CR3 load), and every page such an mm maps is still shared
with, and checked through, the parent it was copied from.
"""
from __future__ import annotations

from engines.api import A_USER, GuestPageFault

from .syscalls import DATA_WORD


def audit_ledger(kernel, limit: int = 20) -> list[str]:
    e, ops = kernel.engine, kernel.ops
    problems: list[str] = []
    mms = {}
    for task in kernel.tasks.values():
        if task.mm is not None and not task.mm.dead and task.mm.loaded:
            mms.setdefault(task.mm.id, (task.mm, task))
    if not mms:
        return problems
    saved = kernel.active_mm[0]
    with e.unaccounted():
        stats = kernel.stats.copy()
        try:
            for _, (mm, task) in sorted(mms.items()):
                ops.write_cr3(0, mm.pgd_pa)
                for vpn in sorted(mm.pages):
                    page = vpn << 12
                    vma = mm.find_vma(page)
                    for va in (page, page + DATA_WORD):
                        want = kernel.expected(mm, va, vma)
                        try:
                            found = e.read(0, va, A_USER)
                        except GuestPageFault as f:
                            problems.append(f"{task.place} (mm {mm.id}): va {va:#010x} is "
                                            f"in the ledger but faults (error code "
                                            f"{f.error_code:#x})")
                            break
                        if found != want:
                            problems.append(f"{task.place} (mm {mm.id}): va {va:#010x} "
                                            f"expected {want:#018x}, found {found:#018x}")
                    if len(problems) >= limit:
                        return problems
        finally:
            ops.write_cr3(0, kernel.swapper_pa if saved is None else saved.pgd_pa)
            kernel.stats = stats
    return problems
