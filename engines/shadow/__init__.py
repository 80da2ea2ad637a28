"""Xen-style shadow paging in "translate, internal" mode (reference/shadow.md).

The guest writes ordinary PAE page tables of pseudo-physical frames with plain stores; the
hypervisor owns the P2M, write-protects guest page tables, traps and emulates writes to
them, and keeps the shadow tables the hardware really walks. Modules:

- `modes`   — `PagingMode` (PAE, 2-level) and the one guest walker (`guest_walk_tables`)
- `p2m`     — P2M/M2P over 8 GiB of machine memory, Xen's frames and the Xen area of l2h
- `pool`    — shadow pages, the shadow hash, the pool and its pinned LRU list
- `shadows` — propagation (`_sh_propagate`), entries with references, shadow lifetime,
              guest-write validation, prealloc/eviction, prefetch
- `wrmap`   — write-access removal (heuristics, brute-force scan), unshadowing, shootdowns
- `oos`     — out-of-sync L1s (Xen 3.3) with snapshots and resync
- `audit`   — the invariants
- `engine`  — `ShadowEngine`: the fault path, CR3/PDPTE snapshot, invlpg, flushes, CR writes
- `options` — `OPTIONS`/`DEFAULTS` for race cells, `machine_memory_range` for their
              machine memory
"""
from .engine import ShadowEngine
from .modes import PAE, TWO_LEVEL, GuestWalk, PagingMode, guest_walk
from .options import DEFAULTS, OPTIONS, machine_memory_range, min_pool_pages

__all__ = ["ShadowEngine", "OPTIONS", "DEFAULTS", "min_pool_pages", "machine_memory_range",
           "PagingMode", "PAE", "TWO_LEVEL", "GuestWalk", "guest_walk"]
