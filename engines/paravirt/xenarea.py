"""Xen's private area at 0xF5800000-0xFFFFFFFF in every PV-PAE address space, and the four
answers of the seed post to the linear-map question (reference/xen-pv.md §1.5, §3;
seed-xen-devel-post.txt). Follows Xen 3.0.3 `create_pae_xen_mappings`, `make_cr3`/
`pae_l3_cache` and `pae_flush_pgd` (`xen/arch/x86/mm.c`, `domain.c`).

The Xen slots (428-511) of an L2 flagged PGT_pae_xen_l2 hold: the read-only M2P at
0xF5800000 (Xen L1s, user-readable), the per-domain L1 at 0xFE800000, Xen's heap as 2 MiB
global pages at 0xFF000000, and 4 linear page-table slots at 0xFD800000 (slot i maps the L2
in L3 slot i as if it were an L1, so the L1e of `va` sits at 0xFD800000 + (va >> 12) * 8).
Xen reads and writes guest L1es through that linear map **with the VCPU's simulated MMU**,
TLB included, so a wrong or stale linear mapping has real consequences.

Strategies (option numbers of the seed post):
- `per-pagetable` (#2, what Xen did): each L3 has its own slot-3 L2 (type count exactly 1)
  whose linear slots are written when the L3 is validated or an L3e changes.
- `shared` (#1): one kernel L2 may sit in every L3; its linear slots are rewritten for the
  new L3 on every NEW_BASEPTR. With two VCPUs on different L3s one of them runs with linear
  slots that point at the other's tables: the audit's per-VCPU check (and the guest's data)
  sees it. It is not prevented here: that is the design being raced.
- `shared-percpu` (#1 made SMP-safe): the guest's kernel L2 is shared and carries no linear
  slots; each VCPU runs a Xen-owned copy of the L3 (slots 0-2 copied at NEW_BASEPTR) whose
  slot 3 is a per-VCPU copy of the kernel L2 (kept coherent on every kernel L2 update) with
  that VCPU's linear slots.
- `walk` (#3): no linear slots; Xen finds an L1e by a software walk from the VCPU's base,
  charged per entry read (`pv_soft_walk_ref`).

Linear-map staleness (the XSA-286 lesson): after an L2e changes, Xen invalidates the linear
page of that L2e on the VCPU doing the update and queues the invalidation for the other
VCPUs running the same L3, applied before their next linear access.
"""
from __future__ import annotations

from engines.hw import PageFault

from .frames import DOMID_XEN, PGT, PageInfo
from .validate import FIRST_XEN_SLOT, P, PADDR_MASK, entry_mfn

HYPERVISOR_VIRT_START = 0xF5800000
LINEAR_PT_VIRT_START = 0xFD800000
PERDOMAIN_VIRT_START = 0xFE800000
DIRECTMAP_VIRT_START = 0xFF000000
LINEAR_SLOT = (LINEAR_PT_VIRT_START >> 21) & 511      # 492
PERDOMAIN_SLOT = (PERDOMAIN_VIRT_START >> 21) & 511   # 500
DIRECTMAP_SLOT = (DIRECTMAP_VIRT_START >> 21) & 511   # 504
XEN_HEAP_SLOTS = 6                                    # 12 MiB
PAGE_HYPERVISOR = 0x63                                # P|RW|A|D
AD_BITS = 0x60


def linear_l1e_va(va: int) -> int:
    """Where the linear map shows the L1e of `va`."""
    return LINEAR_PT_VIRT_START + ((va & 0xFFFFFFFF) >> 12) * 8


class XenArea:
    """The `per-pagetable` strategy; the others subclass it. `eng` is the PVEngine."""

    name = "per-pagetable"
    shared_kernel_pmd = False
    allow_shared_xen_l2 = False

    def __init__(self, eng, m2p_l1s: list[int], perdomain_l1: int):
        self.eng = eng
        self.mem = eng.memory
        slots: dict[int, int] = {}
        for i, mfn in enumerate(m2p_l1s):
            slots[FIRST_XEN_SLOT + i] = (mfn << 12) | 0x67          # P|RW|US|A|D
        slots[PERDOMAIN_SLOT] = (perdomain_l1 << 12) | PAGE_HYPERVISOR
        for i in range(XEN_HEAP_SLOTS):
            slots[DIRECTMAP_SLOT + i] = (i << 21) | PAGE_HYPERVISOR | 0x180   # PS|G
        self.static_slots = slots
        self.static_words = [slots.get(s, 0) for s in range(FIRST_XEN_SLOT, 512)]
        self.pending: list[set[int]] = [set() for _ in eng.cpus]   # queued linear invlpgs

    # -- Xen slot contents ------------------------------------------------------------------
    def expected_xen_slots(self, linear: list[int] | None) -> dict[int, int]:
        """Slots 428-511 as they must read (A/D masked off): static + linear slots."""
        out = {s: e & ~AD_BITS for s, e in self.static_slots.items()}
        for i, mfn in enumerate(linear or ()):
            out[LINEAR_SLOT + i] = (mfn << 12) | (PAGE_HYPERVISOR & ~AD_BITS)
        return out

    def l3_l2s(self, l3: int) -> list[int]:
        return [entry_mfn(self.mem.read_u64((l3 << 12) + 8 * i)) for i in range(4)]

    def write_static_slots(self, l2: int) -> None:
        """Slots 428-511 that differ from the static contents are rewritten (in order)."""
        words = self.mem.frame_words(l2)[FIRST_XEN_SLOT:]
        if words == self.static_words:
            return
        base = l2 << 12
        for s, (have, want) in enumerate(zip(words, self.static_words), FIRST_XEN_SLOT):
            if have != want:
                self.mem.write_u64(base + 8 * s, want)

    def write_linear_slots(self, l2: int, l2s: list[int]) -> None:
        base = l2 << 12
        for i, mfn in enumerate(l2s):
            self.mem.write_u64(base + 8 * (LINEAR_SLOT + i), (mfn << 12) | PAGE_HYPERVISOR)
        self.eng.charge_cur("pv_linear_slot", len(l2s))

    # -- validator hooks --------------------------------------------------------------------
    def l2_validated(self, info: PageInfo) -> None:
        self.write_static_slots(info.mfn)

    def l3_validated(self, info: PageInfo) -> None:
        l2s = self.l3_l2s(info.mfn)
        self.write_linear_slots(l2s[3], l2s)

    def table_freed(self, info: PageInfo) -> None:
        pass

    def vcpus_running(self, l3: int) -> list[int]:
        return [v for v, b in enumerate(self.eng.base) if b == l3]

    def l2_entry_changed(self, l2: int, idx: int, old: int, new: int) -> None:
        if (old ^ new) & (PADDR_MASK | P | 0x2):    # what the linear map translates
            self._linear_stale(l2, idx)

    def _linear_stale(self, l2: int, idx: int) -> None:
        cur = self.eng.cur
        for v, b in enumerate(self.eng.base):
            if b is None or not self.eng.up[v]:
                continue
            for i, m in enumerate(self.l3_l2s(b)):
                if m == l2:
                    lva = LINEAR_PT_VIRT_START + (i << 21) + (idx << 12)
                    if v == cur:
                        self.eng.xen_invlpg(v, lva)
                    else:
                        self.pending[v].add(lva)

    def l3_entry_changed(self, l3: int, idx: int) -> None:
        l2s = self.l3_l2s(l3)
        self.write_linear_slots(l2s[3], l2s)
        self.eng.pae_flush_pgd(l3)

    # -- CR3 --------------------------------------------------------------------------------
    def make_cr3(self, v: int, l3: int) -> int:
        """The machine address the VCPU's CR3 gets for guest base `l3` (pae_l3_cache for
        pgdirs above 4 GiB)."""
        return self.eng.l3_cache_cr3(v, l3)

    # -- how Xen reaches a guest L1e ----------------------------------------------------------
    def l1e_access(self, v: int, va: int):
        """(old value, where, addr) for the L1e that maps `va` on VCPU `v`, read through
        the linear map, to be stored by `where.write_u64(addr, new)` (VCPU v's CPU, the
        linear address); None when no L1 maps it (the linear access faults)."""
        cpu = self.eng.cpus[v]
        pend = self.pending[v]
        if pend:
            for lva in sorted(pend):
                self.eng.xen_invlpg(v, lva)
            pend.clear()
        lva = LINEAR_PT_VIRT_START + ((va & 0xFFFFFFFF) >> 12) * 8     # linear_l1e_va(va)
        try:
            return cpu.read_u64(lva), cpu, lva
        except PageFault:
            return None

    # -- audit --------------------------------------------------------------------------------
    def audit(self) -> list[str]:
        out = []
        frames = self.eng.frames
        owners: dict[int, list[int]] = {}
        for mfn in frames.pt_frames:
            info = frames.pages[mfn]
            if info.type == PGT.L3:
                owners.setdefault(self.l3_l2s(mfn)[3], []).append(mfn)
        for mfn in frames.pt_frames:
            info = frames.pages[mfn]
            if info.type != PGT.L2 or not info.xen_l2:
                continue
            out += self._audit_l2(mfn, owners.get(mfn, []))
        return out

    def _audit_l2(self, l2: int, l3s: list[int]) -> list[str]:
        if len(l3s) != 1:
            return [f"I4: Xen L2 mfn {l2:#x} sits in {len(l3s)} L3s (must be exactly 1)"]
        return self.check_slots(l2, self.l3_l2s(l3s[0]), f"of L3 {l3s[0]:#x}")

    def check_slots(self, l2: int, linear: list[int] | None, whose: str) -> list[str]:
        words = self.mem.frame_words(l2)
        want = self.expected_xen_slots(linear)
        bad = [s for s in range(FIRST_XEN_SLOT, 512) if words[s] & ~AD_BITS != want.get(s, 0)]
        if not bad:
            return []
        s = bad[0]
        return [f"I4: Xen slot {s} of L2 mfn {l2:#x} {whose} reads {words[s]:#x}, must be "
                f"{want.get(s, 0):#x} ({len(bad)} slots wrong)"]


class SharedXenArea(XenArea):
    """`shared`: one kernel L2 in every L3, linear slots rewritten at every NEW_BASEPTR."""

    name = "shared"
    shared_kernel_pmd = True
    allow_shared_xen_l2 = True

    def l3_validated(self, info: PageInfo) -> None:
        pass                                   # the linear slots follow the running L3

    def l3_entry_changed(self, l3: int, idx: int) -> None:
        if self.eng.base[self.eng.cur] == l3:
            l2s = self.l3_l2s(l3)
            self.write_linear_slots(l2s[3], l2s)
        self.eng.pae_flush_pgd(l3)

    def make_cr3(self, v: int, l3: int) -> int:
        l2s = self.l3_l2s(l3)
        self.write_linear_slots(l2s[3], l2s)
        return self.eng.l3_cache_cr3(v, l3)

    def audit(self) -> list[str]:
        out = []
        for mfn in self.eng.frames.pt_frames:
            info = self.eng.frames.pages[mfn]
            if info.type == PGT.L2 and info.xen_l2:
                words = self.mem.frame_words(mfn)
                static = {s: e for s, e in self.expected_xen_slots(None).items()}
                for s in range(FIRST_XEN_SLOT, 512):
                    if LINEAR_SLOT <= s < LINEAR_SLOT + 4:
                        continue
                    if words[s] & ~AD_BITS != static.get(s, 0):
                        out.append(f"I4: Xen slot {s} of L2 mfn {mfn:#x} reads {words[s]:#x}")
                        break
        for v, b in enumerate(self.eng.base):
            if b is None or not self.eng.up[v]:
                continue
            l2s = self.l3_l2s(b)
            words = self.mem.frame_words(l2s[3])
            got = [entry_mfn(words[LINEAR_SLOT + i]) for i in range(4)]
            if got != l2s:
                out.append(f"I4: VCPU {v} runs L3 {b:#x} but the linear slots of its shared "
                           f"kernel L2 {l2s[3]:#x} point at L2s "
                           f"{', '.join(hex(m) for m in got)} (another page table's)")
        return out


class PerCPUXenArea(XenArea):
    """`shared-percpu`: per-VCPU Xen-owned copies of the L3 and of the kernel L2."""

    name = "shared-percpu"
    shared_kernel_pmd = True
    allow_shared_xen_l2 = True

    def __init__(self, eng, m2p_l1s, perdomain_l1):
        super().__init__(eng, m2p_l1s, perdomain_l1)
        self.pc_l3 = [eng.xen_alloc() for _ in eng.cpus]
        self.pc_l2 = [eng.xen_alloc() for _ in eng.cpus]
        self.mirrors: list[int | None] = [None] * len(eng.cpus)   # guest kernel L2 copied
        for l2 in self.pc_l2:
            self.write_static_slots(l2)

    def l3_validated(self, info: PageInfo) -> None:
        pass

    def _sync_copy(self, v: int, kl2: int) -> None:
        src, dst = kl2 << 12, self.pc_l2[v] << 12
        n = 0
        for i in range(FIRST_XEN_SLOT):
            e = self.mem.read_u64(src + 8 * i)
            if self.mem.read_u64(dst + 8 * i) != e:
                self.mem.write_u64(dst + 8 * i, e)
                n += 1
        self.mirrors[v] = kl2
        self.eng.charge_cur("pv_linear_slot", n)

    def l2_entry_changed(self, l2: int, idx: int, old: int, new: int) -> None:
        super().l2_entry_changed(l2, idx, old, new)
        info = self.eng.frames.pages[l2]
        if info.xen_l2 and idx < FIRST_XEN_SLOT:
            e = self.mem.read_u64((l2 << 12) + 8 * idx)
            for v, src in enumerate(self.mirrors):
                if src == l2:
                    self.mem.write_u64((self.pc_l2[v] << 12) + 8 * idx, e)
                    self.eng.charge_cur("pv_linear_slot", 1)

    def l3_entry_changed(self, l3: int, idx: int) -> None:
        for v in self.vcpus_running(l3):
            self._load_copy(v, l3)
        self.eng.pae_flush_pgd(l3)

    def _load_copy(self, v: int, l3: int) -> None:
        l2s = self.l3_l2s(l3)
        base = self.pc_l3[v] << 12
        for i in range(3):
            self.mem.write_u64(base + 8 * i, self.mem.read_u64((l3 << 12) + 8 * i))
        self.mem.write_u64(base + 24, (self.pc_l2[v] << 12) | P)
        if self.mirrors[v] != l2s[3]:
            self._sync_copy(v, l2s[3])
        self.write_linear_slots(self.pc_l2[v], l2s[:3] + [self.pc_l2[v]])

    def make_cr3(self, v: int, l3: int) -> int:
        self._load_copy(v, l3)
        return self.pc_l3[v] << 12

    def table_freed(self, info: PageInfo) -> None:
        for v, src in enumerate(self.mirrors):
            if src == info.mfn and self.eng.base[v] is None:
                self.mirrors[v] = None

    def audit(self) -> list[str]:
        out = []
        for mfn in self.eng.frames.pt_frames:
            info = self.eng.frames.pages[mfn]
            if info.type == PGT.L2 and info.xen_l2:
                out += self.check_slots(mfn, None, "(guest kernel L2)")
        for v, b in enumerate(self.eng.base):
            if b is None or not self.eng.up[v]:
                continue
            l2s = self.l3_l2s(b)
            pc3 = [self.mem.read_u64((self.pc_l3[v] << 12) + 8 * i) for i in range(4)]
            want3 = [self.mem.read_u64((b << 12) + 8 * i) for i in range(3)]
            if pc3[:3] != want3 or entry_mfn(pc3[3]) != self.pc_l2[v]:
                out.append(f"I5: VCPU {v}'s L3 copy differs from its base L3 {b:#x}")
            src = self.mem.frame_words(l2s[3])[:FIRST_XEN_SLOT]
            dst = self.mem.frame_words(self.pc_l2[v])[:FIRST_XEN_SLOT]
            if [e & ~AD_BITS for e in src] != [e & ~AD_BITS for e in dst]:
                out.append(f"I5: VCPU {v}'s kernel L2 copy differs from guest L2 {l2s[3]:#x}")
            out += self.check_slots(self.pc_l2[v], l2s[:3] + [self.pc_l2[v]],
                                    f"(VCPU {v}'s copy)")
        return out


class WalkXenArea(XenArea):
    """`walk`: no linear slots; software walks from the VCPU's base."""

    name = "walk"
    shared_kernel_pmd = True
    allow_shared_xen_l2 = True

    def l3_validated(self, info: PageInfo) -> None:
        pass

    def l2_entry_changed(self, l2: int, idx: int, old: int, new: int) -> None:
        pass

    def l3_entry_changed(self, l3: int, idx: int) -> None:
        self.eng.pae_flush_pgd(l3)

    def l1e_access(self, v: int, va: int):
        b = self.eng.base[v]
        if b is None:
            return None
        read = self.mem.read_u64
        l3e = read((b << 12) + 8 * (va >> 30))
        if l3e & P:
            l2e = read((l3e & PADDR_MASK) + 8 * ((va >> 21) & 511))   # entry_mfn(l3e) << 12
            refs = 3 if l2e & P else 2
        else:
            l2e, refs = 0, 1
        self.eng.charge(self.eng.cur, "pv_soft_walk_ref", refs)        # charge_cur
        if not l2e & P or ((va >> 21) & 511 >= FIRST_XEN_SLOT and va >> 30 == 3):
            return None
        pa = (l2e & PADDR_MASK) + 8 * ((va >> 12) & 511)
        return read(pa), self.mem, pa

    def audit(self) -> list[str]:
        out = []
        for mfn in self.eng.frames.pt_frames:
            info = self.eng.frames.pages[mfn]
            if info.type == PGT.L2 and info.xen_l2:
                out += self.check_slots(mfn, None, "(walk: no linear slots)")
        return out


STRATEGIES = {cls.name: cls for cls in (XenArea, SharedXenArea, PerCPUXenArea, WalkXenArea)}
XEN_OWNER = DOMID_XEN
