"""Deterministic 64-bit tokens for the data ledger: what a page should hold, derived from
where in the workload it was written (never from pids, addresses of allocations or time)."""
from __future__ import annotations

import hashlib


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") | 1


def file_token(file: str, index: int) -> int:
    """Content of word 0 of page `index` of `file`."""
    return _h(f"file:{file}:{index}")


def data_token(place: str, va: int, generation: int) -> int:
    """What the process at `place` writes at `va` on its `generation`-th write there."""
    return _h(f"data:{place}:{va:#x}:{generation}")


READBACK_MASK = (1 << 128) - 1


def read_hash(place: str, va: int, value: int) -> int:
    """Hash of one read-back (place, address, value), summed into the boot's digest."""
    return int.from_bytes(hashlib.blake2b(f"{place}:{va:#x}:{value:#x}".encode(),
                                          digest_size=16).digest(), "little")
