"""Shadow pages, the shadow hash and the per-domain shadow memory pool.

Follows reference/shadow.md §4 "Hash" and "Pinning and eviction" (Xen 3.3
`xen/arch/x86/mm/shadow/common.c`: `shadow_hash_lookup/insert`, `shadow_alloc`,
`shadow_free`, `sh_pin`/`sh_unpin`, the pinned-shadows list):
- every shadow page has a type, a back-pointer to the guest frame it shadows (for an fl1,
  the first frame of the splintered superpage) and a reference count (parent entries plus,
  for top-level shadows, the per-VCPU shadow L3 slots using it);
- the hash is keyed by (guest frame, shadow type[, fl1 variant]); Xen chains 251 buckets,
  a Python dict does the same job and iterates in insertion order, which stands for Xen's
  bucket order in the brute-force scans;
- each guest frame's `shadow_flags` (here: the list of its shadows) says which types exist;
- top-level shadows (PAE: the L2s) are pinned on a per-domain list kept in LRU order, so
  the shadows of an address space survive while it is switched out;
- the pool is a fixed number of machine frames from Xen's block; `alloc` never grows it.
  Eviction when it runs dry (`_shadow_prealloc`) is policy and lives in `shadows.py`.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

# shadow types (Xen 3.3 names: SH_type_l1_pae_shadow, fl1_pae, l2_pae, l2h_pae)
SH_L1 = "l1"
SH_FL1 = "fl1"
SH_L2 = "l2"
SH_L2H = "l2h"
PT_TYPES = (SH_L1, SH_L2, SH_L2H)       # types that make their guest frame "a page table"
TOP_TYPES = (SH_L2, SH_L2H)             # PAE top-level shadows (the l3 is per-VCPU, in Xen memory)


@dataclass(eq=False)
class ShadowPage:
    """One shadow page: machine frame `smfn` holding the shadow of guest frame `gfn`."""
    smfn: int
    type: str
    gfn: int
    key: tuple
    refs: int = 0
    pinned: bool = False
    up: set = field(default_factory=set)        # (parent ShadowPage, index) referencing an L1
    users: set = field(default_factory=set)     # (vcpu, l3 slot) referencing a top-level shadow
    oos: bool = False                           # out of sync (L1 only; see oos.py)

    def __repr__(self) -> str:
        return f"<{self.type} shadow smfn {self.smfn:#x} of gfn {self.gfn:#x} refs {self.refs}>"


class ShadowPool:
    """The domain's shadow frames, hash, per-gfn shadow lists and pinned LRU list."""

    def __init__(self, frames: list[int]):
        self.size = len(frames)
        self.free: deque[int] = deque(frames)
        self.frames = frozenset(frames)
        self.hash: dict[tuple, ShadowPage] = {}
        self.by_smfn: dict[int, ShadowPage] = {}
        self.by_gfn: dict[int, list[ShadowPage]] = {}    # page-table shadows of each gfn
        self.pinned: OrderedDict[ShadowPage, None] = OrderedDict()   # LRU first
        self.peak = 0

    @property
    def in_use(self) -> int:
        return self.size - len(self.free)

    def lookup(self, key: tuple) -> ShadowPage | None:
        return self.hash.get(key)

    def take(self, type_: str, gfn: int, key: tuple) -> ShadowPage:
        """Take a free frame for a new shadow and hash it. The caller ran prealloc."""
        smfn = self.free.popleft()
        sp = ShadowPage(smfn, type_, gfn, key)
        self.hash[key] = sp
        self.by_smfn[smfn] = sp
        if type_ in PT_TYPES:
            self.by_gfn.setdefault(gfn, []).append(sp)
        self.peak = max(self.peak, self.in_use)
        return sp

    def give_back(self, sp: ShadowPage) -> None:
        """Unhash `sp` and return its frame (already cleared by the caller)."""
        del self.hash[sp.key]
        del self.by_smfn[sp.smfn]
        if sp.type in PT_TYPES:
            lst = self.by_gfn[sp.gfn]
            lst.remove(sp)
            if not lst:
                del self.by_gfn[sp.gfn]
        self.pinned.pop(sp, None)
        self.free.append(sp.smfn)

    def pin(self, sp: ShadowPage) -> None:
        """sh_pin: hold a top-level shadow; a pinned one moves to the LRU tail when used."""
        if not sp.pinned:
            sp.pinned = True
            sp.refs += 1
        self.pinned.pop(sp, None)
        self.pinned[sp] = None

    def is_page_table(self, gfn: int) -> bool:
        return gfn in self.by_gfn
