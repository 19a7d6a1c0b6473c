"""Numba episode kernel: a whole meta-batch of N-way K-shot episodes gathered in one call.

The algorithm, the random stream and the output contract are those of the readable twin in
``_episodes_ref`` (read it first); this module is the same loop compiled, writing straight into
preallocated float32 arrays. ``numba_available()`` compiles and runs it on a tiny input and
compares it bit for bit with the twin, so a caller can fall back to the twin when it is False.

numba is imported here and nowhere else in the package: ``mamlflow.kernels`` must not import it,
so callers import this module lazily. A missing or broken numba (it refuses NumPy versions newer
than it knows) makes ``numba_available()`` False instead of breaking the import.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from ._episodes_ref import (
    ROTATIONS,
    Episodes,
    check_arguments,
    sample_episodes_reference,
)

try:
    import numba
    from numba import prange

    _IMPORT_ERROR: Exception | None = None
except Exception as error:  # ImportError, or numba rejecting the installed NumPy
    numba = None
    prange = range
    _IMPORT_ERROR = error

__all__ = ["Episodes", "numba_available", "sample_episodes"]

log = logging.getLogger("mamlflow.kernels")

PARALLEL = False
"""Whether ``prange`` over a meta-batch's tasks runs on threads. Off, by measurement: on the
2-core CPU shared with torch's threads, OpenMP's per-call barrier made a 32-task batch 4-7x
slower at the median (best case 2x faster); and GNU OpenMP is not fork-safe, which a forking
data loader would trip over. ``benchmarks/test_bench_episodes.py`` times both; see its README."""


def _njit(**options: bool) -> Callable[[Callable[..., object]], Callable[..., object]]:
    if numba is None:
        return lambda function: function
    return numba.njit(**options)


# splitmix64 constants as uint64: in numba, mixing uint64 with an int64 literal yields float64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)
_ZERO, _ONE = np.uint64(0), np.uint64(1)
_N_ROTATIONS = np.uint64(ROTATIONS)
_INK = np.float32(255.0)


@_njit(cache=True)
def _mix(z: np.uint64) -> np.uint64:
    # splitmix64, as core.rng._mix_int; uint64 arithmetic wraps modulo 2**64.
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_njit(cache=True)
def _draw_distinct(row: np.uint64, j: np.uint64, n: np.uint64, out: np.ndarray) -> np.uint64:
    """Fill ``out`` with distinct integers in ``[0, n)`` by rejection; return the next ``j``."""
    filled = 0
    while filled < out.shape[0]:
        # below(u, n) of the twin: exact in uint64 for n <= 2**32.
        value = np.int64(((_mix(row + j) >> _S32) * n) >> _S32)
        j += _ONE
        taken = False
        for k in range(filled):
            if out[k] == value:
                taken = True
                break
        if not taken:
            out[filled] = value
            filled += 1
    return j


@_njit(cache=True)
def _copy_rotated(src: np.ndarray, rotation: np.int64, dst: np.ndarray) -> None:
    """``dst = np.rot90(src, rotation) / 255`` in float32 (odd rotations need a square ``src``)."""
    height, width = dst.shape
    # Loops write ``dst`` in order; rotation 0 (the common case) then vectorises.
    if rotation == 0:
        for y in range(height):
            for x in range(width):
                dst[y, x] = np.float32(src[y, x]) / _INK
    elif rotation == 1:
        for y in range(height):
            for x in range(width):
                dst[y, x] = np.float32(src[x, width - 1 - y]) / _INK
    elif rotation == 2:
        for y in range(height):
            for x in range(width):
                dst[y, x] = np.float32(src[height - 1 - y, width - 1 - x]) / _INK
    else:
        for y in range(height):
            for x in range(width):
                dst[y, x] = np.float32(src[height - 1 - x, y]) / _INK


@_njit(cache=True, nogil=True, parallel=PARALLEL)
def _sample_kernel(
    images: np.ndarray,
    pool: np.ndarray,
    key: np.uint64,
    task_index: np.ndarray,
    shots: int,
    random_rotation: bool,
    classes: np.ndarray,
    drawings: np.ndarray,
    support_x: np.ndarray,
    support_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
) -> None:
    """Fill the preallocated outputs; task ``t`` writes only row ``t`` of each (prange-safe)."""
    n_tasks, ways = classes.shape
    per_class = drawings.shape[2]
    queries = per_class - shots
    n_pool = np.uint64(pool.shape[0])
    n_drawings = np.uint64(images.shape[1])
    for t in prange(n_tasks):
        row = _mix(task_index[t] ^ key)
        # Pool positions first, then the rotations (if drawn), then each class's drawings, on
        # one running counter j.
        j = _draw_distinct(row, _ZERO, n_pool, classes[t])
        for c in range(ways):
            classes[t, c] = pool[classes[t, c]]
        if random_rotation:
            for c in range(ways):
                classes[t, c] += np.int64(((_mix(row + j) >> _S32) * _N_ROTATIONS) >> _S32)
                j += _ONE
        for c in range(ways):
            j = _draw_distinct(row, j, n_drawings, drawings[t, c])
        for c in range(ways):
            character = classes[t, c] // ROTATIONS
            rotation = classes[t, c] % ROTATIONS
            for s in range(shots):
                support_y[t, c * shots + s] = c
                _copy_rotated(
                    images[character, drawings[t, c, s]], rotation, support_x[t, c * shots + s, 0]
                )
            for q in range(queries):
                query_y[t, c * queries + q] = c
                _copy_rotated(
                    images[character, drawings[t, c, shots + q]],
                    rotation,
                    query_x[t, c * queries + q, 0],
                )


def sample_episodes(
    images: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    *,
    random_rotation: bool = False,
    parallel: bool = PARALLEL,
) -> Episodes:
    """Gather ``len(task_index)`` N-way K-shot episodes (with ``queries`` per class).

    ``images`` is uint8 ``(characters, drawings, H, W)`` and C-contiguous; ``pool`` the int64 class
    ids this split may use (``character * 4 + rotation``); ``key`` is
    ``core.rng.derive_key(seed, stream, iteration)``; ``task_index`` the int64 global task indices.
    Task ``t``'s episode depends only on ``key`` and ``task_index[t]`` (and the data and sizes),
    bit-identical to ``_episodes_ref.sample_episodes_reference``. ``random_rotation`` makes the
    ``ways`` draws distinct characters from a pool of upright ids (``character * 4``), each at a
    rotation drawn per task and character, instead of distinct classes from the pool. Raises
    ``ValueError`` for arguments it cannot sample from. Call ``numba_available()`` first: without
    a working numba this runs the kernel as plain Python, pixel by pixel: correct, but far slower
    than the twin.
    ``parallel`` runs the tasks on numba's threads (compiled on first use, not cached on disk;
    see ``PARALLEL`` for why it is off by default).
    """
    key, ways, shots, queries = check_arguments(
        images, pool, key, task_index, ways, shots, queries, random_rotation
    )
    n, (height, width) = len(task_index), images.shape[2:]
    out = Episodes(
        support_x=np.empty((n, ways * shots, 1, height, width), np.float32),
        support_y=np.empty((n, ways * shots), np.int64),
        query_x=np.empty((n, ways * queries, 1, height, width), np.float32),
        query_y=np.empty((n, ways * queries), np.int64),
        classes=np.empty((n, ways), np.int64),
        drawings=np.empty((n, ways, shots + queries), np.int64),
    )
    # Under NUMBA_DISABLE_JIT the kernel runs on NumPy uint64 scalars, which warn as they wrap.
    kernel = _parallel_kernel() if parallel and not PARALLEL else _sample_kernel
    with np.errstate(over="ignore"):
        kernel(
            images,
            np.ascontiguousarray(pool),
            np.uint64(key),
            np.ascontiguousarray(task_index).view(np.uint64),  # the same bits, as & MASK does
            shots,
            bool(random_rotation),
            out.classes,
            out.drawings,
            out.support_x,
            out.support_y,
            out.query_x,
            out.query_y,
        )
    return out


@functools.cache
def _parallel_kernel() -> Callable[..., None]:
    """``_sample_kernel`` compiled with ``prange`` on threads (the plain one without numba)."""
    if numba is None:
        return _sample_kernel
    return numba.njit(parallel=True)(_sample_kernel.py_func)  # type: ignore[attr-defined]


@functools.cache
def numba_available() -> bool:
    """Whether the compiled kernel runs here and matches the twin (checked once per process).

    On any failure it logs why on the ``mamlflow.kernels`` logger and returns False, so the
    caller uses ``sample_episodes_reference`` instead.
    """
    # A tiny input with the real dtypes and layouts, so this compiles the signature callers use;
    # both ways to fill a task: distinct classes of a rotated pool, distinct upright characters.
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 6), dtype=np.uint8)
    task_index = np.array([0, 7, -3], np.int64)
    modes = {False: np.arange(12, dtype=np.int64), True: np.arange(0, 12, 4, dtype=np.int64)}
    cases = {
        f"random_rotation={rotate}": (
            functools.partial(sample_episodes, random_rotation=rotate),
            functools.partial(sample_episodes_reference, random_rotation=rotate),
            (images, pool, 0x0123_4567_89AB_CDEF, task_index, 3, 2, 2),
        )
        for rotate, pool in modes.items()
    }
    return kernel_matches_twin("episode kernel", cases)


def kernel_matches_twin(
    what: str, cases: dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]]
) -> bool:
    """Whether numba imports and, for every case ``(kernel, twin, args)``, ``kernel(*args)``
    runs and equals ``twin(*args)`` field by field (dataclass results); logs why not.

    The availability probe of every numba data kernel: a kernel that cannot compile, fails or
    disagrees on any case means "sample with the numpy twin", never a wrong episode.
    """
    if _IMPORT_ERROR is not None:
        log.warning(
            "numba %s unavailable (%s: %s); sampling with the numpy twin",
            what,
            type(_IMPORT_ERROR).__name__,
            _IMPORT_ERROR,
        )
        return False
    differ: list[str] = []
    for label, (kernel, twin, args) in cases.items():
        try:
            got, want = kernel(*args), twin(*args)
        except Exception as error:  # a compile or runtime failure of any kind means "fall back"
            log.warning(
                "numba %s failed its probe (%s: %s); sampling with the numpy twin",
                what,
                type(error).__name__,
                error,
            )
            return False
        differ += [
            f"{f.name} ({label})"
            for f in fields(got)
            if not np.array_equal(getattr(got, f.name), getattr(want, f.name))
        ]
    if differ:
        log.warning(
            "numba %s disagrees with its numpy twin on %s; sampling with the twin",
            what,
            ", ".join(differ),
        )
        return False
    return True
