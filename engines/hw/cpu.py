"""One logical PAE processor: CR0.WP/PG, CR3 and the four PDPTE registers, CR4.PGE, EFER.NXE,
the page walker, a per-CPU TLB, an optional K8 TLB flush filter, and event counters.

Follows Intel SDM Vol. 3A §4.4 (PAE paging), §4.6 (rights), §4.7 (error code), §4.8 (A/D),
§4.10 (TLBs and invalidation); where the SDM allows several behaviours this implements the
"implement" column of reference/pae.md §9:
- a non-leaf PDE used to reach a PTE gets A even when the access then faults; a leaf (PTE or
  PS=1 PDE) is written only on success; D only on a successful write; PDPTEs are never written;
- reserved bits of a PDPTE with P=0 are not checked (no #GP);
- when cached rights forbid an access (R/W 0->1 without invalidation, or a write through an
  entry cached clean) the CPU re-walks instead of raising a spurious #PF.

Modelling choices (documented, deterministic):
- **TLB.** One unified TLB (instruction and data translations share it) with two fixed-capacity
  parts, 4 KiB and 2 MiB, sized by `TLBConfig`; the default is K8-like: 32 L1 + 512 L2 4 KiB
  entries (544) and 8 2 MiB entries. Replacement is FIFO (the oldest-inserted entry goes);
  a refill of a present key re-inserts it as youngest. There is no paging-structure cache:
  every miss walks from the PDPTE registers (Intel reads 2 entries per PAE miss, costs.md §1).
  An entry caches the frame, the combined R/W, U/S and XD, the leaf's D and G. It is stored
  as one flat tuple: items 0..31 say whether the entry may serve an access with those access
  bits (W=2, U=4, FETCH=16) under the current CR0.WP, item 32 is the frame base XOR the page's
  linear base, item 33 the G flag and item 34 the rights. A hit is then one dict lookup, one
  tuple index and one XOR (`vaddr ^ e[32]` is the physical address), the cheapest form found
  in CPython 3.11 (benchmarks/bench_hw.py). A change of CR0.WP rewrites the cached entries'
  ok items from their rights; it drops nothing.
- **#PF delivery.** The walker returns the physical address, or the bitwise complement of
  the error code when the access faults (the fault already counted and the page's TLB
  entries dropped, SDM §4.10.4.1). `translate` and the accessors built on it raise
  `PageFault(vaddr, code)` from that; `try_translate` hands the complement back instead,
  for a hypervisor that intercepts every #PF and would only catch the exception (a VM exit
  carries the same vector, error code and CR2 as values). Either way the hardware did the
  same thing.
- **CR0.PG.** The CPU powers up with paging *on* (PAE mode, all PDPTE registers not
  present) so the public contract is PAE translation; `cr0_pg = False` gives the identity
  translation of the pre-paging boot. Changing PG, PGE or NXE flushes the whole TLB; changing
  PG or PGE also reloads the PDPTE registers from the current CR3, as MOV to CR0/CR4 does
  (pae.md §2). EFER.NXE changes do not architecturally flush, but entries cached under the
  other NXE regime may now have reserved bits, so the model drops them.
- **K8 TLB flush filter** (off by default, as Linux and Xen set HWCR.FFDIS; costs.md §1).
  While on, every fill registers the 64-byte lines of the PDPTE, PDE and PTE it was loaded
  from with `PhysicalMemory.watch`. A software store to any watched line disarms the filter.
  A `load_cr3` while armed keeps every cached translation (`filter_kept`); while disarmed it
  flushes the non-global entries and re-arms. Entries are tagged with the root (the PDPT
  address) they were loaded under, so after a switch they serve only that root again;
  global entries are re-tagged to the current root at each switch. Limits: the filter has no
  capacity limit of its own (the real one tracks a bounded number of blocks), the walker's
  own A/D updates never disarm it (otherwise every fill would), and there are no errata.
"""
from __future__ import annotations

from dataclasses import fields
from itertools import compress
from operator import itemgetter

from .arch import (A_FETCH, A_USER, A_WRITE, F_A, F_D, F_G, F_PS, F_XD,
                   LARGE_PAGE_SIZE, PAGE_SIZE, GeneralProtection, PageFault,
                   LARGE_PDE_EXTRA_RESERVED, addr_mask, pde_pte_reserved, pdpte_reserved)
from .memory import PhysicalMemory
from .records import CPUCounters, TLBConfig, TLBEntry

_ACCESS_KINDS = (0, A_WRITE, A_USER, A_WRITE | A_USER, A_FETCH, A_FETCH | A_USER)


def _ok_bitmap(rights: int, wp: bool) -> int:
    """Bitmap over access bits of the accesses a cached translation with `rights`
    (W=1, U=2, NX=4, D=8) may serve while CR0.WP = `wp`."""
    writable, user, nx, dirty = rights & 1, rights & 2, rights & 4, rights & 8
    bits = 0
    for acc in _ACCESS_KINDS:
        if acc & A_USER and not user:
            continue
        if acc & A_WRITE and (not dirty or (not writable and (acc & A_USER or wp))):
            continue
        if acc & A_FETCH and nx:
            continue
        bits |= 1 << acc
    return bits


def _ok_items(rights: int, wp: bool) -> tuple[bool, ...]:
    """Items 0..31 of a TLB entry: item `access` is True when the entry may serve it."""
    bits = _ok_bitmap(rights, wp)
    return tuple(bool(bits >> acc & 1) for acc in range(32))


# _OK[wp][rights]: the ok items of an entry with `rights` under CR0.WP = wp
_OK = (tuple(_ok_items(r, False) for r in range(16)), tuple(_ok_items(r, True) for r in range(16)))
# index of the frame-base-XOR-linear-base, G and rights items of a TLB entry (not used on the
# hot paths, which index with the literal 32)
_DELTA, _GLOBAL, _RIGHTS = 32, 33, 34
_global_item = itemgetter(_GLOBAL)


_COUNTER_NAMES = tuple(f.name for f in fields(CPUCounters))
# CPU attribute holding each counter ("invlpg" is also the method's name)
_COUNTER_SLOTS = tuple("invlpg_count" if n == "invlpg" else n for n in _COUNTER_NAMES)


class CPU:
    """A PAE processor sharing `memory` with the other CPUs of its machine.

    A TLB entry is a flat tuple: 32 ok flags indexed by access bits (for the current CR0.WP),
    then frame base XOR linear base, global, rights (rights = W | U<<1 | NX<<2 | D<<3);
    `_t4` is keyed by va>>12 and `_t2` by va>>21.
    With the flush filter on, each root (PDPT address) has its own pair of dicts and a
    FIFO over (root, key) enforces the shared capacity.
    """

    __slots__ = ("memory", "maxphyaddr", "tlb_config", "_frames", "_memsize", "_amask",
                 "_rsvd", "_rsvd_large", "_pdpte_rsvd", "_wp", "_pg", "_pge", "_nxe", "_ok",
                 "_cr3", "_pdptes", "_t4", "_t2", "_filter", "_armed", "_root", "_roots",
                 "_fifo4", "_fifo2", "_watched", "_disarm_cb", "_cap4", "_cap2",
                 "_gmay") + _COUNTER_SLOTS

    def __init__(self, memory: PhysicalMemory, *, maxphyaddr: int = 36,
                 tlb: TLBConfig = TLBConfig(), flush_filter: bool = False):
        if not 32 <= maxphyaddr <= 52:
            raise ValueError(f"maxphyaddr {maxphyaddr} outside 32..52")
        self.memory = memory
        self.maxphyaddr = maxphyaddr
        self.tlb_config = tlb
        self._cap4, self._cap2 = tlb.entries_4k, tlb.entries_2m
        self._frames = memory._frames
        self._memsize = memory.size
        self._amask = addr_mask(maxphyaddr)
        self._pdpte_rsvd = pdpte_reserved(maxphyaddr)
        self._wp = self._pge = self._nxe = False
        self._pg = True
        self._ok = _OK[0]
        self._set_reserved()
        self._cr3 = 0
        self._pdptes = (0, 0, 0, 0)
        self._t4: dict[int, tuple] = {}
        self._t2: dict[int, tuple] = {}
        self._gmay = False           # a global entry may be cached (none since the last clear)
        self._filter = False
        self._armed = True
        self._root = 0
        self._roots: dict[int, tuple[dict, dict]] = {}
        self._fifo4: dict[tuple[int, int], None] = {}
        self._fifo2: dict[tuple[int, int], None] = {}
        self._watched: set[int] = set()
        self._disarm_cb = self._disarm
        for name in _COUNTER_SLOTS:
            setattr(self, name, 0)
        self.flush_filter = flush_filter

    # -- control registers ------------------------------------------------------------------
    def _set_reserved(self) -> None:
        self._rsvd = pde_pte_reserved(self.maxphyaddr, self._nxe)
        self._rsvd_large = self._rsvd | LARGE_PDE_EXTRA_RESERVED

    def _tables(self):
        if self._filter:
            return [t for pair in self._roots.values() for t in pair]
        return [self._t4, self._t2]

    @property
    def cr0_wp(self) -> bool:
        return self._wp

    @cr0_wp.setter
    def cr0_wp(self, value: bool) -> None:
        """CR0.WP is read at each access: cached rights stay, their ok bitmaps follow WP."""
        if bool(value) != self._wp:
            self._wp = bool(value)
            self._ok = ok = _OK[self._wp]
            for table in self._tables():
                for key, e in table.items():
                    table[key] = ok[e[_RIGHTS]] + e[_DELTA:]

    @property
    def cr0_pg(self) -> bool:
        return self._pg

    @cr0_pg.setter
    def cr0_pg(self, value: bool) -> None:
        if bool(value) != self._pg:
            if value:
                self._reload_pdptes(self._cr3)
            self._pg = bool(value)
            self._flush(include_global=True)

    @property
    def cr4_pge(self) -> bool:
        return self._pge

    @cr4_pge.setter
    def cr4_pge(self, value: bool) -> None:
        if bool(value) != self._pge:
            if self._pg:
                self._reload_pdptes(self._cr3)
            self._pge = bool(value)
            self._flush(include_global=True)
            self.flush_global += 1

    @property
    def efer_nxe(self) -> bool:
        return self._nxe

    @efer_nxe.setter
    def efer_nxe(self, value: bool) -> None:
        if bool(value) != self._nxe:
            self._nxe = bool(value)
            self._set_reserved()
            self._flush(include_global=True)

    @property
    def flush_filter(self) -> bool:
        return self._filter

    @flush_filter.setter
    def flush_filter(self, value: bool) -> None:
        if bool(value) != self._filter:
            self._flush(include_global=True)
            self._unwatch()
            self._filter = bool(value)
            self._armed = True
            self._roots.clear()
            self._t4, self._t2 = {}, {}
            if self._filter:
                self._root = self._cr3 & 0xFFFFFFE0
                self._roots[self._root] = (self._t4, self._t2)

    @property
    def cr3(self) -> int:
        return self._cr3

    @property
    def pdptes(self) -> tuple[int, int, int, int]:
        return self._pdptes

    def _reload_pdptes(self, cr3: int) -> None:
        base = cr3 & 0xFFFFFFE0
        read = self.memory.read_u64
        pdptes = tuple(read(base + 8 * i) for i in range(4))
        for i, e in enumerate(pdptes):
            if e & 1 and e & self._pdpte_rsvd:
                self.gp_faults += 1
                raise GeneralProtection(
                    f"load of cr3 {cr3:#x}: PDPTE {i} = {e:#018x} is present with reserved "
                    f"bits {e & self._pdpte_rsvd:#x} set (SDM §4.4.1)")
        self._pdptes = pdptes

    def load_cr3(self, value: int) -> None:
        """MOV to CR3: load the PDPTE registers (#GP on a reserved bit, nothing changed),
        then drop non-global TLB entries unless the flush filter keeps them."""
        self._reload_pdptes(value)
        self._cr3 = value
        self.cr3_loads += 1
        if not self._filter:
            self._flush(include_global=False)
            return
        if self._armed:
            self.filter_kept += 1
        else:
            self._flush(include_global=False)
            self._unwatch()
            self._armed = True
        self._switch_root(value & 0xFFFFFFE0)

    def _switch_root(self, root: int) -> None:
        old4, old2 = self._t4, self._t2
        new4, new2 = self._roots.setdefault(root, ({}, {}))
        if new4 is not old4:
            for old, new, fifo in ((old4, new4, self._fifo4), (old2, new2, self._fifo2)):
                for key in [k for k, e in old.items() if e[_GLOBAL]]:     # globals follow the root
                    new[key] = old.pop(key)
                    del fifo[(self._root, key)]
                    fifo[(root, key)] = None
        self._root, self._t4, self._t2 = root, new4, new2

    # -- invalidation -----------------------------------------------------------------------
    def _flush(self, include_global: bool) -> None:
        if not self._filter and (include_global or not self._gmay):
            self._t4.clear()                  # (no global entry to keep: nothing to scan)
            self._t2.clear()
            self._gmay = False
            return
        for table in self._tables():
            if include_global:
                table.clear()
            elif table:
                keep = list(compress(table.items(), map(_global_item, table.values())))
                table.clear()
                table.update(keep)
        if self._filter:
            self._fifo4 = {fk: None for fk in self._fifo4 if fk[1] in self._roots[fk[0]][0]}
            self._fifo2 = {fk: None for fk in self._fifo2 if fk[1] in self._roots[fk[0]][1]}

    def flush_tlb(self, include_global: bool = False) -> None:
        """Drop non-global entries (the TLB effect of MOV CR3), or all of them. Does not
        reload the PDPTE registers (pae.md §8)."""
        self._flush(include_global)
        if include_global:
            self.flush_global += 1
        else:
            self.flush_full += 1

    def _drop(self, vpn4: int, vpn2: int, every_root: bool) -> None:
        if not self._filter:
            self._t4.pop(vpn4, None)
            self._t2.pop(vpn2, None)
            return
        roots = list(self._roots.items()) if every_root else [(self._root, (self._t4, self._t2))]
        for root, (t4, t2) in roots:
            if t4.pop(vpn4, None) is not None:
                del self._fifo4[(root, vpn4)]
            if t2.pop(vpn2, None) is not None:
                del self._fifo2[(root, vpn2)]

    def invlpg(self, vaddr: int) -> None:
        """INVLPG: drop the translations of the page containing `vaddr`, global or not,
        including a 2 MiB entry covering it (under every root the flush filter keeps)."""
        self.invlpg_count += 1
        self._drop(vaddr >> 12, vaddr >> 21, every_root=True)

    def _disarm(self) -> None:
        self._armed = False

    def _unwatch(self) -> None:
        watch = self.memory.watch
        cb = self._disarm_cb
        for line in self._watched:
            s = watch.get(line)
            if s is not None:
                s.discard(cb)
                if not s:
                    del watch[line]
        self._watched.clear()

    def _watch(self, paddr: int) -> None:
        line = paddr >> 6
        self.memory.watch.setdefault(line, set()).add(self._disarm_cb)
        self._watched.add(line)

    # -- translation ------------------------------------------------------------------------
    def translate(self, vaddr: int, access: int = 0) -> int:
        """Linear -> physical address for `access`, or raise PageFault."""
        e = self._t4.get(vaddr >> 12)
        if e is not None and e[access]:
            self.tlb_hits_4k += 1
            return vaddr ^ e[32]
        e = self._t2.get(vaddr >> 21)
        if e is not None and e[access]:
            self.tlb_hits_2m += 1
            return vaddr ^ e[32]
        paddr = self._walk(vaddr, access)
        if paddr < 0:
            raise PageFault(vaddr, ~paddr)
        return paddr

    def try_translate(self, vaddr: int, access: int = 0) -> int:
        """`translate` that returns a #PF instead of raising it: the physical address, or
        the bitwise complement of the error code (a negative int; CR2 is `vaddr`). The same
        walk, counters and TLB effects; for a hypervisor that intercepts every #PF and would
        only catch the exception."""
        e = self._t4.get(vaddr >> 12)
        if e is not None and e[access]:
            self.tlb_hits_4k += 1
            return vaddr ^ e[32]
        e = self._t2.get(vaddr >> 21)
        if e is not None and e[access]:
            self.tlb_hits_2m += 1
            return vaddr ^ e[32]
        return self._walk(vaddr, access)

    def read_u64(self, vaddr: int, access: int = 0) -> int:
        """Read the 8-byte word at linear `vaddr` through the MMU."""
        e = self._t4.get(vaddr >> 12)
        if e is not None and e[access]:
            self.tlb_hits_4k += 1
            pa = vaddr ^ e[32]
        else:
            pa = self.translate(vaddr, access)
        if pa & 7 or pa >= self._memsize:
            self.memory._check(pa, 8)
        frame = self._frames.get(pa >> 12)
        return 0 if frame is None else frame[(pa & 0xFFF) >> 3]

    def write_u64(self, vaddr: int, value: int, access: int = 0) -> None:
        """Write the 8-byte word at linear `vaddr` through the MMU (WRITE is implied)."""
        access |= A_WRITE
        e = self._t4.get(vaddr >> 12)
        if e is not None and e[access]:
            self.tlb_hits_4k += 1
            pa = vaddr ^ e[32]
        else:
            pa = self.translate(vaddr, access)
        self.memory.write_u64(pa, value)

    def write_u32(self, vaddr: int, value: int, access: int = 0) -> None:
        """Write the 4-byte word at linear `vaddr` (4-byte aligned) through the MMU (WRITE is
        implied): half of a PAE entry, as Linux's set_pte stores one."""
        self.memory.write_u32(self.translate(vaddr, access | A_WRITE), value)

    def _fault(self, vaddr: int, access: int, code: int) -> int:
        """Count a #PF found by the walk (`code`: 0 not present, 1 protection, 9 reserved
        bit), drop the page's TLB entries and return the complement of the error code."""
        if not code:
            self.faults_not_present += 1
        elif code & 8:
            self.faults_rsvd += 1
        else:
            self.faults_protection += 1
        if access & A_FETCH and self._nxe:
            code |= 0x10
        code |= access & (A_WRITE | A_USER)
        # a #PF invalidates the TLB entries of the faulting page (SDM §4.10.4.1)
        if self._filter:
            self._drop(vaddr >> 12, vaddr >> 21, every_root=False)
        else:
            self._t4.pop(vaddr >> 12, None)
            self._t2.pop(vaddr >> 21, None)
        return -1 - code                 # ~code, as a plain int even for an IntFlag access

    def _walk(self, vaddr: int, access: int) -> int:
        """A TLB miss: walk, fill and return the physical address, or ~error code."""
        if not 0 <= vaddr <= 0xFFFFFFFF:
            raise ValueError(f"linear address {vaddr:#x} is not a 32-bit address")
        if not self._pg:
            return vaddr
        self.walks += 1
        pdpte = self._pdptes[vaddr >> 30]
        if not pdpte & 1:
            return self._fault(vaddr, access, 0)
        pde_pa = (pdpte & self._amask) | ((vaddr >> 18) & 0xFF8)
        self.pde_reads += 1
        # entry reads inlined: the miss path is the second-hottest code of the project (no
        # frame lies beyond memory, so only an untouched one needs the range check)
        frame = self._frames.get(pde_pa >> 12)
        if frame is not None:
            pde = frame[(pde_pa & 0xFFF) >> 3]
        else:
            if pde_pa >= self._memsize:
                self.memory._check(pde_pa, 8)
            pde = 0
        if not pde & 1:
            return self._fault(vaddr, access, 0)
        if pde & F_PS:
            if pde & self._rsvd_large:
                return self._fault(vaddr, access, 0x9)
            return self._fill(vaddr, access, pde, pde_pa, pde, -1)
        if pde & self._rsvd:
            return self._fault(vaddr, access, 0x9)
        if not pde & F_A:
            self.memory.set_bits_u64(pde_pa, F_A)
            self.ad_writes += 1
        pte_pa = (pde & self._amask) | ((vaddr >> 9) & 0xFF8)
        self.pte_reads += 1
        frame = self._frames.get(pte_pa >> 12)
        if frame is not None:
            pte = frame[(pte_pa & 0xFFF) >> 3]
        else:
            if pte_pa >= self._memsize:
                self.memory._check(pte_pa, 8)
            pte = 0
        if not pte & 1:
            return self._fault(vaddr, access, 0)
        if pte & self._rsvd:
            return self._fault(vaddr, access, 0x9)
        return self._fill(vaddr, access, pte, pte_pa, pde, pde_pa)

    def _fill(self, vaddr: int, access: int, leaf: int, leaf_pa: int, pde: int,
              pde_pa: int) -> int:
        """Check rights on a complete walk, set A/D in the leaf, cache the translation.
        `pde_pa` is -1 when the leaf is a PS=1 PDE."""
        rights = (leaf & 6 & pde) >> 1            # R/W | U/S (6) of both, without a big int
        if self._nxe and (leaf >= F_XD or pde >= F_XD):   # bit 63: compares allocate nothing
            rights |= 4
        if ((access & A_USER and not rights & 2)
                or (access & A_WRITE and not rights & 1 and (access & A_USER or self._wp))
                or (access & A_FETCH and rights & 4)):
            if self._filter:
                return self._fault(vaddr, access, 0x1)
            # _fault(vaddr, access, 0x1) inlined: a hypervisor write-protecting page tables
            # takes one of these per trapped store
            self.faults_protection += 1
            self._t4.pop(vaddr >> 12, None)
            self._t2.pop(vaddr >> 21, None)
            if access & A_FETCH and self._nxe:
                return -18 - (access & (A_WRITE | A_USER))     # ~(P | I/D | W/U)
            return -2 - (access & (A_WRITE | A_USER))          # ~(P | W/U)
        if access & A_WRITE:
            rights |= 8
            if leaf & 0x60 != 0x60:
                self.memory.set_bits_u64(leaf_pa, F_A | F_D)
                self.ad_writes += 1
        else:
            if leaf & F_D:
                rights |= 8
            if not leaf & F_A:
                self.memory.set_bits_u64(leaf_pa, F_A)
                self.ad_writes += 1
        if self._filter:
            # every entry the translation came through, the PDPTE included: a later edit of
            # any of them must not be hidden by a kept entry
            self._watch((self._cr3 & 0xFFFFFFE0) + 8 * (vaddr >> 30))
            self._watch(leaf_pa)
            if pde_pa >= 0:
                self._watch(pde_pa)
        if self._pge and leaf & F_G:
            glob = self._gmay = True
        else:
            glob = False
        if pde_pa < 0:
            base = leaf & self._amask & ~(LARGE_PAGE_SIZE - 1)
            self.tlb_misses_2m += 1
            self._insert(True, vaddr >> 21,
                         self._ok[rights] + (base ^ (vaddr & 0xFFE00000), glob, rights))
            return base | (vaddr & (LARGE_PAGE_SIZE - 1))
        base = leaf & self._amask
        self.tlb_misses_4k += 1
        # (one tuple concatenation: the ok items, then delta, G, rights; vaddr is 32-bit)
        entry = self._ok[rights] + (base ^ (vaddr & 0xFFFFF000), glob, rights)
        if self._filter:
            self._insert(False, vaddr >> 12, entry)
        else:                                        # _insert's common case, inlined
            table, key = self._t4, vaddr >> 12
            if table.pop(key, None) is None and len(table) >= self._cap4:
                del table[next(iter(table))]
            table[key] = entry
        return base | (vaddr & (PAGE_SIZE - 1))

    def _insert(self, large: bool, key: int, entry: tuple) -> None:
        table = self._t2 if large else self._t4
        cap = self._cap2 if large else self._cap4
        if not self._filter:
            if table.pop(key, None) is None and len(table) >= cap:
                del table[next(iter(table))]
            table[key] = entry
            return
        fifo = self._fifo2 if large else self._fifo4
        fkey = (self._root, key)
        if fifo.pop(fkey, 0) is None:
            pass                                     # refill of a cached key: becomes youngest
        elif len(fifo) >= cap:
            root, victim = next(iter(fifo))
            del fifo[(root, victim)]
            del self._roots[root][1 if large else 0][victim]
        fifo[fkey] = None
        table[key] = entry

    # -- inspection -------------------------------------------------------------------------
    def tlb_entries(self) -> list[TLBEntry]:
        """Every cached translation (every root's, with the flush filter), 4 KiB part then
        2 MiB part."""
        out = []
        pairs = self._roots.values() if self._filter else [(self._t4, self._t2)]
        for t4, t2 in pairs:
            for table, shift, size in ((t4, 12, PAGE_SIZE), (t2, 21, LARGE_PAGE_SIZE)):
                for key, e in table.items():
                    r, glob = e[_RIGHTS], e[_GLOBAL]
                    out.append(TLBEntry(va=key << shift, pa=e[_DELTA] ^ (key << shift), size=size,
                                        writable=bool(r & 1), user=bool(r & 2), nx=bool(r & 4),
                                        dirty=bool(r & 8), global_=glob))
        return out

    def counters(self) -> CPUCounters:
        return CPUCounters(*[getattr(self, n) for n in _COUNTER_SLOTS])

    def restore_counters(self, snapshot: CPUCounters) -> None:
        """Set every counter back to `snapshot` (used to keep audits out of the race)."""
        for slot, value in zip(_COUNTER_SLOTS, snapshot.__dict__.values()):
            setattr(self, slot, value)
