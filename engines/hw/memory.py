"""Sparse machine memory of up to 64 GiB (36-bit physical addresses).

Frames materialise on the first write to them; reads of untouched memory return 0. Each
materialised frame is a list of 512 64-bit words. Only aligned 8-byte and 4-byte accesses
exist, plus whole frames (zero, copy, load): that is all a page-table walker, a hypervisor
and the guest model need. Errors name the offending address in hex (in the manner of
rust-vmm's vm-memory).

Fast access: `frame(mfn)` hands out a frame's live word list (None while untouched), for
callers that read entries by frame and index without a call per word. A caller may also
store into a list it got this way, but only what `write_u64` would then do itself: an
in-range 64-bit value, while `watch` is empty (the shadow engine's plain guest stores do).

Write watching: the K8 TLB flush filter (engines.hw.cpu) must notice software writes to
page-table memory. CPUs register 64-byte lines here; a write to a registered line calls the
watcher. With no watchers the check is one falsy-dict test.
"""
from __future__ import annotations

from .arch import MAX_MEMORY, PAGE_SHIFT, PAGE_SIZE, U64_MASK, AddressError

_WORDS = PAGE_SIZE // 8


class PhysicalMemory:
    """Machine memory: `read_u64`/`write_u64` at 8-byte-aligned physical addresses."""

    __slots__ = ("size", "_frames", "watch", "frame")

    def __init__(self, size_bytes: int):
        if not 0 < size_bytes <= MAX_MEMORY or size_bytes % PAGE_SIZE:
            raise ValueError(f"memory size {size_bytes:#x} must be a multiple of 4 KiB "
                             f"in (0, {MAX_MEMORY:#x}] (36-bit physical addresses)")
        self.size = size_bytes
        self._frames: dict[int, list[int]] = {}
        # 64-byte line number -> set of callbacks; see module docstring
        self.watch: dict[int, set] = {}
        # frame(mfn): the live 512-word list of a materialised frame, None if untouched (all
        # zeros). The frames dict's own `get`, so a read costs no Python call: for a walker or
        # hypervisor reading entries by (mfn, index). Stores into it only as the module
        # docstring allows; other writes go through write_u64 and the other writers, which
        # materialise frames and notify watchers (zero_frame, copy_frame and load_frame
        # replace the list: fetch it again after them).
        self.frame = self._frames.get

    # -- checked accessors ------------------------------------------------------------------
    def _check(self, paddr: int, align: int) -> None:
        if paddr & (align - 1):
            raise AddressError(f"physical address {paddr:#x} is not {align}-byte aligned")
        if not 0 <= paddr < self.size:
            raise AddressError(f"physical address {paddr:#x} is outside memory "
                               f"of {self.size:#x} bytes")

    def read_u64(self, paddr: int) -> int:
        if paddr & 7 or not 0 <= paddr < self.size:
            self._check(paddr, 8)
        frame = self._frames.get(paddr >> PAGE_SHIFT)
        return 0 if frame is None else frame[(paddr & 0xFFF) >> 3]

    def write_u64(self, paddr: int, value: int) -> None:
        if paddr & 7 or not 0 <= paddr < self.size:
            self._check(paddr, 8)
        if not 0 <= value <= U64_MASK:
            raise ValueError(f"value {value:#x} written at {paddr:#x} does not fit in 64 bits")
        frame = self._frames.get(paddr >> PAGE_SHIFT)
        if frame is None:
            frame = self._frames[paddr >> PAGE_SHIFT] = [0] * _WORDS
        frame[(paddr & 0xFFF) >> 3] = value
        if self.watch:
            self._notify(paddr)

    def read_u32(self, paddr: int) -> int:
        if paddr & 3 or not 0 <= paddr < self.size:
            self._check(paddr, 4)
        word = self.read_u64(paddr & ~7)
        return (word >> 32) if paddr & 4 else word & 0xFFFFFFFF

    def write_u32(self, paddr: int, value: int) -> None:
        if paddr & 3 or not 0 <= paddr < self.size:
            self._check(paddr, 4)
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"value {value:#x} written at {paddr:#x} does not fit in 32 bits")
        old = self.read_u64(paddr & ~7)
        new = (old & 0xFFFFFFFF) | (value << 32) if paddr & 4 else (old & ~0xFFFFFFFF) | value
        self.write_u64(paddr & ~7, new)

    def set_bits_u64(self, paddr: int, bits: int) -> None:
        """Locked OR of `bits` into a word, as the page walker sets A/D. Not watched: the
        flush filter ignores the walker's own updates (see engines.hw.cpu)."""
        frame = self._frames.get(paddr >> PAGE_SHIFT)
        if frame is None:
            frame = self._frames[paddr >> PAGE_SHIFT] = [0] * _WORDS
        frame[(paddr & 0xFFF) >> 3] |= bits

    # -- whole frames -----------------------------------------------------------------------
    def frame_count(self) -> int:
        """Number of materialised 4 KiB frames."""
        return len(self._frames)

    def is_materialised(self, mfn: int) -> bool:
        return mfn in self._frames

    def frame_words(self, mfn: int) -> list[int]:
        """A copy of the 512 words of frame `mfn` (zeros if untouched)."""
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        frame = self._frames.get(mfn)
        return [0] * _WORDS if frame is None else list(frame)

    def nonzero_words(self, mfn: int) -> list[tuple[int, int]]:
        """(index, value) of each non-zero word of frame `mfn`, in index order."""
        frame = self._frames.get(mfn)
        return [] if frame is None else [(i, w) for i, w in enumerate(frame) if w]

    def zero_frame(self, mfn: int) -> None:
        """Clear a whole frame (clear_page); the frame dematerialises."""
        if not 0 <= mfn << PAGE_SHIFT < self.size:
            self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        self._frames.pop(mfn, None)
        if self.watch:
            for line in range(mfn << 6, (mfn + 1) << 6):
                if line in self.watch:
                    self._notify(line << 6)

    def load_frame(self, mfn: int, words) -> None:
        """Fill a whole frame from up to 512 words, zeros after them (what a loader or a
        hypervisor building a table does: one call instead of a write_u64 per word)."""
        self._check(mfn << PAGE_SHIFT, PAGE_SIZE)
        frame = list(words)
        if len(frame) > _WORDS or (frame and not (0 <= min(frame) and max(frame) <= U64_MASK)):
            raise ValueError(f"load of frame {mfn:#x}: {len(frame)} words, or a value that "
                             f"does not fit in 64 bits (at most {_WORDS} words)")
        frame += [0] * (_WORDS - len(frame))
        self._frames[mfn] = frame
        if self.watch:
            for line in range(mfn << 6, (mfn + 1) << 6):
                if line in self.watch:
                    self._notify(line << 6)

    def copy_frame(self, src_mfn: int, dst_mfn: int) -> None:
        """Copy a whole frame (copy_page)."""
        if not 0 <= src_mfn << PAGE_SHIFT < self.size:
            self._check(src_mfn << PAGE_SHIFT, PAGE_SIZE)
        self.zero_frame(dst_mfn)
        frame = self._frames.get(src_mfn)
        if frame is not None:
            self._frames[dst_mfn] = list(frame)

    def _notify(self, paddr: int) -> None:
        callbacks = self.watch.pop(paddr >> 6, None)
        if callbacks:
            for cb in callbacks:
                cb()
