"""The Xen PV-PAE hypervisor as an `Engine`: one domain, its VCPUs, guest memory access with
page-fault bouncing and writable-pagetable emulation, privileged operations as Xen 3.0.3
treats them from a ring-1 kernel (`xen/arch/x86/traps.c`), CR3 loads (`new_guest_cr3`,
`make_cr3` with `pae_l3_cache`), and TLB flushes with Xen's flush clock.

Guest-facing semantics (reference/xen-pv.md §2, costs.md §2-3):
- read/write/translate run on the VCPU's CPU. The guest's segments end at the top of the
  read-only M2P (0xF6800000): an access above is a #GP, fatal to the kernel (GuestCrash).
- A #PF first tries ptwr (if enabled): a supervisor write to a read-only mapping of an L1 in
  use is emulated (trap + `pv_ptwr_emulate`). Otherwise it is bounced to the guest kernel
  as `GuestPageFault` with the hardware's error code, charged trap + pf_bounce + pf_delivery.
- write_cr3 is a privileged instruction that Xen emulates (`emulate_privileged_op`, case
  CR3) as NEW_BASEPTR; flush_tlb(False) is the same reload. INVLPG, CR0/CR4/EFER changes and
  a global flush are #GP from ring 1, which Xen does not emulate: the kernel dies
  (GuestCrash); a PV kernel uses MMUEXT_INVLPG_LOCAL / TLB_FLUSH_* instead.
- hypercall() returns 0, a count or -errno (engines.paravirt.hypercalls); a RefcountCorruption
  or a VCPU left without page tables crashes the domain (GuestCrash). With the hidden option
  `debug_audit` every hypercall and emulation is followed by `audit()` (AuditFailure).
- Flushes: a flush the guest asks for is Xen's local_flush_tlb, a CR3 reload the K8 flush
  filter may keep; the flush Xen does before a frame changes type is unconditional and
  filtered only by Xen's own clock (tlbflush_timestamp). Remote flushes are charged as IPIs.
"""
from __future__ import annotations

from engines.api import ABI, AuditFailure, BootInfo, CostTable, DomainSpec, Engine, GuestCrash
from engines.api import GuestPageFault
from engines.api.xen import HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_END, xen_cr3_to_pfn
from engines.hw import PageFault

from . import hypercalls, ptwr
from .audit import audit_domain
from .builder import XenPool, build_domain, pin_bootstrap
from .frames import DOMID_GUEST, PGT, FrameTable, RefcountCorruption
from .holders import HolderState
from .validate import L3_LIMIT_MFN, Validator
from .xenarea import STRATEGIES

MIB = 1 << 20
_L3 = PGT.L3              # an Enum member read costs ~10 dict lookups in CPython 3.11
OPTIONS = {"strategy": ("per-pagetable", "shared", "shared-percpu", "walk"),
           "ptwr": (True, False)}
DEFAULTS = {"strategy": "per-pagetable", "ptwr": True}
# accepted in DomainSpec.options but not raced: an audit after every hypercall (tests), and
# the size of the kernel image the builder loads before the P2M list
HIDDEN_OPTIONS = {"debug_audit": (False, True), "kernel_image_kib": (4096, 2048, 8192)}
HIDDEN_DEFAULTS = {"debug_audit": False, "kernel_image_kib": 4096}
DEFAULT_MACHINE_MIB = 8192


def machine_memory_range(spec: DomainSpec) -> tuple[int, int]:
    """The machine memory (MiB, min and max) a domain of `spec` boots in: the domain plus
    64 MiB for Xen, at least 64 MiB, at most 16 GiB."""
    return max(64, spec.memory_mib + 64), 16 * 1024


class _Tally(dict):
    """Event counts and cycles per event, read as 0 when absent: a Counter for `+=` only.
    collections.Counter defines __delitem__ in Python, which sends every store through a
    Python-level slot (a Counter `+=` costs ~2x a dict `+=` in CPython 3.11); the engine
    charges some 10^5 events a boot."""

    __slots__ = ()

    def __missing__(self, key):
        return 0


def KNOWN_BROKEN(options, vcpus: int) -> str | None:
    """Cells whose boot must fail visibly: the seed post's option #1 on SMP."""
    if dict(options).get("strategy") == "shared" and vcpus > 1:
        return ("strategy 'shared' (seed post option #1): one kernel L2 whose linear slots "
                "follow the last NEW_BASEPTR cannot serve VCPUs running different page "
                "tables; the audit reports the wrong linear mapping")
    return None


def resolve_options(options) -> dict:
    out = {**DEFAULTS, **HIDDEN_DEFAULTS}
    allowed = {**OPTIONS, **HIDDEN_OPTIONS}
    for key, value in dict(options or {}).items():
        if key not in allowed:
            raise ValueError(f"paravirt option {key!r} unknown (options: {', '.join(OPTIONS)})")
        if value not in allowed[key]:
            raise ValueError(f"paravirt option {key}={value!r} not one of {allowed[key]}")
        out[key] = value
    return out


class PVEngine(Engine):
    name = "paravirt"
    abi = ABI.XEN_PV
    COST_EVENTS = Engine.COST_EVENTS + (
        "invlpg", "tlb_flush", "pf_delivery", "hypercall", "trap", "pf_bounce",
        "pv_update_entry", "pv_validate_table", "pv_validate_entry", "pv_ptwr_emulate",
        "pv_new_baseptr", "pv_linear_slot", "pv_soft_walk_ref")

    def __init__(self, spec: DomainSpec, costs: CostTable):
        self.opts = resolve_options(spec.options)
        machine_mib = spec.machine_memory_mib or DEFAULT_MACHINE_MIB
        low, high = machine_memory_range(spec)
        if not low <= machine_mib <= high:
            raise ValueError(f"machine memory {machine_mib} MiB: need {low}..{high} MiB, room "
                             f"for the {spec.memory_mib} MiB domain plus 64 MiB for Xen")
        super().__init__(spec, costs, machine_mib * MIB)
        self.stats, self.cycles_by = _Tally(), _Tally()
        self._cost = dict(costs.cycles)
        self._bounce_costs = (self._cost["trap"], self._cost["pf_bounce"],
                              self._cost["pf_delivery"])
        n = spec.vcpus
        self.cur = 0
        self.crashed: str | None = None
        self.integrity: list[str] = []
        self.audit_state = HolderState()        # the audit's view of the holders
        self.base: list[int | None] = [None] * n      # guest_table (guest L3 mfn)
        self.up = [False] * n
        self.tlbtime = [0] * n
        self.gdt: list[list[int]] = [[] for _ in range(n)]
        self.vm_assist: set[int] = set()
        self.ptwr_enabled = False              # until VMASST_TYPE_writable_pagetables
        self.debug_audit = self.opts["debug_audit"]
        self.frames = FrameTable()
        self.frames.flush_stale = self._flush_stale
        self.pool = XenPool(self.frames)
        self.validator = Validator(self.frames, self.memory, DOMID_GUEST, self.charge_cur)
        nr_pages = spec.memory_mib * MIB >> 12
        self.layout = build_domain(self.memory, self.frames, self.pool, nr_pages, spec.seed,
                                   self.opts["kernel_image_kib"] >> 2)
        self.l3_cache = [self.pool.alloc() for _ in range(n)]
        self.l3_cache_idx = [0] * n
        area_cls = STRATEGIES[self.opts["strategy"]]
        self.area = area_cls(self, self.layout.m2p_l1s, self.layout.perdomain_l1)
        self.validator.hooks = self.area
        self.validator.allow_shared_xen_l2 = area_cls.allow_shared_xen_l2
        for cpu in self.cpus:
            cpu.cr0_wp = True       # Xen forces WP so ring 1 honours read-only PTEs
            cpu.cr4_pge = True      # Xen's own mappings are global; guest ones cannot be
            cpu.efer_nxe = True
        if not pin_bootstrap(self.frames, self.layout.l3):
            raise RuntimeError(f"bootstrap L3 does not validate: {self.validator.last_error}")
        if not self.frames.get_page_and_type(self.layout.l3, DOMID_GUEST, PGT.L3):
            raise RuntimeError("bootstrap L3: no base reference")
        self.base[0] = self.layout.l3
        self.up[0] = True
        self.validator.l3_below_4g_enforced = True
        self.load_base(0)
        self._reset_accounting()

    def _reset_accounting(self) -> None:
        self._cycles = [0] * len(self.cpus)
        self.stats.clear()
        self.cycles_by.clear()
        for cpu in self.cpus:
            cpu.restore_counters(type(cpu.counters())())

    def _restore_accounting(self, saved) -> None:
        """Engine.unaccounted restored Counter copies: back to tallies (same contents)."""
        self.stats, self.cycles_by = _Tally(self.stats), _Tally(self.cycles_by)

    # -- accounting helpers -----------------------------------------------------------------
    def charge(self, vcpu: int, event: str, count: int = 1) -> None:
        """Engine.charge without the CostTable lookup (the hypervisor's hot path)."""
        cycles = self._cost[event] * count
        self._cycles[vcpu] += cycles
        self.cycles_by[event] += cycles
        self.stats[event] += count

    def charge_cur(self, event: str, count: int = 1) -> None:
        if count:
            self.charge(self.cur, event, count)

    def boot_info(self) -> BootInfo:
        return BootInfo(abi=ABI.XEN_PV, vcpus=self.spec.vcpus,
                        nr_pages=self.layout.start_info.nr_pages, paging_on_at_entry=True,
                        hypervisor_virt_start=HYPERVISOR_VIRT_START, superpages=False,
                        shared_kernel_pmd=self.area.shared_kernel_pmd,
                        start_info=self.layout.start_info)

    def gauges(self) -> dict[str, int]:
        out = super().gauges()
        counts = {t: 0 for t in ("l1", "l2", "l3")}
        for mfn in self.frames.pt_frames:
            counts[self.frames.pages[mfn].type.name.lower()] += 1
        out.update({f"pv_pt_pages_{k}": v for k, v in counts.items()})
        out["pv_pt_pages"] = len(self.frames.pt_frames)
        return out

    # -- domain state -----------------------------------------------------------------------
    def crash(self, reason: str) -> GuestCrash:
        if self.crashed is None:
            self.crashed = reason
        return GuestCrash(f"domain crashed: {self.crashed}")

    def _alive(self, v: int) -> None:
        if self.crashed is not None:
            raise GuestCrash(f"domain crashed: {self.crashed}")
        if not self.up[v]:
            raise GuestCrash(f"VCPU {v} is not up (VCPUOP_initialise + VCPUOP_up first)")

    def xen_alloc(self) -> int:
        return self.pool.alloc()

    # -- TLB flushes and CR3 ----------------------------------------------------------------
    def _stamp(self, v: int) -> None:
        self.tlbtime[v] = self.frames.tick()

    def flush_vcpu(self, v: int, safety: bool = False) -> None:
        """Xen flushes VCPU v's TLB (an IPI if it is not the current VCPU). A flush the
        guest asked for is Xen's `local_flush_tlb`, a CR3 reload, which the K8 flush filter
        may keep; a flush Xen needs for its own invariants (type change) drops the entries
        whatever the filter says."""
        if v != self.cur:
            self.ipi(self.cur, v)
        self.charge(v, "tlb_flush")
        cpu = self.cpus[v]
        if safety or not cpu.flush_filter:
            cpu.flush_tlb(False)
            self._stamp(v)
        else:
            kept = cpu.filter_kept
            cpu.load_cr3(cpu.cr3)
            if cpu.filter_kept == kept:
                self._stamp(v)
        self.stats["pv_tlb_flushes"] += 1

    def xen_invlpg(self, v: int, va: int) -> None:
        self.charge(v, "invlpg")
        self.cpus[v].invlpg(va)

    def _flush_stale(self, info) -> None:
        """A frame changes type: flush the CPUs that may still cache translations of it."""
        for v in range(len(self.cpus)):
            if not self.up[v]:
                continue
            if self.tlbtime[v] <= info.stamp:        # FrameTable.need_flush
                self.flush_vcpu(v, safety=True)
                self.stats["pv_typechange_flush"] += 1
            else:
                self.stats["pv_typechange_flush_filtered"] += 1

    def l3_cache_cr3(self, v: int, l3: int) -> int:
        """make_cr3: a pgdir below 4 GiB is loaded as is; above, its 4 entries are copied
        into the VCPU's pae_l3_cache (double-buffered, below 4 GiB)."""
        if l3 < L3_LIMIT_MFN:
            return l3 << 12
        idx = self.l3_cache_idx[v] = 1 - self.l3_cache_idx[v]
        dst = (self.l3_cache[v] << 12) + 32 * idx
        for i in range(4):
            self.memory.write_u64(dst + 8 * i, self.memory.read_u64((l3 << 12) + 8 * i))
        self.stats["pv_l3_cache_copies"] += 1
        return dst

    def load_base(self, v: int) -> None:
        """write_ptbase: load VCPU v's CR3 for its guest base (strategy-dependent)."""
        cr3 = self.area.make_cr3(v, self.base[v])
        cpu = self.cpus[v]
        kept = cpu.filter_kept
        cpu.load_cr3(cr3)
        if cpu.filter_kept == kept:
            self._stamp(v)

    def pae_flush_pgd(self, l3: int) -> None:
        """An L3e of `l3` changed: every VCPU running it reloads CR3 (PDPTE registers)."""
        for v, b in enumerate(self.base):
            if b == l3 and self.up[v]:
                if v != self.cur:
                    self.ipi(self.cur, v)
                self.charge(v, "tlb_flush")
                self.load_base(v)

    def new_guest_cr3(self, v: int, mfn: int) -> bool:
        """MMUEXT_NEW_BASEPTR (3.0.3): on failure retry without the old base, then crash."""
        f = self.frames
        self.charge(v, "pv_new_baseptr")
        if not f.get_page_and_type(mfn, DOMID_GUEST, _L3):
            old, self.base[v] = self.base[v], None
            if old is not None:
                f.put_page_and_type(old)
            if not f.get_page_and_type(mfn, DOMID_GUEST, _L3):
                raise self.crash(f"VCPU {v}: fatal error installing new baseptr {mfn:#x}: "
                                 f"{self.validator.last_error or 'not an L3 of the domain'}")
        old, self.base[v] = self.base[v], mfn
        self.load_base(v)
        if old is not None:
            f.put_page_and_type(old)
        return True

    # -- guest memory access ----------------------------------------------------------------
    def _bounce(self, v: int, pf: PageFault) -> GuestPageFault:
        """trap + pf_bounce + pf_delivery (three charges in one)."""
        trap, bounce, delivery = self._bounce_costs
        self._cycles[v] += trap + bounce + delivery
        by, stats = self.cycles_by, self.stats
        by["trap"] += trap
        stats["trap"] += 1
        by["pf_bounce"] += bounce
        stats["pf_bounce"] += 1
        by["pf_delivery"] += delivery
        stats["pf_delivery"] += 1
        return GuestPageFault(pf.vaddr, pf.error_code)

    def _segment(self, v: int, va: int) -> None:
        self._alive(v)
        if va >= MACH2PHYS_VIRT_END:
            raise self.crash(f"VCPU {v}: #GP: access to {va:#010x} beyond the guest segment "
                             f"limit {MACH2PHYS_VIRT_END:#x} (Xen's area)")

    def read(self, vcpu: int, va: int, access: int = 0) -> int:
        if va >= MACH2PHYS_VIRT_END or self.crashed or not self.up[vcpu]:
            self._segment(vcpu, va)
        try:
            return self.cpus[vcpu].read_u64(va, access)
        except PageFault as pf:
            raise self._bounce(vcpu, pf) from None

    def write(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        if va >= MACH2PHYS_VIRT_END or self.crashed or not self.up[vcpu]:
            self._segment(vcpu, va)
        try:
            self.cpus[vcpu].write_u64(va, value, access)
        except PageFault as pf:
            if self.ptwr_enabled and ptwr.emulate(self, vcpu, va, value, 8, pf.error_code):
                self._after_op()
                return
            raise self._bounce(vcpu, pf) from None

    def write_u32(self, vcpu: int, va: int, value: int, access: int = 0) -> None:
        """A 4-byte store: half of a PTE (Linux PAE set_pte writes the high half, then the
        low); under writable page tables ptwr emulates it on its own trap, widened to 8
        bytes with the other half of the old entry (ptwr.py)."""
        if va >= MACH2PHYS_VIRT_END or self.crashed or not self.up[vcpu]:
            self._segment(vcpu, va)
        try:
            self.cpus[vcpu].write_u32(va, value, access)
        except PageFault as pf:
            if self.ptwr_enabled and ptwr.emulate(self, vcpu, va, value, 4, pf.error_code):
                self._after_op()
                return
            raise self._bounce(vcpu, pf) from None

    def translate(self, vcpu: int, va: int, access: int = 0) -> int:
        if va >= MACH2PHYS_VIRT_END or self.crashed or not self.up[vcpu]:
            self._segment(vcpu, va)
        try:
            return self.cpus[vcpu].translate(va, access)
        except PageFault as pf:
            raise self._bounce(vcpu, pf) from None

    # -- privileged operations from ring 1 ---------------------------------------------------
    def write_cr3(self, vcpu: int, cr3: int) -> None:
        self._alive(vcpu)
        self.charge(vcpu, "trap")
        self.cur = vcpu
        self.stats["pv_emulated_cr3"] += 1
        self.new_guest_cr3(vcpu, xen_cr3_to_pfn(cr3))
        self._after_op()

    def invlpg(self, vcpu: int, va: int) -> None:
        self._alive(vcpu)
        raise self.crash(f"VCPU {vcpu}: #GP: INVLPG {va:#x} is privileged in ring 1 and Xen "
                         f"does not emulate it (use MMUEXT_INVLPG_LOCAL)")

    def flush_tlb(self, vcpu: int, include_global: bool = False) -> None:
        self._alive(vcpu)
        if include_global:
            raise self.crash(f"VCPU {vcpu}: #GP: a global flush needs a CR4 write, refused "
                             f"in ring 1 (use MMUEXT_TLB_FLUSH_LOCAL)")
        self.charge(vcpu, "trap")
        self.cur = vcpu
        self.new_guest_cr3(vcpu, self.base[vcpu])

    def set_control(self, vcpu: int, *, pg=None, wp=None, pge=None, nxe=None) -> None:
        self._alive(vcpu)
        cpu = self.cpus[vcpu]
        self.charge(vcpu, "trap")
        for value, attr in ((pg, "cr0_pg"), (wp, "cr0_wp"), (pge, "cr4_pge"),
                            (nxe, "efer_nxe")):
            if value is not None and bool(value) != getattr(cpu, attr):
                raise self.crash(f"VCPU {vcpu}: #GP: {attr} <- {value} refused: Xen owns "
                                 f"CR0/CR4/EFER of a PV guest")

    # -- hypercalls ---------------------------------------------------------------------------
    def hypercall(self, vcpu: int, nr: int, *args) -> int:
        if self.crashed is not None or not self.up[vcpu]:
            self._alive(vcpu)
        self.cur = vcpu
        cost = self._cost["hypercall"]                 # charge(vcpu, "hypercall"), inline
        self._cycles[vcpu] += cost
        self.cycles_by["hypercall"] += cost
        self.stats["hypercall"] += 1
        try:
            hit = hypercalls.HANDLERS.get(nr)           # hypercalls.dispatch, inline
            if hit is None:
                rc = hypercalls.ENOSYS
            elif len(args) > hit[1]:
                rc = hypercalls.EINVAL
            else:
                rc = hit[0](self, vcpu, *args)
        except RefcountCorruption as e:
            self.integrity.append(f"refcount corruption: {e}")
            raise self.crash(str(e)) from None
        if self.debug_audit:
            self._after_op()
        return rc

    def _after_op(self) -> None:
        if self.debug_audit:
            bad = self.audit()
            if bad:
                raise AuditFailure(bad)

    def audit(self, full: bool = False) -> list[str]:
        return audit_domain(self, full)


__all__ = ["PVEngine", "OPTIONS", "DEFAULTS", "KNOWN_BROKEN"]
