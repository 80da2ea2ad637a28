"""audit(): the shadow engine's invariants, checked from the shadow pages themselves.

After Xen's `sh_audit_*` functions (`xen/arch/x86/mm/shadow/multi.c`, SHADOW_AUDIT) and the
invariants of reference/xen-pv.md §4 as they apply to shadows (shadow.md intro):
- coherence (I5): every present shadow entry equals what propagation from the current
  guest entry gives (for the NXE setting of some VCPU), so every shadow translation is the
  guest walk plus the P2M, with A/D emulation; entries may be absent (filled lazily). An
  out-of-sync L1 is exempt until its resync;
- each VCPU's shadow L3 names the shadows of the L2s in its gl3e snapshot (slot 3 as l2h),
  and the hardware's CR3 and PDPTE registers hold that shadow L3;
- no writable shadow mapping or TLB entry of a shadowed page-table frame (I1), except the
  recorded writable mappings of an out-of-sync page;
- every frame a guest-derived shadow entry maps belongs to the domain's P2M; every shadow
  L2 entry points at a live L1/fl1 shadow; TLB entries map domain frames or Xen's RO_MPT;
- Xen's l2h slots are intact (I4);
- references are conserved (I2): per-frame mapping and writable-mapping counts, shadow
  reference counts, the pool's free and used pages.
This is a mixin of `ShadowEngine`.
"""
from __future__ import annotations

from .modes import F_P, F_RW
from .p2m import XEN_FIRST_SLOT
from .pool import SH_FL1, SH_L1, SH_L2H, TOP_TYPES

_UNPAGED_PDE = 0xE7       # P|RW|US|A|D|PS


class ShadowAudit:
    """Mixin: ShadowEngine.audit()."""

    def audit(self) -> list[str]:
        bad: list[str] = []
        pool = self.pool
        if len(pool.free) + len(pool.by_smfn) != pool.size:
            bad.append(f"pool: {len(pool.free)} free + {len(pool.by_smfn)} used != "
                       f"{pool.size} pages")
        mapcount: dict[int, int] = {}
        wrmaps: dict[int, set] = {}
        nxes = {vs.nxe for vs in self.vs}
        for sp in list(pool.by_smfn.values()):
            if sp.type in (SH_L1, SH_FL1):
                self._audit_l1(sp, nxes, mapcount, wrmaps, bad)
            else:
                self._audit_l2(sp, nxes, bad)
        for sp in self.unpaged:
            self._audit_l2(sp, nxes, bad)
        if mapcount != self.mapcount:
            bad.append("frame mapping counts differ from a recount of the shadow L1s")
        if wrmaps != self.wrmaps:
            bad.append("writable-mapping records differ from a recount of the shadow L1s")
        for gfn, rec in self.oos_pages.items():
            shadows = pool.by_gfn.get(gfn, [])
            if len(shadows) != 1 or not shadows[0].oos:
                bad.append(f"out-of-sync gfn {gfn:#x} is not a single out-of-sync L1 shadow")
        for v in range(len(self.vs)):
            self._audit_vcpu(v, bad)
        return bad

    def _audit_l1(self, sp, nxes, mapcount, wrmaps, bad) -> None:
        guest = self.memory.frame_words(self._p2m[sp.gfn]) if sp.type == SH_L1 else None
        m2p, amask = self.p2m.m2p, self._amask
        nxe0 = next(iter(nxes))
        for idx, e in self._nonzero(sp.smfn):
            mfn = (e & amask) >> 12
            gfn = m2p.get(mfn)
            if gfn is None:
                bad.append(f"{sp!r} entry {idx} maps mfn {mfn:#x}, not in the domain's P2M")
                continue
            mapcount[mfn] = mapcount.get(mfn, 0) + 1
            if e & F_RW:
                wrmaps.setdefault(mfn, set()).add((sp.smfn, idx))
                if not self._may_write(gfn, sp.smfn, idx):
                    bad.append(f"{sp!r} entry {idx} maps page-table gfn {gfn:#x} writable")
            if sp.oos:
                continue
            # (the first candidate alone usually matches: the set only when it does not)
            w = (self._fl1e(sp, idx) if guest is None
                 else self._sl1e_from_guest(guest[idx], nxe0, sp, idx))
            if e == w or e | F_RW == w:
                continue
            if guest is None:
                want = {w}
            else:
                want = {self._sl1e_from_guest(guest[idx], nxe, sp, idx) for nxe in nxes}
            if e not in want and e | F_RW not in want:    # left read-only by an old promotion
                bad.append(f"{sp!r} entry {idx} = {e:#018x} is incoherent with the guest "
                           f"(expected one of {', '.join(f'{w:#x}' for w in want)})")
        if sp.refs != len(sp.up):
            bad.append(f"{sp!r}: {sp.refs} references but {len(sp.up)} parent entries")

    def _audit_l2(self, sp, nxes, bad) -> None:
        unpaged = sp.type == "l2u"
        gbase = -1 if unpaged else self.p2m.p2m[sp.gfn] << 12
        for idx, e in self._nonzero(sp.smfn):
            if sp.type == SH_L2H and idx >= XEN_FIRST_SLOT:
                continue
            child = self.pool.by_smfn.get((e & self._amask) >> 12)
            if child is None or child.type not in (SH_L1, SH_FL1) or (sp, idx) not in child.up:
                bad.append(f"{sp!r} entry {idx} = {e:#018x} does not point at a live L1 "
                           f"shadow that records it")
                continue
            if unpaged:
                g = (sp.gfn << 30) | (idx << 21) | _UNPAGED_PDE
            else:
                g = self.memory.read_u64(gbase | (idx << 3))
            want = {self._sl2e_from_guest(g, nxe, 0, False) for nxe in nxes}
            if e not in want:
                bad.append(f"{sp!r} entry {idx} = {e:#018x} is incoherent with guest entry "
                           f"{g:#018x}")
        if sp.type == SH_L2H:
            bad.extend(self.xen.intact(sp.smfn))
        if sp.type in TOP_TYPES and sp.refs != len(sp.users) + sp.pinned:
            bad.append(f"{sp!r}: {sp.refs} references but {len(sp.users)} users, "
                       f"pinned={sp.pinned}")

    def _audit_vcpu(self, v: int, bad: list[str]) -> None:
        vs, cpu = self.vs[v], self.cpus[v]
        base = vs.sl3_mfn << 12
        sl3 = tuple(self.memory.read_u64(base + 8 * i) for i in range(4))
        for i, (e, sp) in enumerate(zip(sl3, vs.tops)):
            if (sp is None) != (not e & F_P) or (sp is not None and e >> 12 != sp.smfn):
                bad.append(f"vcpu {v} shadow L3 slot {i} = {e:#x} does not name {sp!r}")
            if vs.pg and sp is not None:
                g = vs.gl3e[i]
                want = (SH_L2H if i == 3 else "l2")
                if sp.key != ((g & self._amask) >> 12, want):
                    bad.append(f"vcpu {v} slot {i}: {sp!r} is not the {want} shadow of "
                               f"gl3e {g:#x}")
        if cpu.cr3 != base or cpu.pdptes != sl3:
            bad.append(f"vcpu {v}: hardware cr3 {cpu.cr3:#x} / PDPTEs do not hold its "
                       f"shadow L3 at {base:#x}")
        for t in cpu.tlb_entries():
            mfn = t.pa >> 12
            gfn = self.p2m.m2p.get(mfn)
            if gfn is None:
                if mfn not in self.xen.p2m_table:
                    bad.append(f"vcpu {v} TLB maps va {t.va:#x} to mfn {mfn:#x}, outside "
                               f"the domain")
            elif t.writable and t.dirty and gfn in self.pool.by_gfn \
                    and gfn not in self.oos_pages:
                bad.append(f"vcpu {v} TLB holds a writable translation of page-table gfn "
                           f"{gfn:#x} at va {t.va:#x}")
