"""Reference twin of the numba image episode kernel: classes of any size, colour, rotations.

The images of every class lie in one uint8 array ``images`` of shape ``(N, H, W, C)`` (an image
cache, memory-mapped): class ``k`` is ``images[starts[k] : starts[k] + counts[k]]``, and classes
may hold different numbers of images. Pool ids are ``class * 4 + rotation`` as in Omniglot:
rotation ``r`` turns the image by ``r * 90°`` counter-clockwise (``np.rot90``), so a pool holding
all four ids of a class makes each rotation a class of its own.

Randomness is the counter-based stream of ``_episodes_ref`` (read it first): task ``i`` reads
``u_j = mix(mix(task_index[i] ^ key) + j)``, so its episode is a pure function of the data,
``key`` and ``task_index[i]``. The draws are consumed in this order:

1. ``ways`` distinct positions in ``pool``, by rejection (every draw consumes one ``j``);
2. for each chosen class in order, ``shots + queries`` distinct positions in ``[0, counts[k])``,
   by rejection, on the same running ``j``; the first ``shots`` go to the support set.

Outputs stay uint8 in channels-first layout ``(T, ways * shots, C, H, W)``: scaling and
normalising are the caller's, in torch, so no float copy of an image is made here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._episodes_ref import (
    _MASK,
    ROTATIONS,
    _draw_distinct,
    _stream,
    check_arrays,
    checked_integer,
)

__all__ = ["ImageEpisodes", "check_image_arguments", "sample_image_episodes_reference"]


@dataclass(frozen=True)
class ImageEpisodes:
    """A meta-batch of ``T`` image episodes with a leading task dimension.

    ``classes[t, c]`` is the pool id (``class * 4 + rotation``) labelled ``c`` in task ``t``;
    ``picks[t, c]`` the positions of its images within the class, support first.
    """

    support_x: np.ndarray  # uint8 (T, ways * shots, C, H, W)
    support_y: np.ndarray  # int64 (T, ways * shots), labels 0 .. ways - 1, class by class
    query_x: np.ndarray  # uint8 (T, ways * queries, C, H, W)
    query_y: np.ndarray  # int64 (T, ways * queries)
    classes: np.ndarray  # int64 (T, ways)
    picks: np.ndarray  # int64 (T, ways, shots + queries)


def check_image_arguments(
    images: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
) -> tuple[int, int, int, int]:
    """Raise ``ValueError`` for anything either implementation cannot sample from.

    Returns ``(key, ways, shots, queries)`` as plain ints.
    """
    ways, shots = checked_integer("ways", ways, 1), checked_integer("shots", shots, 1)
    queries, key = checked_integer("queries", queries, 0), checked_integer("key", key, 0)
    if key > _MASK:
        raise ValueError(f"key must be a 64-bit unsigned integer (derive_key), got {key}")
    check_arrays(
        ("images", images, np.uint8, 4),
        ("starts", starts, np.int64, 1),
        ("counts", counts, np.int64, 1),
        ("pool", pool, np.int64, 1),
        ("task_index", task_index, np.int64, 1),
    )
    if not images.flags.c_contiguous:
        raise ValueError("images must be C-contiguous (the cache's memory map is)")
    n_images, height, width, _ = images.shape
    n_classes = len(starts)
    if len(counts) != n_classes:
        raise ValueError(f"starts and counts differ in length ({n_classes} vs {len(counts)})")
    if n_classes and (starts.min() < 0 or (starts + counts).max() > n_images or counts.min() < 0):
        raise ValueError(f"class ranges starts..starts+counts must lie in [0, {n_images}]")
    if len(pool) == 0:
        raise ValueError("pool is empty")
    if ways > len(pool):
        raise ValueError(f"ways={ways} exceeds the {len(pool)} classes in the pool")
    low, high = int(pool.min()), int(pool.max())
    if low < 0 or high >= n_classes * ROTATIONS:
        raise ValueError(
            f"pool ids must lie in [0, {n_classes * ROTATIONS}) for {n_classes} classes "
            f"(id = class * {ROTATIONS} + rotation), got [{low}, {high}]"
        )
    if np.bincount(pool, minlength=n_classes * ROTATIONS).max() > 1:
        raise ValueError("pool holds duplicate class ids, so classes in a task could repeat")
    smallest = int(counts[pool // ROTATIONS].min())
    if shots + queries > smallest:
        raise ValueError(
            f"shots + queries = {shots + queries} exceeds the {smallest} images of the pool's "
            "smallest class"
        )
    if height != width and bool(np.any(pool % ROTATIONS != 0)):
        raise ValueError(f"rotated classes need square images, got {height}x{width}")
    return key, ways, shots, queries


def sample_image_episodes_reference(
    images: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
) -> ImageEpisodes:
    """Readable twin of ``_image_episodes.sample_image_episodes``: bit-identical output."""
    key, ways, shots, queries = check_image_arguments(
        images, starts, counts, pool, key, task_index, ways, shots, queries
    )
    per_class = shots + queries
    n, (height, width, channels) = len(task_index), images.shape[1:]
    support_x = np.empty((n, ways, shots, channels, height, width), np.uint8)
    query_x = np.empty((n, ways, queries, channels, height, width), np.uint8)
    classes = np.empty((n, ways), np.int64)
    picks = np.empty((n, ways, per_class), np.int64)
    for t, index in enumerate(task_index.tolist()):
        next_draw = _stream(key, index).__next__
        classes[t] = [int(pool[p]) for p in _draw_distinct(next_draw, len(pool), ways)]
        for c, class_id in enumerate(classes[t].tolist()):
            picks[t, c] = _draw_distinct(next_draw, int(counts[class_id // ROTATIONS]), per_class)
        for c, class_id in enumerate(classes[t].tolist()):
            k, rotation = divmod(class_id, ROTATIONS)
            pixels = np.rot90(images[starts[k] + picks[t, c]], rotation, axes=(1, 2))
            chw = pixels.transpose(0, 3, 1, 2)  # (per_class, C, H, W)
            support_x[t, c], query_x[t, c] = chw[:shots], chw[shots:]
    return ImageEpisodes(
        support_x=support_x.reshape(n, ways * shots, channels, height, width),
        support_y=np.tile(np.repeat(np.arange(ways, dtype=np.int64), shots), (n, 1)),
        query_x=query_x.reshape(n, ways * queries, channels, height, width),
        query_y=np.tile(np.repeat(np.arange(ways, dtype=np.int64), queries), (n, 1)),
        classes=classes,
        picks=picks,
    )
