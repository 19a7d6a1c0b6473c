"""The numba image episode kernel against its numpy twin: bit for bit, on classes of different
sizes, colour and grey, with rotations, on a memory map; and the sampling contract itself."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from mamlflow.kernels import (
    ImageEpisodes,
    image_episodes_available,
    sample_image_episodes,
    sample_image_episodes_reference,
)

KEY = 0xDEAD_BEEF_0123_4567


def _data(channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(6, 15, 11).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    images = rng.integers(0, 256, (int(counts.sum()), 7, 7, channels), dtype=np.uint8)
    return images, starts, counts


def _equal(a: ImageEpisodes, b: ImageEpisodes) -> list[str]:
    return [
        f.name
        for f in fields(ImageEpisodes)
        if not (
            getattr(a, f.name).dtype == getattr(b, f.name).dtype
            and np.array_equal(getattr(a, f.name), getattr(b, f.name))
        )
    ]


@pytest.fixture(scope="module", autouse=True)
def _numba() -> None:
    if not image_episodes_available():
        pytest.skip("numba image episode kernel unavailable here")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rotations", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_kernel_equals_twin_bit_for_bit(channels: int, rotations: bool, parallel: bool) -> None:
    images, starts, counts = _data(channels)
    rot = np.arange(4 if rotations else 1)
    pool = (np.array([0, 2, 3, 5, 7, 8, 10])[:, None] * 4 + rot).reshape(-1).astype(np.int64)
    tasks = np.array([0, 1, 2, 99, -5, 2**40, 17], np.int64)
    for ways, shots, queries in ((5, 1, 5), (3, 2, 0), (7, 3, 3)):
        args = (images, starts, counts, pool, KEY, tasks, ways, shots, queries)
        got = sample_image_episodes(*args, parallel=parallel)
        want = sample_image_episodes_reference(*args)
        assert not _equal(got, want)
        assert got.support_x.shape == (len(tasks), ways * shots, channels, 7, 7)
        assert got.support_x.dtype == np.uint8


def test_episodes_follow_the_contract() -> None:
    images, starts, counts = _data()
    pool = (np.arange(11)[:, None] * 4 + np.arange(4)).reshape(-1).astype(np.int64)
    tasks = np.arange(50, dtype=np.int64)
    ep = sample_image_episodes(images, starts, counts, pool, KEY, tasks, 5, 2, 4)
    for t in range(50):
        assert len(set(ep.classes[t].tolist())) == 5 and set(ep.classes[t]) <= set(pool)
        for c, class_id in enumerate(ep.classes[t].tolist()):
            k, rotation = divmod(class_id, 4)
            picks = ep.picks[t, c]
            assert len(set(picks.tolist())) == 6 and picks.max() < counts[k]
            want = np.rot90(images[starts[k] + picks], rotation, axes=(1, 2)).transpose(0, 3, 1, 2)
            assert np.array_equal(ep.support_x[t, c * 2 : c * 2 + 2], want[:2])
            assert np.array_equal(ep.query_x[t, c * 4 : c * 4 + 4], want[2:])
    # Task i is the same whatever else is in the batch; another key gives other tasks.
    part = sample_image_episodes(images, starts, counts, pool, KEY, tasks[[9, 3]], 5, 2, 4)
    assert np.array_equal(part.query_x, ep.query_x[[9, 3]])
    other = sample_image_episodes(images, starts, counts, pool, KEY + 1, tasks, 5, 2, 4)
    assert not np.array_equal(other.classes, ep.classes)


def test_kernel_reads_a_memory_map(tmp_path: Path) -> None:
    images, starts, counts = _data()
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    pool = np.arange(0, 44, 4, dtype=np.int64)
    args = (starts, counts, pool, KEY, np.arange(4, dtype=np.int64), 4, 1, 3)
    assert not _equal(
        sample_image_episodes(mapped, *args), sample_image_episodes_reference(images, *args)
    )


def test_arguments_it_cannot_sample_from_are_refused() -> None:
    images, starts, counts = _data()
    pool = np.arange(0, 44, 4, dtype=np.int64)
    tasks = np.arange(2, dtype=np.int64)
    smallest = int(counts.min())
    with pytest.raises(ValueError, match="smallest class"):
        sample_image_episodes(images, starts, counts, pool, KEY, tasks, 3, smallest, 1)
    with pytest.raises(ValueError, match="exceeds the 11 classes"):
        sample_image_episodes(images, starts, counts, pool, KEY, tasks, 12, 1, 1)
    with pytest.raises(ValueError, match="pool ids"):
        sample_image_episodes(images, starts, counts, pool + 4, KEY, tasks, 3, 1, 1)
    with pytest.raises(ValueError, match="images must be"):
        sample_image_episodes(images.astype(np.float32), starts, counts, pool, KEY, tasks, 3, 1, 1)
