"""Reference twin of the numba episode kernel: the same algorithm in readable numpy and Python.

An episode (one task) is N-way K-shot with Q queries per class, drawn from a uint8 image array
``images[character, drawing]``. Classes are ``character * 4 + rotation``: rotation ``k`` turns
the drawing by ``k * 90°`` counter-clockwise, as ``np.rot90`` does (Santoro et al. 2016).

Randomness is counter-based (``mamlflow.core.rng``): task ``i`` reads the stream
``u_j = mix(mix(task_index[i] ^ key) + j)``, ``j = 0, 1, 2, …``, so a task's episode is a pure
function of ``(images, pool, key, task_index[i], ways, shots, queries)`` — the same wherever it
lands in a meta-batch or a shard. The draws are consumed in this order:

1. ``ways`` distinct positions in ``pool``, by rejection: draw ``below(u_j, len(pool))``; if that
   position is already taken, draw again. Every draw, rejected or not, consumes one ``j``.
2. Only with ``random_rotation``: for each chosen class in order, one rotation
   ``below(u_j, 4)``, added to its (upright) pool id.
3. For each chosen class in order, ``shots + queries`` distinct drawings, by rejection, with the
   same running ``j``. The first ``shots`` go to the support set, the rest to the query set.

Two ways to fill a task, the ``random_rotation`` switch:

* off: ``pool`` holds whatever class ids the split may use, rotated ones included, and a task
  gets ``ways`` distinct classes. Two rotations of one character can share a task.
* on: ``pool`` holds upright ids (``character * 4``), one per character, so a task gets ``ways``
  distinct characters, each turned by a rotation drawn per task and character (Finn et al.'s
  Omniglot sampling). Step 2 reads the same stream, so the task stays a pure function of its key
  and index.

Labels are the class's position in the chosen order. This module also defines the contract both
implementations share: ``Episodes``, the argument checks, and ``below``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from ..core import rng

__all__ = ["Episodes", "below", "sample_episodes_reference", "task_stream"]

ROTATIONS = 4
"""Class ids are ``character * ROTATIONS + rotation``."""

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Episodes:
    """A meta-batch of ``T`` episodes as arrays with a leading task dimension.

    ``classes[t, c]`` is the class id (``character * 4 + rotation``) labelled ``c`` in task ``t``,
    and ``drawings[t, c]`` its drawings: the first ``shots`` are in the support set, the rest in
    the query set, in that order.
    """

    support_x: np.ndarray  # float32 (T, ways * shots, 1, H, W), in [0, 1]
    support_y: np.ndarray  # int64 (T, ways * shots), labels 0 .. ways - 1, class by class
    query_x: np.ndarray  # float32 (T, ways * queries, 1, H, W)
    query_y: np.ndarray  # int64 (T, ways * queries)
    classes: np.ndarray  # int64 (T, ways)
    drawings: np.ndarray  # int64 (T, ways, shots + queries)


def below(u: int, n: int) -> int:
    """An integer in ``[0, n)`` from a 64-bit draw ``u``: ``((u >> 32) * n) >> 32``.

    Multiply-shift on the top 32 bits (Lemire 2019, without the rejection step): exact integer
    arithmetic whose product stays below ``2**64`` for every ``n <= 2**32``, so the numba kernel
    computes it in uint64 without overflow. Its bias, at most ``n / 2**32`` per value, is below
    ``2e-6`` for any Omniglot pool.
    """
    return ((u >> 32) * n) >> 32


def task_stream(key: int, task_index: int, count: int) -> list[int]:
    """The first ``count`` 64-bit draws ``u_j`` of one task: the hash of ``uniform_reference``."""
    return list(islice(_stream(key, task_index), count))


def _draw_distinct(next_draw: Callable[[], int], n: int, count: int) -> list[int]:
    """``count`` distinct integers in ``[0, n)`` by rejection, in the order they were drawn."""
    chosen: list[int] = []
    while len(chosen) < count:
        value = below(next_draw(), n)
        if value not in chosen:
            chosen.append(value)
    return chosen


def _stream(key: int, task_index: int) -> Iterator[int]:
    """An endless iterator over the task's draws ``u_0, u_1, …``."""
    row = rng.mix64((task_index & _MASK) ^ key)
    j = 0
    while True:
        yield rng.mix64((row + j) & _MASK)
        j += 1


def checked_integer(name: str, value: object, low: int) -> int:
    """``value`` as an int of at least ``low``; a bool or a non-integer is a ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        n = operator.index(value)  # type: ignore[arg-type]  # checked right here
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if n < low:
        raise ValueError(f"{name} must be >= {low}, got {n}")
    return n


def check_arrays(*specs: tuple[str, object, type, int]) -> None:
    """Each ``(name, array, dtype, ndim)`` is a numpy array of that dtype and rank, or a
    ``ValueError`` naming it: the compiled kernels would otherwise fail without saying which."""
    for name, array, dtype, ndim in specs:
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.dtype != dtype or array.ndim != ndim:
            raise ValueError(
                f"{name} must be a {ndim}-d {np.dtype(dtype)} array, "
                f"got {array.ndim}-d {array.dtype} of shape {array.shape}"
            )


def check_arguments(
    images: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    random_rotation: bool = False,
) -> tuple[int, int, int, int]:
    """Raise ``ValueError`` for anything either implementation cannot sample from.

    Returns ``(key, ways, shots, queries)`` as plain ints.
    """

    ways = checked_integer("ways", ways, 1)
    shots = checked_integer("shots", shots, 1)
    queries = checked_integer("queries", queries, 0)
    key = checked_integer("key", key, 0)
    if not isinstance(random_rotation, (bool, np.bool_)):
        raise ValueError(f"random_rotation must be True or False, got {random_rotation!r}")
    if key > _MASK:
        raise ValueError(f"key must be a 64-bit unsigned integer (derive_key), got {key}")
    check_arrays(
        ("images", images, np.uint8, 4),
        ("pool", pool, np.int64, 1),
        ("task_index", task_index, np.int64, 1),
    )
    if not images.flags.c_contiguous:
        raise ValueError("images must be C-contiguous (np.ascontiguousarray it once, at load)")
    characters, drawings, height, width = images.shape
    if len(pool) == 0:
        raise ValueError("pool is empty")
    if ways > len(pool):
        what = "characters (upright ids)" if random_rotation else "classes"
        raise ValueError(f"ways={ways} exceeds the {len(pool)} {what} in the pool")
    if shots + queries > drawings:
        raise ValueError(
            f"shots + queries = {shots + queries} exceeds the {drawings} drawings per character"
        )
    low, high = int(pool.min()), int(pool.max())
    if low < 0 or high >= characters * ROTATIONS:
        raise ValueError(
            f"pool ids must lie in [0, {characters * ROTATIONS}) for {characters} characters "
            f"(id = character * {ROTATIONS} + rotation), got [{low}, {high}]"
        )
    # bincount, not np.unique: ~50x faster on an Omniglot pool, and this runs every meta-batch.
    if np.bincount(pool, minlength=characters * ROTATIONS).max() > 1:
        raise ValueError("pool holds duplicate class ids, so classes in a task could repeat")
    # Only the cases that need it pay for the pool % 4 pass (the common square one does not).
    if random_rotation and bool(np.any(rotated := pool % ROTATIONS != 0)):
        raise ValueError(
            f"random_rotation draws the rotation itself: the pool must hold upright ids "
            f"(character * {ROTATIONS}), got {int(pool[np.argmax(rotated)])}"
        )
    if height != width and (random_rotation or bool(np.any(pool % ROTATIONS != 0))):
        raise ValueError(f"rotated classes need square images, got {height}x{width}")
    return key, ways, shots, queries


def sample_episodes_reference(
    images: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    *,
    random_rotation: bool = False,
) -> Episodes:
    """Readable twin of ``mamlflow.kernels._episodes.sample_episodes``: bit-identical output.

    ``random_rotation`` draws ``ways`` distinct characters from a pool of upright ids, each at a
    random rotation, instead of ``ways`` distinct classes from the pool (see the module text).
    """
    key, ways, shots, queries = check_arguments(
        images, pool, key, task_index, ways, shots, queries, random_rotation
    )
    per_class = shots + queries
    support_x, support_y, query_x, query_y, classes, drawings = [], [], [], [], [], []
    for t in task_index.tolist():
        next_draw = _stream(key, t).__next__
        positions = _draw_distinct(next_draw, len(pool), ways)
        task_classes = [int(pool[p]) for p in positions]
        if random_rotation:
            # One quarter-turn count per chosen character, after the characters, in their order.
            task_classes = [c + below(next_draw(), ROTATIONS) for c in task_classes]
        # Drawings are drawn after all the classes, continuing the same stream.
        task_drawings = [_draw_distinct(next_draw, images.shape[1], per_class) for _ in positions]
        xs = []
        for class_id, chosen in zip(task_classes, task_drawings, strict=True):
            character, rotation = divmod(class_id, ROTATIONS)
            pixels = np.rot90(images[character, chosen], rotation, axes=(1, 2))
            xs.append(pixels.astype(np.float32) / np.float32(255.0))
        x = np.stack(xs)[:, :, None]  # (ways, shots + queries, 1, H, W)
        support_x.append(x[:, :shots].reshape(ways * shots, *x.shape[2:]))
        query_x.append(x[:, shots:].reshape(ways * queries, *x.shape[2:]))
        support_y.append(np.repeat(np.arange(ways), shots))
        query_y.append(np.repeat(np.arange(ways), queries))
        classes.append(task_classes)
        drawings.append(task_drawings)

    n, (height, width) = len(task_index), images.shape[2:]
    return Episodes(
        support_x=np.array(support_x, np.float32).reshape(n, ways * shots, 1, height, width),
        support_y=np.array(support_y, np.int64).reshape(n, ways * shots),
        query_x=np.array(query_x, np.float32).reshape(n, ways * queries, 1, height, width),
        query_y=np.array(query_y, np.int64).reshape(n, ways * queries),
        classes=np.array(classes, np.int64).reshape(n, ways),
        drawings=np.array(drawings, np.int64).reshape(n, ways, per_class),
    )
