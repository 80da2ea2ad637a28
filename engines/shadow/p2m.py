"""The domain's physical memory under a translating hypervisor: the P2M (guest pfn -> machine
frame) and M2P that Xen owns in translate mode, Xen's own frames, and the Xen area of the
guest's linear address space as the shadow L2h carries it.

Follows reference/xen-pv.md §2.5 ("In translate mode Xen owns the P2M (`d->arch.phys_table`)
and installs it at the RO_MPT slots of the shadow L2h") and §1.5 (the PAE layout from
HYPERVISOR_VIRT_START 0xF5800000, RO M2P first, 16 MiB). Machine memory defaults to 8 GiB;
guest frames are scattered over it deterministically from the domain's seed, so many lie
above 4 GiB. Xen's frames (the shadow pool, per-VCPU shadow L3s, the P2M table, Xen's own
L1s) are one block just above 1 MiB, so everything that must be below 4 GiB is.

Xen-area model (the l2h slots from 428 = 0xF5800000 >> 21 & 511 to 511):
- slots 428..435 (RO_MPT, 16 MiB) map the frames of the P2M table, read-only, supervisor;
- slot 506 (Xen's direct map) maps Xen's first 512 frames read-write, supervisor;
- the linear-pagetable and shadow-linear slots stay empty: this engine reads guest and
  shadow tables through machine addresses (map_domain_page style), the "map-based" variant
  the 3.0.3 multi.c "PAE LINEAR MAPS" comment describes, which is what lets l2h shadows be
  shared between address spaces (shared_kernel_pmd=True) and leaves no self-linear shadow
  mapping to abuse (XSA-243);
- every other Xen slot is 0.
The guest reaches Xen's area only as a supervisor read of RO_MPT; any other access at or
above HYPERVISOR_VIRT_START is refused before the MMU (x86_32 Xen guards its area with
segment limits, which this model does not have).
"""
from __future__ import annotations

import math
import random
import sys
from array import array
from itertools import islice

from engines.hw import PhysicalMemory

HYPERVISOR_VIRT_START = 0xF5800000
RO_MPT_END = HYPERVISOR_VIRT_START + (16 << 20)
XEN_FIRST_SLOT = (HYPERVISOR_VIRT_START >> 21) & 511     # 428
RO_MPT_SLOTS = 8
XEN_DIRECTMAP_SLOT = 506
XEN_BASE_MFN = 0x100                                      # 1 MiB
_P, _RW, _A, _D = 0x1, 0x2, 0x20, 0x40
_WORD = array("I")                                        # (4 bytes on every platform we run)


def _sample(rng: random.Random, population: range, k: int) -> list[int]:
    """`rng.sample(population, k)`, the same list from the same generator state, faster for
    the case a domain's P2M is: a small sample of a large range, which `Random.sample`
    draws one `_randbelow` call at a time (`getrandbits` of n's bit length until one is
    below n), rejecting repeats with a set: the sample is the first k distinct draws below
    n, in order. `getrandbits(b)` for b <= 32 is one 32-bit output of the generator shifted
    right by 32 - b, and `getrandbits(32 * m)` is m such outputs, the first lowest, so the
    draws are taken in batches, shifted and offset lane-wise in one big int, de-duplicated
    in C (dict.fromkeys keeps first occurrences in order) and rid of the draws >= n. The
    generator ends further on than Random.sample leaves it (the last batch is drawn whole):
    pass one used for nothing else."""
    n = len(population)
    if not 5 < k <= n or n <= 21 + 4 ** math.ceil(math.log(k * 3, 4)):
        return rng.sample(population, k)     # Random.sample's pool method (or its errors)
    bits, start = n.bit_length(), population.start
    if start + (1 << bits) > 1 << 32 or _WORD.itemsize != 4:
        return rng.sample(population, k)
    first: dict[int, None] = {}
    batch = k + (k >> 3) + 64                # enough for a sparse sample, else draw more
    while len(first) < k:
        # each 32-bit lane: its output >> (32 - bits), plus start (no carry between lanes)
        lanes = (rng.getrandbits(32 * batch) >> (32 - bits)) & _lanes((1 << bits) - 1, batch)
        lanes += _lanes(start, batch)
        words = array("I", lanes.to_bytes(4 * batch, "little"))
        if sys.byteorder == "big":
            words.byteswap()
        first.update(dict.fromkeys(words))
        for mfn in range(population.stop, start + (1 << bits)):    # draws >= n
            first.pop(mfn, None)
        batch = (k - len(first)) * 2 + 64
    return list(islice(first, k))


def _lanes(value: int, count: int) -> int:
    """`value` (< 2**32) in each of `count` 32-bit lanes of one int, the first lowest."""
    return int.from_bytes(value.to_bytes(4, "little") * count, "little")


class P2M:
    """pfn -> mfn and mfn -> pfn for one domain, plus Xen's frame block."""

    def __init__(self, memory: PhysicalMemory, nr_pages: int, xen_frames: int, seed: int):
        total = memory.size >> 12
        first_guest = XEN_BASE_MFN + xen_frames
        if first_guest + nr_pages > total:
            raise ValueError(f"machine memory of {memory.size:#x} bytes cannot hold "
                             f"{nr_pages} guest frames plus {xen_frames} Xen frames")
        if first_guest > 0x100000:
            raise ValueError(f"{xen_frames} Xen frames do not fit below 4 GiB")
        self.nr_pages = nr_pages
        self.p2m: list[int] = _sample(random.Random(f"shadow-p2m:{seed}"),
                                      range(first_guest, total), nr_pages)
        self.m2p: dict[int, int] = dict(zip(self.p2m, range(nr_pages)))
        self.xen_frames = range(XEN_BASE_MFN, first_guest)
        self._next_xen = XEN_BASE_MFN

    def alloc_xen(self, count: int = 1) -> list[int]:
        """Take `count` frames from Xen's block (all below 4 GiB)."""
        if self._next_xen + count > self.xen_frames.stop:
            raise ValueError(f"Xen frame block of {len(self.xen_frames)} frames exhausted")
        out = list(range(self._next_xen, self._next_xen + count))
        self._next_xen += count
        return out

    def mfn(self, gfn: int) -> int:
        """Machine frame of guest frame `gfn`; -1 if the domain has no such frame."""
        return self.p2m[gfn] if 0 <= gfn < self.nr_pages else -1


class XenArea:
    """Xen's frames and the 84 Xen slot values every shadow l2h must carry."""

    def __init__(self, memory: PhysicalMemory, p2m: P2M):
        self.memory = memory
        table_frames = (p2m.nr_pages * 8 + 4095) // 4096
        if table_frames > RO_MPT_SLOTS * 512:
            raise ValueError(f"a P2M of {p2m.nr_pages} entries does not fit in RO_MPT")
        self.p2m_table = p2m.alloc_xen(table_frames)
        for i, frame in enumerate(self.p2m_table):         # 512 entries per frame, in order
            memory.load_frame(frame, p2m.p2m[i * 512:(i + 1) * 512])
        n_l1 = (table_frames + 511) // 512
        self.rompt_l1 = p2m.alloc_xen(n_l1)
        for i, mfn in enumerate(self.p2m_table):
            memory.write_u64((self.rompt_l1[i >> 9] << 12) | ((i & 511) << 3),
                             (mfn << 12) | _P | _A | _D)
        self.directmap_l1 = p2m.alloc_xen(1)[0]
        for i in range(512):
            memory.write_u64((self.directmap_l1 << 12) | (i << 3),
                             ((p2m.xen_frames.start + i) << 12) | _P | _RW | _A | _D)
        slots = [0] * (512 - XEN_FIRST_SLOT)
        for i, mfn in enumerate(self.rompt_l1):
            slots[i] = (mfn << 12) | _P | _RW | _A | _D
        slots[XEN_DIRECTMAP_SLOT - XEN_FIRST_SLOT] = (self.directmap_l1 << 12) | _P | _RW | _A | _D
        self.slots: tuple[int, ...] = tuple(slots)
        self.own_tables = frozenset(self.rompt_l1) | {self.directmap_l1}

    def install(self, l2h_mfn: int) -> None:
        """sh_install_xen_entries_in_l2h: copy Xen's slots into a new l2h shadow."""
        base = l2h_mfn << 12
        for i, value in enumerate(self.slots):
            if value:
                self.memory.write_u64(base | ((XEN_FIRST_SLOT + i) << 3), value)

    def intact(self, l2h_mfn: int) -> list[str]:
        base = l2h_mfn << 12
        bad = []
        for i, value in enumerate(self.slots):
            found = self.memory.read_u64(base | ((XEN_FIRST_SLOT + i) << 3))
            if found != value:
                bad.append(f"l2h smfn {l2h_mfn:#x} Xen slot {XEN_FIRST_SLOT + i}: found "
                           f"{found:#018x}, Xen's value is {value:#018x}")
        return bad
