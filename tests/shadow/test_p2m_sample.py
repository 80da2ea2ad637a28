"""The P2M's frames: `_sample` is `random.Random.sample`, draw for draw, whatever the
batching (engines/shadow/p2m.py draws 32-bit outputs in batches and de-duplicates in C)."""
from __future__ import annotations

import random

import pytest

from engines.shadow.p2m import _sample


@pytest.mark.parametrize("n, k", [
    ((1 << 21) - 0x900, 131072),    # 8 GiB of machine frames, a 512 MiB domain (the race's)
    ((1 << 21) - 0x900, 200000),
    (3 << 19, 131072),              # n well below 2**bits: many draws rejected
    (1 << 18, 100000),              # a dense sample: more batches
    (1 << 24, 16384),
    (5000, 100),                    # Random.sample's own set method
    (300, 200),                     # ... and its pool method
])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sample_gives_random_sample_s_list_for_the_same_seed(n, k, seed):
    population = range(0x900, 0x900 + n)
    want = random.Random(f"p2m:{seed}").sample(population, k)
    assert _sample(random.Random(f"p2m:{seed}"), population, k) == want
