"""Numba image episode kernel: a meta-batch of N-way K-shot episodes from an image cache.

The algorithm, the random stream and the output contract are those of the readable twin in
``_image_episodes_ref`` (read it first); this is the same loop compiled, writing straight into
preallocated uint8 arrays and reading only the picked images of the memory-mapped cache, so a
batch touches a few megabytes of a cache of any size. The hash and the rejection draw are
``_episodes``'s, so both kernels share one definition of the stream.

``image_episodes_available()`` compiles and runs it on a tiny input and compares it bit for bit
with the twin; numba is imported (through ``_episodes``) only by importing this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._episodes import (
    _ZERO,
    _draw_distinct,
    _mix,
    _njit,
    kernel_matches_twin,
    numba,
    prange,
)
from ._episodes_ref import ROTATIONS
from ._image_episodes_ref import (
    ImageEpisodes,
    check_image_arguments,
    sample_image_episodes_reference,
)

__all__ = ["PARALLEL", "ImageEpisodes", "image_episodes_available", "sample_image_episodes"]


PARALLEL = False
"""Whether ``prange`` over tasks runs on threads by default. Off for the reason ``_episodes``
gives (OpenMP's per-call barrier on a small shared CPU, and fork safety); ``parallel=True``
compiles a threaded copy for machines with cores to spare."""


@_njit(cache=True)
def _copy_image(src: np.ndarray, rotation: np.int64, dst: np.ndarray) -> None:
    """``dst = np.rot90(src, rotation).transpose(2, 0, 1)``: HWC uint8 in, CHW uint8 out."""
    channels, height, width = dst.shape
    for ch in range(channels):
        if rotation == 0:
            for y in range(height):
                for x in range(width):
                    dst[ch, y, x] = src[y, x, ch]
        elif rotation == 1:
            for y in range(height):
                for x in range(width):
                    dst[ch, y, x] = src[x, width - 1 - y, ch]
        elif rotation == 2:
            for y in range(height):
                for x in range(width):
                    dst[ch, y, x] = src[height - 1 - y, width - 1 - x, ch]
        else:
            for y in range(height):
                for x in range(width):
                    dst[ch, y, x] = src[height - 1 - x, y, ch]


@_njit(cache=True, nogil=True, parallel=PARALLEL)
def _image_kernel(
    images: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
    key: np.uint64,
    task_index: np.ndarray,
    shots: int,
    classes: np.ndarray,
    picks: np.ndarray,
    support_x: np.ndarray,
    support_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
) -> None:
    """Fill the preallocated outputs; task ``t`` writes only row ``t`` of each (prange-safe)."""
    n_tasks, ways = classes.shape
    queries = picks.shape[2] - shots
    n_pool = np.uint64(pool.shape[0])
    for t in prange(n_tasks):
        row = _mix(task_index[t] ^ key)
        j = _draw_distinct(row, _ZERO, n_pool, classes[t])
        for c in range(ways):
            classes[t, c] = pool[classes[t, c]]
        for c in range(ways):
            size = np.uint64(counts[classes[t, c] // ROTATIONS])
            j = _draw_distinct(row, j, size, picks[t, c])
        for c in range(ways):
            first = starts[classes[t, c] // ROTATIONS]
            rotation = classes[t, c] % ROTATIONS
            for s in range(shots):
                support_y[t, c * shots + s] = c
                _copy_image(images[first + picks[t, c, s]], rotation, support_x[t, c * shots + s])
            for q in range(queries):
                query_y[t, c * queries + q] = c
                _copy_image(
                    images[first + picks[t, c, shots + q]], rotation, query_x[t, c * queries + q]
                )


def sample_image_episodes(
    images: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    *,
    parallel: bool = PARALLEL,
) -> ImageEpisodes:
    """Gather ``len(task_index)`` N-way K-shot episodes from an ``(N, H, W, C)`` uint8 cache.

    ``starts``/``counts`` (int64) locate each class's images, ``pool`` holds the int64 ids
    ``class * 4 + rotation`` the split may use, ``key`` is ``core.rng.derive_key(seed, stream,
    iteration)``, ``task_index`` the int64 global task indices. Bit-identical to
    ``sample_image_episodes_reference``; raises ``ValueError`` for arguments it cannot sample
    from. ``parallel`` runs the tasks on numba's threads (compiled on first use).
    """
    key, ways, shots, queries = check_image_arguments(
        images, starts, counts, pool, key, task_index, ways, shots, queries
    )
    n, (height, width, channels) = len(task_index), images.shape[1:]
    out = ImageEpisodes(
        support_x=np.empty((n, ways * shots, channels, height, width), np.uint8),
        support_y=np.empty((n, ways * shots), np.int64),
        query_x=np.empty((n, ways * queries, channels, height, width), np.uint8),
        query_y=np.empty((n, ways * queries), np.int64),
        classes=np.empty((n, ways), np.int64),
        picks=np.empty((n, ways, shots + queries), np.int64),
    )
    kernel = _parallel_kernel() if parallel and not PARALLEL else _image_kernel
    with np.errstate(over="ignore"):  # NUMBA_DISABLE_JIT: NumPy uint64 scalars warn as they wrap
        kernel(
            images.view(np.ndarray),  # a memory map, seen as the plain array it is (no copy)
            np.ascontiguousarray(starts),
            np.ascontiguousarray(counts),
            np.ascontiguousarray(pool),
            np.uint64(key),
            np.ascontiguousarray(task_index).view(np.uint64),  # the same bits, as & MASK does
            shots,
            out.classes,
            out.picks,
            out.support_x,
            out.support_y,
            out.query_x,
            out.query_y,
        )
    return out


@functools.cache
def _parallel_kernel() -> Callable[..., None]:
    """``_image_kernel`` compiled with ``prange`` on threads (the plain one without numba)."""
    if numba is None:
        return _image_kernel
    return numba.njit(parallel=True)(_image_kernel.py_func)  # type: ignore[attr-defined]


@functools.cache
def image_episodes_available() -> bool:
    """Whether the compiled kernel runs here and matches the twin (checked once per process)."""
    # Real dtypes and layouts, classes of different sizes, and all four rotations in the pool.
    images = np.random.default_rng(0).integers(0, 256, (17, 5, 5, 3), dtype=np.uint8)
    starts, counts = np.array([0, 4, 9], np.int64), np.array([4, 5, 8], np.int64)
    args = (images, starts, counts, np.arange(12, dtype=np.int64), 0x0123_4567_89AB_CDEF)
    task_index = np.array([0, 7, -3], np.int64)
    cases = {
        "rotated pool": (
            sample_image_episodes,
            sample_image_episodes_reference,
            (*args, task_index, 3, 2, 2),
        )
    }
    return kernel_matches_twin("image episode kernel", cases)
