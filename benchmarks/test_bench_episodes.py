"""Episodes per second of the numba episode kernel against its numpy twin, at Omniglot's shapes.

One call gathers a meta-batch of 32 tasks, each 5-way 1-shot with 15 queries per class, from a
random uint8 array shaped like Omniglot background + evaluation ((1623, 20, 28, 28)), in both of
the Omniglot family's ways to fill a task (``task.distinct``): ``characters`` (its default), 5
distinct characters of the 1623 upright ids, each at a rotation drawn per task and character
(``random_rotation=True``), and ``classes``, 5 distinct classes of the 1623 × 4 rotated classes in
the pool (Santoro et al. 2016; the sampling before issue 14). Argument checks
and allocation are timed too: this is what a task family pays per meta-batch. Every variant is
checked against the twin, bit for bit, before it is timed. ``numba-parallel`` is the same kernel
compiled with ``parallel=True`` (prange over tasks, uncached) to keep the serial default an
informed choice.
Run with ``pytest benchmarks/test_bench_episodes.py --benchmark-only`` (see README.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields

import numba
import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from mamlflow.kernels import (
    Episodes,
    numba_available,
    sample_episodes,
    sample_episodes_reference,
)
from mamlflow.rng import derive_key

CHARACTERS, DRAWINGS, SIZE = 1623, 20, 28
META_BATCH, WAYS, SHOTS, QUERIES = 32, 5, 1, 15

# (rounds, iterations per round): about 1-2 s of timing per variant on a 2-core CPU.
SCHEDULE = {"numba": (200, 5), "numba-parallel": (200, 5), "twin": (40, 2)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(
        0, 256, (CHARACTERS, DRAWINGS, SIZE, SIZE), dtype=np.uint8
    )


@pytest.mark.parametrize("variant", ["numba", "numba-parallel", "twin"])
@pytest.mark.parametrize("distinct", ["characters", "classes"])
def test_omniglot_meta_batch(
    benchmark: BenchmarkFixture,
    images: np.ndarray,
    distinct: str,
    variant: str,
) -> None:
    assert numba_available()
    random_rotation = distinct == "characters"
    # Upright ids (character * 4) when the sampler draws the rotations, else every class.
    pool = np.arange(0, CHARACTERS * 4, 4 if random_rotation else 1, dtype=np.int64)
    key = derive_key(0, 0, 1)  # (seed, stream, iteration)
    arguments = (images, pool, key, np.arange(META_BATCH, dtype=np.int64), WAYS, SHOTS, QUERIES)
    kernel: Callable[..., Episodes] = {
        "numba": sample_episodes,
        "numba-parallel": functools.partial(sample_episodes, parallel=True),
        "twin": sample_episodes_reference,
    }[variant]
    sample = functools.partial(kernel, random_rotation=random_rotation)
    want = sample_episodes_reference(*arguments, random_rotation=random_rotation)
    got = sample(*arguments)  # compiles, checks
    for f in fields(Episodes):
        assert np.array_equal(getattr(got, f.name), getattr(want, f.name)), f.name

    rounds, iterations = SCHEDULE[variant]
    benchmark.group = "Omniglot meta-batch (32 tasks, 5-way 1-shot 15-query, 4 rotations)"
    benchmark.extra_info.update(
        variant=variant,
        distinct=distinct,
        meta_batch=META_BATCH,
        numba_threads=numba.config.NUMBA_NUM_THREADS if variant == "numba-parallel" else 1,
    )
    benchmark.pedantic(
        sample, args=arguments, rounds=rounds, iterations=iterations, warmup_rounds=3
    )
