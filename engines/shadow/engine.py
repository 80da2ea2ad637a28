"""ShadowEngine: Xen shadow paging in "translate, internal" mode, for a PAE guest.

Follows reference/shadow.md §1-6 and linux-guest.md §2.2; the fault path is Xen 3.3
`sh_page_fault` (`xen/arch/x86/mm/shadow/multi.c`), CR3 is `sh_update_cr3` with the PAE
gl3e snapshot of 3.1+ (4e5334d94c), invlpg is `sh_invlpg`.

The guest (ABI.TRANSLATED) writes ordinary PAE tables of pseudo-physical frames with plain
stores; CR3 loads, invlpg, TLB flushes and CR0/CR4/EFER writes trap here. Each VCPU's CPU
really walks shadow tables: a per-VCPU 4-entry shadow L3 in Xen memory below 4 GiB whose
entries point at the shadows of the guest's L2s (slot 3's typed l2h, with Xen's slots).

- **Entry with paging off.** VCPUs start with guest CR0.PG=0 and run on a physical-mode
  table, as Xen ran paging-disabled guests on the p2m: four Xen-owned L2s whose entries
  are lazily filled with fl1 shadows of the identity "superpage" pfn -> p2m(pfn). The same
  write-protection rules apply, so a page table built with paging off is protected the
  moment it is shadowed. The guest's CR0.PG write traps; the engine switches to shadows.
- **Page faults** trap: the guest walk (modes.guest_walk, PAE PDPTEs from the snapshot)
  sets guest A/D bits as hardware would; a guest fault is reflected (trap + pf_bounce +
  pf_delivery, error code as on bare hardware); otherwise the shadow is filled (a hidden
  fault: trap + sh_fill + guest walk refs) or, for a supervisor write to a shadowed page
  table, the write is emulated (trap + sh_emulate) and re-propagated into every shadow of
  that frame. A user-mode write to a page table unshadows it and goes through. The second
  half of a PTE written as two 32-bit halves is emulated in the first half's trap, as
  Xen's emulator goes on to the next instructions: it never runs on the CPU (no hardware
  walk, no #PF; a trapped CR3 load, invlpg, TLB flush or CR write between the halves
  ends that emulation, while reads and other stores do not: guestkit writes the halves
  back to back) and takes the first half's guest walk while the entries that walk read
  are unchanged (`_walk_again`: what a new walk would find). A later trapped store to
  the same page takes that walk the same way, charged as a walk (a simulation shortcut
  only: the record is the one a new walk would return).
- **Hardware state.** CR0.WP is always 1 on the real CPU (guest WP=0 is emulated: a
  supervisor write the shadow refuses but the guest allows is done in software); EFER.NXE
  and CR4.PGE follow the guest's (shadows never carry G, so PGE changes nothing but the
  flush it causes).
- **Superpages** are not offered (`BootInfo.superpages=False`): PV-style translated guests
  of 2005 mapped their direct map with 4 KiB pages. A guest PS=1 PDE still works exactly as
  on hardware (PAE honours PS whatever CR4.PSE says), through an fl1 shadow.
- **Xen's area** (0xF5800000 up): see p2m.py. Guest accesses there other than a
  supervisor read of RO_MPT raise #GP, never reach a page table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from engines.api import ABI, BootInfo, CostTable, DomainSpec, Engine, EngineError, GuestPageFault
from engines.hw import A_USER, A_WRITE, U64_MASK, AddressError, GeneralProtection

from .accounting import PF_BOUNCE, PF_DELIVERY, SH_FILL, TRAP, WALK_REF, Accounting
from .audit import ShadowAudit
from .control import ControlOps
from .emulate import _DONE, _RETRY, Emulation
from .modes import F_A, F_D, F_P, F_PS, F_RW, F_US, PAE, GuestWalk
from .oos import OutOfSync
from .options import resolve_options, xen_frames
from .p2m import HYPERVISOR_VIRT_START, P2M, RO_MPT_END, XenArea
from .pool import SH_FL1, ShadowPage, ShadowPool
from .shadows import ShadowOps
from .wrmap import WriteAccess

MIB = 1 << 20
_UNPAGED_PDE = F_P | F_RW | F_US | F_A | F_D | F_PS


@dataclass
class VcpuState:
    """What the guest believes its VCPU's paging registers hold, plus Xen's per-VCPU state."""
    sl3_mfn: int
    pg: bool = False
    wp: bool = False
    pge: bool = False
    nxe: bool = False
    gcr3: int = 0
    gl3e: tuple = (0, 0, 0, 0)             # v->arch.paging.shadow.gl3e[4]
    tops: list = field(default_factory=lambda: [None] * 4)
    up: bool = False                       # has run (in domain_dirty_cpumask)
    last_unshadow: int | None = None       # last_emulated_mfn_for_unshadow (as a gfn)
    last_wr_smfn: int = -1                 # last_writeable_pte_smfn
    half: int | None = None                # va of a half PTE write just emulated
    half_walk: tuple | None = None         # ... its guest walk (ShadowEngine._walk_again)
    oos: list = field(default_factory=list)
    set_bits: Callable | None = None       # the guest walk's A/D setter (set_ad_bits)
    bulk_src: int | None = None            # clear_page (-1) or copy_page source mfn, while
    bulk_pending: int | None = None        # ... its store is trapped; gfn to re-validate


class ShadowEngine(Accounting, ControlOps, Emulation, ShadowAudit, OutOfSync, WriteAccess,
                   ShadowOps, Engine):
    name = "shadow"
    abi = ABI.TRANSLATED
    mode = PAE
    COST_EVENTS = Engine.COST_EVENTS + (
        "trap", "pf_bounce", "pf_delivery", "tlb_flush", "cr_write", "sh_fill", "sh_emulate",
        "sh_cr3", "sh_invlpg", "sh_unshadow", "sh_resync", "sh_wrmap_probe", "sh_wrmap_scan",
        "sh_prefetch_entry", "sh_guest_walk_ref")

    # At most 29 instance attributes (with Engine's): CPython 3.11 specialises `self.x` and
    # `self.m()` only while an instance's attributes fit its class's shared keys (30 slots);
    # beyond that every method call on the engine takes the generic lookup. Per-VCPU state
    # goes in VcpuState, costs in `_hot_cost` (tests/shadow/test_engine_shape.py checks).
    def __init__(self, spec: DomainSpec, costs: CostTable):
        self.opt = resolve_options(spec)
        self._init_accounting(dict(costs.cycles))
        super().__init__(spec, costs, (spec.machine_memory_mib or 8192) * MIB)
        self._amask = self.mode.frame_mask(spec.maxphyaddr)
        plans = (PAE.plan(spec.maxphyaddr, False), PAE.plan(spec.maxphyaddr, True))  # by NXE
        self._walkers = tuple(p.walk_frames for p in plans)
        self._rsvd = tuple((p.reserved[1], p.reserved[2], p.large_reserved) for p in plans)
        self.nr_pages = spec.memory_mib * 256
        pool_pages = self.opt["pool_pages"]
        self.p2m = P2M(self.memory, self.nr_pages, xen_frames(spec, pool_pages), spec.seed)
        self.xen = XenArea(self.memory, self.p2m)
        self._p2m, self._frame = self.p2m.p2m, self.memory.frame
        self.pool = ShadowPool(self.p2m.alloc_xen(pool_pages))
        self.mapcount: dict[int, int] = {}
        self.wrmaps: dict[int, set] = {}
        self.oos_pages: dict = {}
        self.unpaged = [ShadowPage(mfn, "l2u", slot, ("unpaged", slot))
                        for slot, mfn in enumerate(self.p2m.alloc_xen(4))]
        self.vs = [VcpuState(mfn, set_bits=partial(self._gset_bits, v))
                   for v, mfn in enumerate(self.p2m.alloc_xen(spec.vcpus))]
        for v, cpu in enumerate(self.cpus):
            cpu.flush_filter = False        # Xen sets HWCR.FFDIS (costs.md §1)
            cpu.cr0_wp = True
            self._load_tops(v, list(self.unpaged))

    def boot_info(self) -> BootInfo:
        return BootInfo(abi=ABI.TRANSLATED, vcpus=self.spec.vcpus, nr_pages=self.nr_pages,
                        paging_on_at_entry=False, hypervisor_virt_start=HYPERVISOR_VIRT_START,
                        superpages=False, shared_kernel_pmd=True)

    # -- guest memory access ------------------------------------------------------------------
    def _xen_area(self, va: int, access: int) -> None:
        if not 0 <= va <= 0xFFFFFFFF:
            raise ValueError(f"linear address {va:#x} is not a 32-bit address")
        if va >= RO_MPT_END or access & (A_WRITE | A_USER):
            raise GeneralProtection(f"guest access {access:#x} at va {va:#010x}: at or above "
                                    f"HYPERVISOR_VIRT_START {HYPERVISOR_VIRT_START:#x}, only "
                                    f"supervisor reads of the RO_MPT area are allowed")

    # Each access tries the hardware (`try_translate`: a #PF comes back as a negative value,
    # as the VM exit would hand it to Xen, not as an exception). A fault is fixed by
    # `_sh_page_fault`; if that leaves the access to the hardware, `_retry` tries again,
    # up to 4 tries and 4 fixes in all.
    def read(self, vcpu: int, va: int, access: int = 0) -> int:
        if va >= HYPERVISOR_VIRT_START:
            self._xen_area(va, access)
        maddr = self.cpus[vcpu].try_translate(va, access)
        if maddr < 0:
            maddr = self._sh_page_fault(vcpu, va, access)
            if maddr is None:
                maddr = self._retry(vcpu, va, access, None, 8, "read at")
        words = self._frame(maddr >> 12)
        off = maddr & 0xFFF             # (maddr is a two-digit int: one operation on it)
        if words is None or off & 7:
            return self.memory.read_u64(maddr)          # 0 if untouched; or refused there
        return words[off >> 3]

    def write(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        access |= A_WRITE
        if va >= HYPERVISOR_VIRT_START:
            self._xen_area(va, access)
        maddr = self.cpus[vcpu].try_translate(va, access)
        if maddr < 0:
            maddr = self._sh_page_fault(vcpu, va, access, value)
            if maddr is None:
                maddr = self._retry(vcpu, va, access, value, 8, "write at")
            if maddr is _DONE:
                return
        words = self._frame(maddr >> 12)                # memory.write_u64, as in write_u32
        off = maddr & 0xFFF
        if words is None or off & 7 or not 0 <= value <= U64_MASK or self.memory.watch:
            self.memory.write_u64(maddr, value)
        else:
            words[off >> 3] = value

    def write_u32(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        """A 4-byte store (Linux PAE set_pte writes a PTE as two 32-bit halves)."""
        access |= A_WRITE
        if va >= HYPERVISOR_VIRT_START:
            self._xen_area(va, access)
        vs = self.vs[vcpu]
        half = vs.half
        if half is not None and half == va ^ 4:
            # the other half of a PTE whose first half was just emulated: Xen's emulator goes
            # on to this store in the same trap, so it never runs on the CPU (no walk, no #PF)
            maddr = self._sh_half(vcpu, vs, va, access, value)
            if maddr is _DONE:
                return
        else:
            maddr = self.cpus[vcpu].try_translate(va, access)
            if maddr < 0:
                maddr = self._sh_page_fault(vcpu, va, access, value, 4)
                if maddr is None:
                    maddr = self._retry(vcpu, va, access, value, 4, "write at")
                if maddr is _DONE:
                    return
        # memory.write_u32 inlined for a materialised frame and no watchers; a store to an
        # untouched frame, a watched one or one it refuses goes through it
        words = self._frame(maddr >> 12)
        off = maddr & 0xFFF
        if words is None or off & 3 or not 0 <= value <= 0xFFFFFFFF or self.memory.watch:
            self.memory.write_u32(maddr, value)
        elif off & 4:
            i = off >> 3
            words[i] = (words[i] & 0xFFFFFFFF) | (value << 32)
        else:
            i = off >> 3
            words[i] = (words[i] & ~0xFFFFFFFF) | value
        if half is not None:        # (the fault path sets it only when it emulates: _DONE)
            vs.half = None

    def translate(self, vcpu: int, va: int, access: int = 0) -> int:
        if va >= HYPERVISOR_VIRT_START:
            self._xen_area(va, access)
        maddr = self.cpus[vcpu].try_translate(va, access)
        if maddr < 0:
            maddr = self._sh_page_fault(vcpu, va, access)
            if maddr is None:
                maddr = self._retry(vcpu, va, access, None, 8, "translate of")
        return maddr

    def _retry(self, vcpu: int, va: int, access: int, value, size: int, what: str):
        """The first fix left the access to the hardware: try it again, fix again, at most
        3 more times. Returns the machine address the access may now use, or _DONE."""
        cpu = self.cpus[vcpu]
        for _ in range(3):
            maddr = cpu.try_translate(va, access)
            if maddr >= 0:
                return maddr
            r = self._sh_page_fault(vcpu, va, access, value, size)
            if r is not None:
                return r
        raise EngineError(f"{what} va {va:#010x} on vcpu {vcpu}: "
                          f"{'fill' if what == 'translate of' else 'shadow fill'} did not stick")

    def clear_page(self, vcpu: int, va: int) -> None:
        self._bulk_write(vcpu, va, None)
        self.charge(vcpu, "page_clear")

    def copy_page(self, vcpu: int, dst_va: int, src_va: int) -> None:
        src = self.translate(vcpu, src_va & ~0xFFF, 0)
        self._bulk_write(vcpu, dst_va, src >> 12)
        self.charge(vcpu, "page_copy")

    # -- the shadow page-fault path --------------------------------------------------------------
    def _sh_page_fault(self, vcpu: int, va: int, access: int, value=None, size: int = 8):
        """sh_page_fault. Returns None to retry the access on the hardware, _DONE when the
        write was emulated, or a machine address for translate()."""
        vs = self.vs[vcpu]
        vs.up = True
        half = vs.half                              # second half caught in the same trap?
        cont = size == 4 and half is not None and half == va ^ 4
        n, cycles, cost = self._n, self._cycles, self._hot_cost
        if cont:
            walk = self._walk_again(vs, va, access)
        else:
            cycles[vcpu] += cost[TRAP]
            n[TRAP] += 1
            # a store to the page of the last emulated write (the next entry of a table being
            # filled, copied or cleared): that write's walk while it holds (`_walk_again`)
            last = vs.half_walk
            walk = (self._walk_again(vs, va, access)
                    if last is not None and last[1] == access and last[0] >> 12 == va >> 12
                    else None)
        if walk is None:
            if vs.pg:                               # the guest walk (guest_walk_tables)
                walk = self._walkers[vs.nxe](va, access, vs.gl3e, self._frame, vs.set_bits,
                                             vs.wp, self._p2m)
            else:
                walk = self._unpaged_walk(va, access)
        # the record's items by index (unpacking a tuple subclass takes the generic path)
        refs = walk[10]                             # walk.refs
        if refs:
            cycles[vcpu] += cost[WALK_REF] * refs
            n[WALK_REF] += refs
        elif vs.pg:
            self.charge(vcpu, "sh_guest_walk_ref", 0)
        pfec = walk[5]                              # walk.pfec
        if pfec is not None:
            vs.last_unshadow = vs.half = None
            cycles[vcpu] += cost[PF_BOUNCE] + cost[PF_DELIVERY]
            n[PF_BOUNCE] += 1
            n[PF_DELIVERY] += 1
            raise GuestPageFault(va, pfec)
        gfn = walk[6]                               # walk.gfn
        if gfn >= self.nr_pages:
            raise AddressError(f"va {va:#010x} maps guest-physical address "
                               f"{(gfn << 12) | (va & 0xFFF):#x}, outside the domain's "
                               f"{self.nr_pages:#x} pages")
        if access & A_WRITE:
            if gfn in self.pool.by_gfn:
                if value is not None and not access & A_USER and not self.opt["oos"]:
                    # _pt_write's choice for a supervisor store without OOS, made here
                    vs.half_walk = walk
                    return self._emulate(vcpu, va, gfn, value, size, cont)
                maddr = (self._p2m[gfn] << 12) | (va & 0xFFF)
                r = self._pt_write(vcpu, va, access, walk, value, size, maddr, cont)
                if r is _RETRY:
                    return None
                if r is not None:
                    return r
            elif not walk[7]:                            # guest CR0.WP=0: emulate (.writable)
                maddr = (self._p2m[gfn] << 12) | (va & 0xFFF)
                return self._plain_write(vcpu, maddr, value, size)
        vs.last_unshadow = vs.half = None
        self._fill(vcpu, va, walk)
        cycles[vcpu] += cost[SH_FILL]
        n[SH_FILL] += 1
        return None

    def _sh_half(self, vcpu: int, vs: VcpuState, va: int, access: int, value: int):
        """The second half of a PTE, caught in the first half's trap: `_sh_page_fault` with
        `cont`, then `_retry` if that leaves the store to the hardware. Its common case is
        done here without the general path's tests, with the same effects: the first
        half's walk still holds (`_walk_again`), the frame is still a shadowed page table and
        the store is a supervisor one without OOS, so the write is emulated at once,
        charging the walk's entry reads (a complete PAE walk read two: never zero) and no
        trap. Returns _DONE, or the machine address the store may use."""
        walk = self._walk_again(vs, va, access)
        if (walk is not None and walk[6] in self.pool.by_gfn and not access & A_USER
                and not self.opt["oos"]):
            vs.up = True
            refs = walk[10]                             # walk.refs
            self._cycles[vcpu] += self._hot_cost[WALK_REF] * refs
            self._n[WALK_REF] += refs
            return self._emulate(vcpu, va, walk[6], value, 4, True)
        maddr = self._sh_page_fault(vcpu, va, access, value, 4)
        if maddr is None:
            maddr = self._retry(vcpu, va, access, value, 4, "write at")
        return maddr

    def _walk_again(self, vs: VcpuState, va: int, access: int) -> GuestWalk | None:
        """The guest walk of the last emulated write (`half_walk`: same page, same access,
        a complete PAE walk) when the PDPTE snapshot, PDE and PTE it read still hold what
        it read (after the A/D bits it set). A new walk would then read the same entries,
        set no A/D bit and return the same record but for `va`, so this is that walk
        without the work: for the second half of a PTE written as two 32-bit halves, as
        Xen emulates it with the first's walk, and for a later trapped store to the same
        page, whose walk it is exactly (still charged as walked). The record is returned
        as it is: its `va` is the earlier write's (the fault path passes on `va` itself
        and reads none). None: walk again. (set_control drops the walk: WP and NXE also
        decide a walk.)"""
        walk = vs.half_walk
        if walk is None or walk[1] != access or walk[4] != 1 or (walk[0] ^ va) >> 12:
            return None
        e3, e2, e1 = walk[2]
        _g3, g2, g1 = walk[3]
        if vs.gl3e[va >> 30] != e3:
            return None
        p2m, frame = self._p2m, self._frame
        words = frame(p2m[g2 >> 12])
        if words is None or words[(g2 & 4095) >> 3] != e2:
            return None
        words = frame(p2m[g1 >> 12])
        if words is None or words[(g1 & 4095) >> 3] != e1:
            return None
        return walk

    def _unpaged_walk(self, va: int, access: int) -> GuestWalk:
        """Guest paging off: the physical-mode table's identity "superpage" entry."""
        gfn = va >> 12
        if gfn >= self.nr_pages:
            raise AddressError(f"physical address {va:#x} (paging off) is outside the "
                               f"domain's {self.nr_pages:#x} pages")
        pde = ((va >> 21) << 21) | _UNPAGED_PDE
        return GuestWalk(va, access, (F_P, pde), (None, None), 2, None, gfn, True, True)

    def _gread(self, gpa: int) -> int:
        """A guest page-table entry by guest-physical address: P2M, then machine memory."""
        gfn = gpa >> 12
        if gfn >= self.nr_pages:
            raise AddressError(f"guest page-table entry at guest-physical {gpa:#x} is "
                               f"outside the domain's {self.nr_pages:#x} pages")
        return self.memory.read_u64((self._p2m[gfn] << 12) | (gpa & 0xFFF))

    def _gset_bits(self, vcpu: int, gpa: int, bits: int) -> None:
        """set_ad_bits (VcpuState.set_bits binds `vcpu`): Xen writes guest A/D itself, then
        re-propagates that entry."""
        gfn = gpa >> 12
        self.memory.set_bits_u64((self.p2m.p2m[gfn] << 12) | (gpa & 0xFFF), bits)
        if gfn in self.pool.by_gfn and self._validate_gpte(vcpu, gfn, (gpa & 0xFFF) >> 3):
            self._flush_all(vcpu)

    def _fill(self, vcpu: int, va: int, walk: GuestWalk):
        """shadow_get_and_create_l1e + l1e_propagate_from_guest (+ prefetch). Returns the
        shadow L1 and index now mapping `va`."""
        vs = self.vs[vcpu]
        pool = self.pool
        if len(pool.free) < 2:
            self._prealloc(vcpu, 2)
        top = vs.tops[va >> 30] if vs.pg else self.unpaged[va >> 30]
        if top is None:
            raise EngineError(f"vcpu {vcpu}: no shadow for PDPT slot {va >> 30} of a guest "
                              f"walk that succeeded")
        i2 = (va >> 21) & 511
        flush = self._set_sl2e(top, i2, self._sl2e_from_guest(walk.entries[1], vs.nxe, vcpu,
                                                              True))
        words = self._frame(top.smfn)                   # the entry just set (read_u64)
        sl2e = 0 if words is None else words[i2]
        sp = pool.by_smfn.get((sl2e & self._amask) >> 12) if sl2e & F_P else None
        idx = (va >> 12) & 511
        if sp is not None:
            e = (self._fl1e(sp, idx) if sp.type == SH_FL1
                 else self._sl1e_from_guest(walk.entries[-1], vs.nxe, sp, idx))
            flush |= self._set_sl1e(sp, idx, e)
            if self.opt["prefetch"] and walk.level == 1:
                flush |= self._prefetch(vcpu, sp, idx)
        if flush:
            self._flush_all(vcpu)
        return sp, idx

    # -- accounting ------------------------------------------------------------------------------
    def gauges(self) -> dict[str, int]:
        out = super().gauges()
        out["sh.shadow_pages"] = self.pool.in_use
        out["sh.shadow_pages_peak"] = self.pool.peak
        out["sh.pool_pages"] = self.pool.size
        out["sh.oos_pages"] = len(self.oos_pages)
        return out
