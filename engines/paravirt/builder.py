"""The PV domain builder, after Xen 3.0.3 `tools/libxc/xc_linux_build.c` and
`xen/arch/x86/domain_build.c` (reference/xen-pv.md §2.5): machine memory for Xen and the
guest, the M2P (Xen-owned, mapped read-only at 0xF5800000), the P2M list (guest-owned), the
start_info page and the bootstrap page tables.

Machine memory (default 8 GiB) is split: Xen's heap in the first 12 MiB (mapped by Xen's
2 MiB direct-map slots), Xen's own frames (M2P, its L1s, per-VCPU structures) up to 64 MiB,
and the domain's frames, which are scattered over the rest deterministically from the seed,
so most of them sit above 4 GiB (36-bit addresses are real).

The guest's pseudo-physical frames 0.. map 1:1 at 0xC0000000 in the bootstrap region:
kernel image, P2M list (4-byte mfns), start_info, then the bootstrap tables (1 L3 + 4 L2 +
the L1s mapping the region with 4 KiB pages), padded by 512 KiB and rounded up to 4 MiB.
Everything is mapped RW except the bootstrap tables, which are read-only; the L3 is
validated, pinned and loaded on VCPU 0.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import islice

from engines.api.xen import SIF_PRIVILEGED, StartInfo

from .frames import DOMID_GUEST, DOMID_XEN, PGT, FrameTable

MIB = 1 << 20
PAGE_OFFSET = 0xC0000000
XEN_HEAP_FRAMES = (12 * MIB) >> 12
DOMAIN_FIRST_MFN = (64 * MIB) >> 12
MAX_MACHINE_MIB = 16 * 1024              # the 16 MiB RO M2P covers 16 GiB
L1_PROT = 0x23                           # P|RW|A (ring-1 kernel: no USER needed)
L1_PROT_RO = 0x21                        # P|A: the bootstrap page tables
L2_PROT = 0x67                           # P|RW|US|A|D
L3_PROT = 0x1                            # P


@dataclass
class Layout:
    p2m: list[int]
    start_info: StartInfo
    l3: int
    m2p_first: int
    m2p_l1s: list[int]
    perdomain_l1: int
    shared_info: int


class XenPool:
    """Xen's own frames, handed out upward from the end of its heap (all below 4 GiB)."""

    def __init__(self, frames: FrameTable):
        self.next = XEN_HEAP_FRAMES
        self.frames = frames

    def alloc(self) -> int:
        if self.next >= DOMAIN_FIRST_MFN:
            raise MemoryError("Xen's frame pool below 64 MiB is exhausted")
        mfn = self.next
        self.next += 1
        self.frames.add(mfn, DOMID_XEN)
        return mfn


def _pages(nbytes: int) -> int:
    return (nbytes + 4095) >> 12


def _write_u32_array(memory, base: int, entries) -> None:
    """Store 4-byte entries ((index, value) pairs) of an array at machine address `base`,
    pairing neighbours into one 8-byte store (words in order of first appearance; a word
    that stays 0 is not written)."""
    words: dict[int, int] = {}
    get = words.get
    for i, value in entries:
        words[i >> 1] = get(i >> 1, 0) | (value << ((i & 1) << 5))
    write = memory.write_u64
    for w, value in words.items():
        if value:
            write(base + 8 * w, value)


def _write_u32_list(memory, base: int, values: list[int]) -> None:
    """Store values[0..] as consecutive 4-byte entries at `base` (as _write_u32_array over
    enumerate(values), without the dictionary)."""
    if len(values) & 1:
        values = values + [0]
    write = memory.write_u64
    for w, (lo, hi) in enumerate(zip(values[0::2], values[1::2])):
        if lo or hi:
            write(base + 8 * w, lo | (hi << 32))


def scatter(first: int, end: int, n: int, seed: int) -> list[int]:
    """n distinct frames of [first, end), spread over the whole range: an affine bijection
    x -> (a*x + b) mod 2^k with a seeded odd `a`, values outside the range skipped."""
    span = end - first
    k = max(span - 1, 1).bit_length()
    rng = random.Random(f"pv-domain-{seed}")
    a = rng.randrange(1 << (k - 1), 1 << k) | 1
    b = rng.randrange(1 << k)
    mask = (1 << k) - 1
    tried = min(1 << k, 2 * n + 64)
    # (a*x + b) & mask for x in range(tried), those below span, the first n (in C)
    out = list(islice(filter(span.__gt__, map(mask.__and__, range(b, b + a * tried, a))), n))
    x = 2 * n + 64
    while len(out) < n:                     # only when the range is barely larger than n
        v = (a * x + b) & mask
        if v < span:
            out.append(v)
        x += 1
    return [first + v for v in out]


def build_memory(memory, frames: FrameTable, pool: XenPool, nr_pages: int, seed: int):
    """Allocate the M2P and the domain's frames; return (p2m, m2p_first, m2p_l1s)."""
    total = memory.size >> 12
    if total - DOMAIN_FIRST_MFN < nr_pages:
        raise ValueError(f"machine memory {memory.size:#x} too small for {nr_pages} pages")
    m2p_frames = _pages(total * 4)
    m2p_first = pool.next
    for _ in range(m2p_frames):
        pool.alloc()
    m2p_l1s = []
    for i in range(0, m2p_frames, 512):
        l1 = pool.alloc()
        for j in range(min(512, m2p_frames - i)):
            memory.write_u64((l1 << 12) + 8 * j, ((m2p_first + i + j) << 12) | 0x25)  # P|US|A
        m2p_l1s.append(l1)
    p2m = scatter(DOMAIN_FIRST_MFN, total, nr_pages, seed)
    frames.add_domain_frames(p2m, DOMID_GUEST)
    _write_u32_array(memory, m2p_first << 12, zip(p2m, range(len(p2m))))   # mfn -> pfn
    return p2m, m2p_first, m2p_l1s


def build_domain(memory, frames: FrameTable, pool: XenPool, nr_pages: int, seed: int,
                 kernel_pages: int) -> Layout:
    p2m, m2p_first, m2p_l1s = build_memory(memory, frames, pool, nr_pages, seed)
    perdomain_l1 = pool.alloc()
    shared_info = pool.alloc()
    p2m_pfn = kernel_pages
    p2m_pages = _pages(nr_pages * 4)
    si_pfn = p2m_pfn + p2m_pages
    pt_pfn = si_pfn + 1
    nr_l1 = 1
    while True:                      # the table-size loop of xc_linux_build
        end_pfn = pt_pfn + 5 + nr_l1
        v_end = (PAGE_OFFSET + (end_pfn << 12) + 512 * 1024 + 4 * MIB - 1) & ~(4 * MIB - 1)
        need = (v_end - PAGE_OFFSET + 2 * MIB - 1) >> 21
        if need <= nr_l1:
            break
        nr_l1 = need
    region_pages = (v_end - PAGE_OFFSET) >> 12
    if region_pages > nr_pages or (v_end - PAGE_OFFSET) > (428 << 21):
        raise ValueError(f"domain of {nr_pages} pages too small for its bootstrap region")
    write = memory.write_u64
    for i in range(p2m_pages):       # the P2M list, 4-byte entries, guest-owned
        chunk = p2m[i * 1024:(i + 1) * 1024]
        _write_u32_list(memory, p2m[p2m_pfn + i] << 12, chunk)
    l3, l2s = p2m[pt_pfn], [p2m[pt_pfn + 1 + i] for i in range(4)]
    l1s = [p2m[pt_pfn + 5 + i] for i in range(nr_l1)]
    pt_pfns = set(range(pt_pfn, pt_pfn + 5 + nr_l1))
    for i, l2 in enumerate(l2s):
        write((l3 << 12) + 8 * i, (l2 << 12) | L3_PROT)
    for i, l1 in enumerate(l1s):
        write((l2s[3] << 12) + 8 * i, (l1 << 12) | L2_PROT)
    for pfn in range(region_pages):
        prot = L1_PROT_RO if pfn in pt_pfns else L1_PROT
        write((l1s[pfn >> 9] << 12) + 8 * (pfn & 511), (p2m[pfn] << 12) | prot)
    info = StartInfo(
        magic="xen-3.0-x86_32p", nr_pages=nr_pages, shared_info=shared_info << 12,
        flags=SIF_PRIVILEGED * 0, pt_base=PAGE_OFFSET + (pt_pfn << 12),
        nr_pt_frames=5 + nr_l1, mfn_list=PAGE_OFFSET + (p2m_pfn << 12),
        first_p2m_pfn=p2m_pfn, first_free_pfn=pt_pfn + 5 + nr_l1, boot_region_end=v_end,
        features=("writable_page_tables", "pae_pgdir_above_4gb"))
    write(p2m[si_pfn] << 12, 0x78656E2D332E3000)    # "xen-3.0" magic word
    return Layout(p2m=p2m, start_info=info, l3=l3, m2p_first=m2p_first, m2p_l1s=m2p_l1s,
                  perdomain_l1=perdomain_l1, shared_info=shared_info)


def pin_bootstrap(frames: FrameTable, l3: int) -> bool:
    """Validate and pin the bootstrap L3 (the builder's MMUEXT_PIN_L3_TABLE)."""
    if not frames.get_page_and_type(l3, DOMID_GUEST, PGT.L3):
        return False
    frames.set_pinned(l3, True)
    return True
