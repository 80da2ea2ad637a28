"""The MMU hypercalls of Xen 3.0.3 for a PV-PAE guest (`do_mmu_update`, `do_mmuext_op`,
`do_update_va_mapping`, `do_multicall`, `do_vcpu_op`, `do_vm_assist`, `do_set_gdt` in
`xen/arch/x86/mm.c`, `common/multicall.c`, `common/domain.c`); reference/xen-pv.md §2.

Batches run in order and stop at the first failure with -EINVAL, `success_count` giving the
requests done (earlier ones are not rolled back). Every `PREEMPT_EVERY` requests Xen
preempts and the guest re-enters a continuation (charged one more crossing); done counts
accumulate, so preemption is invisible to the result. A request array shorter than `count`
or an argument of the wrong kind is an unreadable guest pointer: -EFAULT before any work.
A failed update_va_mapping flushes nothing (the XSA-279 fix). A local TLB flush requested in
a mmuext batch is deferred to its end and cancelled by a NEW_BASEPTR (its CR3 load flushes).
"""
from __future__ import annotations

from engines.api.xen import (DOMID_IO, DOMID_SELF, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
                             MMU_UPDATE_PREEMPTED, UVMF_ALL, UVMF_FLUSHTYPE_MASK,
                             UVMF_INVLPG, UVMF_TLB_FLUSH, VMASST_CMD_disable,
                             VMASST_CMD_enable, Errno, Hypercall, MmuextOp, MMUExt, MmuUpdate,
                             MulticallEntry, SuccessCount, VcpuGuestContext, VcpuMask,
                             VcpuOp, VMAssist, xen_cr3_to_pfn, HYPERVISOR_VIRT_START)

from .frames import DOMID_GUEST, PGT, PT_TYPES

# Reading an Enum member costs ~10 dict lookups in CPython 3.11: the hot paths read the same
# members as class attributes (MMUExt.PIN_L1_TABLE is engines.api.xen.MMUExt.PIN_L1_TABLE)
MMUExt = type("MMUExt", (), dict(MMUExt.__members__))
_PIN_TYPES = (PGT.L1, PGT.L2, PGT.L3)
_L1, _L2, _WRITABLE = PGT.L1, PGT.L2, PGT.WRITABLE
_NOT_IN_A_BATCH = (Hypercall.multicall, Hypercall.iret)

EINVAL, EFAULT, ENOSYS, ESRCH, EEXIST = (-Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS,
                                         -Errno.ESRCH, -Errno.EEXIST)
PREEMPT_EVERY = 1024


def _foreign(fd) -> int | None:
    """The domain whose frames may be named (FOREIGNDOM), or None for -ESRCH."""
    if fd in (DOMID_SELF, DOMID_GUEST):
        return DOMID_GUEST
    if fd == DOMID_IO:
        return DOMID_IO          # owns no frames here: only I/O could be mapped
    return None


def _batch(eng, v, reqs, count, done_out, fd, kind, one) -> int:
    if not isinstance(count, int) or not isinstance(reqs, (list, tuple)):
        return EFAULT
    if done_out is not None and not isinstance(done_out, SuccessCount):
        return EFAULT
    done = 0
    if count & MMU_UPDATE_PREEMPTED:            # a continuation: resume where it stopped
        count &= ~MMU_UPDATE_PREEMPTED
        done = done_out.value if done_out is not None else 0
    if count > len(reqs) or done > count or any(not isinstance(r, kind) for r in reqs[:count]):
        return EFAULT
    dom = _foreign(fd)
    if dom is None:
        return ESRCH
    rc, state, i = 0, {}, done
    while i < count:
        if i > done and (i - done) % PREEMPT_EVERY == 0:
            eng.charge(v, "hypercall")          # hypercall_create_continuation + re-entry
            eng.stats["pv_preemptions"] += 1
        r = one(eng, v, reqs[i], dom, state)
        if r:
            rc = r
            break
        i += 1
    if done_out is not None:
        done_out.value = i
    if state.get("flush_local"):
        eng.flush_vcpu(v)
    return rc


# -- mmu_update ------------------------------------------------------------------------------
def _mmu_one(eng, v, req: MmuUpdate, dom, state) -> int:
    eng.charge(v, "pv_update_entry")
    eng.stats["pv_page_updates"] += 1
    cmd, ptr = req.ptr & 7, req.ptr & ~7
    f = eng.frames
    mfn = ptr >> 12
    if cmd == MMU_NORMAL_PT_UPDATE:
        if not 0 <= req.val < 1 << 64 or not f.get_page(mfn, DOMID_GUEST):
            return EINVAL
        try:
            info = f.pages[mfn]
            if info.type in PT_TYPES and info.tcount > 0:
                if not f.get_page_type(mfn, info.type, info.xen_l2):
                    return EINVAL
                try:
                    return 0 if _mod_entry(eng, info, ptr, req.val, dom) else EINVAL
                finally:
                    f.put_page_type(mfn)
            if not f.get_page_type(mfn, _WRITABLE):
                return EINVAL
            eng.memory.write_u64(ptr, req.val)
            f.put_page_type(mfn)
            return 0
        finally:
            f.put_page(mfn)
    if cmd == MMU_MACHPHYS_UPDATE:
        if not 0 <= req.val <= 0xFFFFFFFF or not f.get_page(mfn, dom):
            return EINVAL
        eng.memory.write_u32((eng.layout.m2p_first << 12) + 4 * mfn, req.val)
        f.put_page(mfn)
        eng.stats["pv_machphys_updates"] += 1
        return 0
    return EINVAL


def _mod_entry(eng, info, ptr, new, dom) -> bool:
    val = eng.validator
    val.dom = dom
    try:
        idx = (ptr & 0xFFF) >> 3
        if info.type == _L1:
            mem = eng.memory
            return val.mod_l1_entry(mem.read_u64(ptr), new, mem, ptr)
        if info.type == _L2:
            return val.mod_l2_entry(info, idx, new)
        return val.mod_l3_entry(info, idx, new)
    finally:
        val.dom = DOMID_GUEST


def mmu_update(eng, v, reqs=None, count=0, done=None, fd=DOMID_SELF) -> int:
    eng.stats["calls_to_mmu_update"] += 1
    return _batch(eng, v, reqs, count, done, fd, MmuUpdate, _mmu_one)


# -- mmuext_op -------------------------------------------------------------------------------
def _mask(eng, arg) -> list[int] | None:
    if not isinstance(arg, VcpuMask):
        return None
    return [u for u in range(len(eng.cpus)) if arg.bits >> u & 1 and eng.up[u]]


def _ext_one(eng, v, op: MmuextOp, dom, state) -> int:
    f, cmd = eng.frames, op.cmd
    if MMUExt.PIN_L1_TABLE <= cmd <= MMUExt.PIN_L4_TABLE:
        if cmd == MMUExt.PIN_L4_TABLE:
            return 0                                  # above the paging levels: ignored
        type_ = _PIN_TYPES[cmd - MMUExt.PIN_L1_TABLE]
        if not isinstance(op.arg1, int) or not f.get_page_and_type(op.arg1, dom, type_):
            return EINVAL
        info = f.pages[op.arg1]
        if info.pinned:
            f.put_page_and_type(op.arg1)
            return EINVAL
        f.set_pinned(op.arg1, True)
        eng.stats["pv_pins"] += 1
        return 0
    if cmd == MMUExt.UNPIN_TABLE:
        if not isinstance(op.arg1, int) or not f.get_page(op.arg1, dom):
            return EINVAL
        info = f.pages[op.arg1]
        if not info.pinned:
            f.put_page(op.arg1)
            return EINVAL
        f.set_pinned(op.arg1, False)
        f.put_page_and_type(op.arg1)
        f.put_page(op.arg1)
        eng.stats["pv_unpins"] += 1
        return 0
    if cmd == MMUExt.NEW_BASEPTR:
        if not isinstance(op.arg1, int):
            return EINVAL
        eng.new_guest_cr3(v, op.arg1)
        state["flush_local"] = False                  # the CR3 load flushed
        return 0
    return _flush_op(eng, v, op, state)


def _flush_op(eng, v, op, state) -> int:
    cmd = op.cmd
    if cmd == MMUExt.TLB_FLUSH_LOCAL:
        state["flush_local"] = True
        return 0
    if cmd == MMUExt.INVLPG_LOCAL:
        eng.xen_invlpg(v, op.arg1 & 0xFFFFFFFF)
        return 0
    if cmd in (MMUExt.TLB_FLUSH_MULTI, MMUExt.INVLPG_MULTI):
        targets = _mask(eng, op.arg2)
        if targets is None:
            return EFAULT
    elif cmd in (MMUExt.TLB_FLUSH_ALL, MMUExt.INVLPG_ALL):
        targets = [u for u in range(len(eng.cpus)) if eng.up[u]]
    elif cmd == MMUExt.SET_LDT:
        ok = isinstance(op.arg1, int) and not op.arg1 & 0xFFF and isinstance(op.arg2, int) \
            and 0 <= op.arg2 <= 8192 and op.arg1 + op.arg2 * 8 <= HYPERVISOR_VIRT_START
        return 0 if ok else EINVAL
    else:
        return EINVAL                                 # FLUSH_CACHE needs a physdev; unknown
    for u in targets:
        if cmd in (MMUExt.TLB_FLUSH_MULTI, MMUExt.TLB_FLUSH_ALL):
            eng.flush_vcpu(u)
        else:
            if u != v:
                eng.ipi(v, u)
            eng.xen_invlpg(u, op.arg1 & 0xFFFFFFFF)
    return 0


def mmuext_op(eng, v, ops=None, count=0, done=None, fd=DOMID_SELF) -> int:
    eng.stats["calls_to_mmuext_op"] += 1
    return _batch(eng, v, ops, count, done, fd, MmuextOp, _ext_one)


# -- update_va_mapping -----------------------------------------------------------------------
def update_va_mapping(eng, v, va=None, val=None, flags=0) -> int:
    stats = eng.stats
    stats["calls_to_update_va"] += 1
    cost = eng._cost["pv_update_entry"]            # eng.charge(v, "pv_update_entry")
    eng._cycles[v] += cost
    eng.cycles_by["pv_update_entry"] += cost
    stats["pv_update_entry"] += 1
    if flags == 0 and type(flags) is int:       # UVMF_NONE | UVMF_LOCAL: nothing to flush
        targets, flush = (), 0
    elif isinstance(flags, tuple) and len(flags) == 2:
        targets, flush = _mask(eng, flags[0]), flags[1]
        if targets is None or not isinstance(flush, int):
            return EFAULT
    elif isinstance(flags, int):
        flush, scope = flags & UVMF_FLUSHTYPE_MASK, flags & ~UVMF_FLUSHTYPE_MASK
        if scope not in (0, UVMF_ALL):
            return EFAULT
        targets = [u for u in range(len(eng.cpus)) if eng.up[u]] if scope else [v]
    else:
        return EFAULT
    if not isinstance(va, int) or not isinstance(val, int) or not 0 <= val < 1 << 64:
        return EINVAL
    if not 0 <= va < HYPERVISOR_VIRT_START:
        return EINVAL
    acc = eng.area.l1e_access(v, va)
    if acc is None or not eng.validator.mod_l1_entry(acc[0], val, acc[1], acc[2]):
        return EINVAL
    for u in targets:
        if flush & UVMF_FLUSHTYPE_MASK == UVMF_TLB_FLUSH:
            eng.flush_vcpu(u)
        elif flush & UVMF_FLUSHTYPE_MASK == UVMF_INVLPG:
            if u != v:
                eng.ipi(v, u)
            eng.xen_invlpg(u, va)
    return 0


# -- multicall, vm_assist, vcpu_op, set_gdt --------------------------------------------------
def multicall(eng, v, entries=None, count=None) -> int:
    if not isinstance(entries, (list, tuple)):
        return EFAULT
    count = len(entries) if count is None else count
    if not isinstance(count, int) or count > len(entries):
        return EFAULT
    for entry in entries[:count]:
        if not isinstance(entry, MulticallEntry):
            return EFAULT
        if entry.op in _NOT_IN_A_BATCH:
            entry.result = EINVAL if entry.op == Hypercall.multicall else ENOSYS
            continue                # no re-entry; no privilege change inside a batch (XSA-213)
        entry.result = dispatch(eng, v, entry.op, tuple(entry.args))
        eng.stats["pv_multicall_entries"] += 1
    return 0


def vm_assist(eng, v, cmd=None, type_=None) -> int:
    if cmd not in (VMASST_CMD_enable, VMASST_CMD_disable):
        return ENOSYS
    if type_ not in tuple(VMAssist):
        return EINVAL
    on = cmd == VMASST_CMD_enable
    if type_ == VMAssist.writable_pagetables:
        if on and not eng.opts["ptwr"]:
            return EINVAL
        eng.ptwr_enabled = on
    elif type_ == VMAssist.pae_extended_cr3:
        eng.validator.extended_cr3 = on
    (eng.vm_assist.add if on else eng.vm_assist.discard)(int(type_))
    return 0


def vcpu_op(eng, v, cmd=None, vcpuid=None, ctxt=None) -> int:
    if not isinstance(vcpuid, int) or not 0 <= vcpuid < len(eng.cpus):
        return -Errno.ENOENT
    if cmd == VcpuOp.initialise:
        if eng.base[vcpuid] is not None or eng.up[vcpuid]:
            return EEXIST
        if not isinstance(ctxt, VcpuGuestContext):
            return EFAULT
        mfn = xen_cr3_to_pfn(ctxt.ctrlreg3)
        if not eng.frames.get_page_and_type(mfn, DOMID_GUEST, PGT.L3):
            return EINVAL
        eng.base[vcpuid] = mfn
        return 0
    if cmd == VcpuOp.up:
        if eng.base[vcpuid] is None:
            return EINVAL
        if not eng.up[vcpuid]:
            eng.up[vcpuid] = True
            eng.load_base(vcpuid)
        return 0
    if cmd == VcpuOp.down:
        if vcpuid == v:
            return EINVAL
        eng.up[vcpuid] = False
        return 0
    if cmd == VcpuOp.is_up:
        return int(eng.up[vcpuid])
    return ENOSYS


def set_gdt(eng, v, mfns=None, entries=None) -> int:
    if not isinstance(mfns, (list, tuple)) or not isinstance(entries, int):
        return EFAULT
    if not 0 <= entries <= 8192 or len(mfns) < (entries * 8 + 4095) >> 12 or len(mfns) > 16:
        return EINVAL
    f, taken = eng.frames, []
    for mfn in mfns:
        if not isinstance(mfn, int) or not f.get_page_and_type(mfn, DOMID_GUEST, PGT.SEG_DESC):
            for m in taken:
                f.put_page_and_type(m)
            return EINVAL
        taken.append(mfn)
    for m in eng.gdt[v]:
        f.put_page_and_type(m)
    eng.gdt[v] = taken
    return 0


TABLE = {Hypercall.mmu_update: mmu_update, Hypercall.mmuext_op: mmuext_op,
         Hypercall.update_va_mapping: update_va_mapping, Hypercall.multicall: multicall,
         Hypercall.vm_assist: vm_assist, Hypercall.vcpu_op: vcpu_op,
         Hypercall.set_gdt: set_gdt}


# hypercall number -> (handler, how many arguments it takes after (eng, v))
HANDLERS = {nr: (fn, fn.__code__.co_argcount - 2) for nr, fn in TABLE.items()}


def dispatch(eng, v, nr, args) -> int:
    """Run hypercall `nr` (PVEngine.hypercall has this inline)."""
    hit = HANDLERS.get(nr)
    if hit is None:
        return ENOSYS
    if len(args) > hit[1]:
        return EINVAL
    return hit[0](eng, v, *args)
