"""The numba episode kernel against its numpy twin, and the sampling promises both make.

Parity is bit for bit, over every output array, with and without ``random_rotation``. The
promises: a task's episode is a pure function of (key, global task index) — the same in any batch
or shard — drawn from the counter-based stream of ``core.rng`` in the documented order; classes
are distinct within a task (characters too, with ``random_rotation``, whose rotations spread over
all four) and drawings within a class; labels count out ``shots``/``queries`` per class; rotation
``k`` is ``np.rot90`` by ``k`` quarter turns counter-clockwise; without ``random_rotation`` the
episodes are bit for bit those from before the switch existed (pinned by hashes). The images are
synthetic (seeded noise plus a few asymmetric shapes, so every rotation changes the pixels); the
Omniglot loader is tested apart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import fields

import numpy as np
import pytest

from mamlflow.kernels import _episodes
from mamlflow.kernels._episodes import numba_available, sample_episodes
from mamlflow.kernels._episodes_ref import Episodes, below, sample_episodes_reference, task_stream
from mamlflow.rng import derive_key, uniform_reference

CHARACTERS, DRAWINGS, SIZE = 30, 20, 28
KEY = derive_key(0, 1, 7)  # (seed, stream, iteration)


def _make_images() -> np.ndarray:
    images = np.random.default_rng(0).integers(
        0, 256, (CHARACTERS, DRAWINGS, SIZE, SIZE), dtype=np.uint8
    )
    # Characters 0-3: blank paper with an 'L' of ink in the top-left corner, one per drawing
    # offset, so each rotation of each drawing is a different image.
    images[:4] = 0
    for d in range(DRAWINGS):
        images[:4, d, 2 : 12 + d // 2, 3] = 255
        images[:4, d, 12 + d // 2, 3:9] = 255
    return images


IMAGES = _make_images()
ALL_CLASSES = np.arange(CHARACTERS * 4, dtype=np.int64)
UPRIGHT = np.arange(0, CHARACTERS * 4, 4, dtype=np.int64)  # a pool without rotations
SOME_CLASSES = np.array([5, 9, 17, 40, 41, 42, 43, 60, 99, 118], dtype=np.int64)
SOME_CHARACTERS = np.array([4, 8, 40, 60, 96, 116], dtype=np.int64)  # upright ids of 6 characters
EXTREME_TASKS = np.array([-(2**63), -1, 0, 1, 2**31, 2**32 + 7, 2**63 - 1], dtype=np.int64)

Sampler = Callable[..., Episodes]
SAMPLERS = [
    pytest.param(sample_episodes, id="numba"),
    pytest.param(sample_episodes_reference, id="twin"),
]


def _assert_same(got: Episodes, want: Episodes) -> None:
    for f in fields(Episodes):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape, f.name
        assert np.array_equal(a, b), f"{f.name} differs"


def _digest(episodes: Episodes) -> str:
    """sha256 (first 16 hex digits) of every output array with its dtype and shape."""
    h = hashlib.sha256()
    for f in fields(Episodes):
        a = np.ascontiguousarray(getattr(episodes, f.name))
        h.update(f"{f.name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "pool", "task_index", "random_rotation"),
    [
        pytest.param(5, 1, 15, ALL_CLASSES, np.arange(32), False, id="5w1s15q-rotations-T32"),
        pytest.param(5, 5, 15, ALL_CLASSES, np.arange(100, 108), False, id="5w5s15q-rotations"),
        pytest.param(20, 1, 5, UPRIGHT, np.arange(4), False, id="20w1s5q-upright"),
        pytest.param(3, 2, 0, SOME_CLASSES, np.arange(3), False, id="3w2s0q-subset"),
        # Every class of the pool and every drawing: rejection has to find all of them.
        pytest.param(10, 12, 8, SOME_CLASSES, np.arange(5), False, id="whole-pool-all-drawings"),
        pytest.param(4, 1, 3, ALL_CLASSES, EXTREME_TASKS, False, id="extreme-task-indices"),
        pytest.param(1, 1, 1, UPRIGHT, np.arange(0), False, id="empty-batch"),
        # The same with a rotation drawn per task and character from a pool of upright ids.
        pytest.param(5, 1, 15, UPRIGHT, np.arange(32), True, id="5w1s15q-random-rotation-T32"),
        pytest.param(20, 5, 5, UPRIGHT, np.arange(100, 108), True, id="20w5s5q-random-rotation"),
        pytest.param(6, 12, 8, SOME_CHARACTERS, np.arange(5), True, id="random-rotation-all"),
        pytest.param(4, 1, 3, UPRIGHT, EXTREME_TASKS, True, id="random-rotation-extreme-tasks"),
        pytest.param(1, 1, 1, UPRIGHT, np.arange(0), True, id="random-rotation-empty-batch"),
    ],
)
@pytest.mark.parametrize("key", [KEY, 0, (1 << 64) - 1], ids=["key", "0", "2**64-1"])
def test_numba_matches_twin_bit_for_bit(
    ways: int,
    shots: int,
    queries: int,
    pool: np.ndarray,
    task_index: np.ndarray,
    random_rotation: bool,
    key: int,
) -> None:
    args = (IMAGES, pool, key, task_index.astype(np.int64), ways, shots, queries)
    got = sample_episodes(*args, random_rotation=random_rotation)
    _assert_same(got, sample_episodes_reference(*args, random_rotation=random_rotation))
    n = len(task_index)
    assert got.support_x.shape == (n, ways * shots, 1, SIZE, SIZE)
    assert got.query_x.shape == (n, ways * queries, 1, SIZE, SIZE)
    assert got.support_x.dtype == np.float32 and got.support_y.dtype == np.int64


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_call_twice_is_identical(sampler: Sampler) -> None:
    args = (IMAGES, ALL_CLASSES, KEY, np.arange(6), 5, 1, 5)
    _assert_same(sampler(*args), sampler(*args))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("pool", "random_rotation"),
    [(ALL_CLASSES, False), (UPRIGHT, True)],
    ids=["distinct-classes", "random-rotation"],
)
def test_a_task_is_the_same_in_any_batch_or_shard(
    sampler: Sampler, pool: np.ndarray, random_rotation: bool
) -> None:
    whole = sampler(IMAGES, pool, KEY, np.arange(8), 5, 2, 3, random_rotation=random_rotation)
    for shard in ([3, 4], [4, 3], [7, 0, 5]):
        part = sampler(IMAGES, pool, KEY, np.array(shard), 5, 2, 3, random_rotation=random_rotation)
        for f in fields(Episodes):
            assert np.array_equal(getattr(part, f.name), getattr(whole, f.name)[shard]), f.name


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_labels_classes_and_drawings(sampler: Sampler) -> None:
    ways, shots, queries = 5, 3, 4
    e = sampler(IMAGES, SOME_CLASSES, KEY, np.arange(40), ways, shots, queries)
    for t in range(40):
        assert np.array_equal(e.support_y[t], np.repeat(np.arange(ways), shots))
        assert np.array_equal(e.query_y[t], np.repeat(np.arange(ways), queries))
        assert len(set(e.classes[t].tolist())) == ways
        assert set(e.classes[t].tolist()) <= set(SOME_CLASSES.tolist())
        for c in range(ways):
            assert len(set(e.drawings[t, c].tolist())) == shots + queries
            assert e.drawings[t, c].min() >= 0 and e.drawings[t, c].max() < DRAWINGS
    # Over 40 tasks the sampler reaches every class of a 10-class pool.
    assert set(e.classes.ravel().tolist()) == set(SOME_CLASSES.tolist())


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("pool", "random_rotation"),
    [(ALL_CLASSES, False), (UPRIGHT, True)],
    ids=["distinct-classes", "random-rotation"],
)
def test_pixels_are_the_rotated_drawings_over_255(
    sampler: Sampler, pool: np.ndarray, random_rotation: bool
) -> None:
    shots, queries = 2, 3
    e = sampler(
        IMAGES, pool, KEY, np.arange(12), 6, shots, queries, random_rotation=random_rotation
    )
    seen_rotations = set()
    for t, c in np.ndindex(*e.classes.shape):
        character, rotation = divmod(int(e.classes[t, c]), 4)
        seen_rotations.add(rotation)
        want = np.rot90(IMAGES[character, e.drawings[t, c]], rotation, axes=(1, 2))
        want = want.astype(np.float32) / np.float32(255.0)
        assert np.array_equal(e.support_x[t, c * shots : (c + 1) * shots, 0], want[:shots])
        assert np.array_equal(e.query_x[t, c * queries : (c + 1) * queries, 0], want[shots:])
    assert seen_rotations == {0, 1, 2, 3}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_rotation_turns_counter_clockwise(sampler: Sampler) -> None:
    # One ink pixel in the top-right corner of every drawing of character 0.
    images = np.zeros((1, 4, 5, 5), np.uint8)
    images[0, :, 0, 4] = 255
    corners = {0: (0, 4), 1: (0, 0), 2: (4, 0), 3: (4, 4)}  # quarter turns counter-clockwise
    for rotation, (y, x) in corners.items():
        pool = np.array([rotation], np.int64)
        e = sampler(images, pool, KEY, np.arange(2), 1, 2, 2)
        for x_set in (e.support_x, e.query_x):
            expected = np.zeros_like(x_set)
            expected[..., y, x] = 1.0
            assert np.array_equal(x_set, expected), rotation
    # And on the L-shaped characters, the same as np.rot90.
    e = sampler(IMAGES, np.array([1, 2, 3], np.int64), KEY, np.arange(3), 1, 1, 0)
    for t in range(3):
        rotation = int(e.classes[t, 0]) % 4
        drawing = IMAGES[0, e.drawings[t, 0, 0]]
        assert not np.array_equal(np.rot90(drawing, rotation), drawing)
        assert np.array_equal(e.support_x[t, 0, 0] * 255, np.rot90(drawing, rotation))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_different_keys_give_different_episodes(sampler: Sampler) -> None:
    tasks = np.arange(16)
    a = sampler(IMAGES, ALL_CLASSES, derive_key(0, 0, 1), tasks, 5, 1, 5)
    b = sampler(IMAGES, ALL_CLASSES, derive_key(0, 0, 2), tasks, 5, 1, 5)
    c = sampler(IMAGES, ALL_CLASSES, derive_key(1, 0, 1), tasks, 5, 1, 5)
    assert not np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.classes, c.classes)
    # Different task indices under one key differ too.
    assert not np.array_equal(a.classes[:8], a.classes[8:])


@pytest.mark.parametrize("task", [0, 5, -1, 2**40 + 3, 2**63 - 1])
@pytest.mark.parametrize("key", [KEY, 0, (1 << 64) - 1], ids=["key", "0", "2**64-1"])
def test_the_stream_is_the_hash_of_uniform_reference(key: int, task: int) -> None:
    draws = task_stream(key, task, 8)
    assert all(0 <= u < 2**64 for u in draws)
    # uniform_reference keeps the top ``bits`` bits of the same 64-bit hash.
    for bits in (32, 53):
        expected = [round(v * 2**bits) for v in uniform_reference(key, task, 8, bits)]
        assert [u >> (64 - bits) for u in draws] == expected


def test_below_is_exact_and_in_range() -> None:
    top = (1 << 64) - 1
    assert below(0, 7) == 0 and below(top, 7) == 6 and below(top, 1) == 0
    assert below(top, 2**32) == 2**32 - 1 and below(1 << 63, 2**20) == 2**19
    draws = task_stream(KEY, 0, 10_000)
    values = [below(u, 6) for u in draws]
    assert set(values) == set(range(6))
    assert max(values.count(v) for v in range(6)) < 1.2 * 10_000 / 6


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    ("pool", "random_rotation"),
    [(SOME_CLASSES, False), (SOME_CHARACTERS, True)],
    ids=["distinct-classes", "random-rotation"],
)
def test_draws_follow_the_documented_order(
    sampler: Sampler, pool: np.ndarray, random_rotation: bool
) -> None:
    """Replay the spec with the stream alone: classes by rejection, then (with random_rotation)
    one rotation per class, then each class's drawings."""
    ways, shots, queries = 4, 2, 3
    tasks = [0, 9, -7]
    e = sampler(
        IMAGES, pool, KEY, np.array(tasks), ways, shots, queries, random_rotation=random_rotation
    )
    for t, task in enumerate(tasks):
        draws = iter(task_stream(KEY, task, 1_000))

        def distinct(n: int, count: int, draws=draws) -> list[int]:
            out: list[int] = []
            while len(out) < count:
                v = below(next(draws), n)
                out += [] if v in out else [v]
            return out

        classes = [int(pool[p]) for p in distinct(len(pool), ways)]
        if random_rotation:
            classes = [c + below(next(draws), 4) for c in classes]
        drawings = [distinct(DRAWINGS, shots + queries) for _ in range(ways)]
        assert e.classes[t].tolist() == classes
        assert e.drawings[t].tolist() == drawings


# Computed with the sampler as it was before random_rotation existed (commit 0ae4b7c), so the
# default keeps reproducing older runs bit for bit: (pool, key, task_index, ways, shots, queries).
PINNED = [
    pytest.param(ALL_CLASSES, KEY, np.arange(32), 5, 1, 15, "cae2e537f9056966", id="5w1s15q"),
    pytest.param(ALL_CLASSES, KEY, np.arange(100, 108), 20, 5, 5, "43967b626a6fc2a9", id="20w5s"),
    pytest.param(ALL_CLASSES, 0, EXTREME_TASKS, 4, 1, 3, "738d245ab0311bc3", id="extreme-tasks"),
    pytest.param(SOME_CLASSES, (1 << 64) - 1, np.arange(3), 3, 2, 0, "485d31037ff925ba", id="some"),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("pool", "key", "task_index", "ways", "shots", "queries", "sha"), PINNED)
def test_without_random_rotation_episodes_are_those_of_older_releases(
    sampler: Sampler,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    sha: str,
) -> None:
    args = (IMAGES, pool, key, task_index.astype(np.int64), ways, shots, queries)
    assert _digest(sampler(*args)) == sha
    assert _digest(sampler(*args, random_rotation=False)) == sha


def _two_rotations_of_a_character(classes: np.ndarray) -> np.ndarray:
    """Per task: whether two of its classes are rotations of one character."""
    characters = np.sort(classes // 4, axis=1)
    return (characters[:, 1:] == characters[:, :-1]).any(axis=1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_random_rotation_gives_distinct_characters_at_every_rotation(sampler: Sampler) -> None:
    # 20 of the 30 characters per task: distinct classes of the rotated pool repeat a character
    # in almost every task; distinct characters never do.
    tasks, ways = 400, 20
    e = sampler(IMAGES, UPRIGHT, KEY, np.arange(tasks), ways, 1, 0, random_rotation=True)
    assert not _two_rotations_of_a_character(e.classes).any()
    old = sampler(IMAGES, ALL_CLASSES, KEY, np.arange(tasks), ways, 1, 0)
    assert _two_rotations_of_a_character(old.classes).mean() > 0.9
    # Rotations spread evenly over the four (8,000 draws: sd 0.5 percentage points), at every
    # position of a task, and each character shows up at all four.
    rotations = e.classes % 4
    shares = np.bincount(rotations.ravel(), minlength=4) / rotations.size
    assert np.abs(shares - 0.25).max() < 0.02, shares
    assert all(set(rotations[:, c].tolist()) == {0, 1, 2, 3} for c in range(ways))
    per_character = {(int(k) // 4, int(k) % 4) for k in e.classes.ravel()}
    assert len(per_character) == CHARACTERS * 4


def test_numba_available_here() -> None:
    assert numba_available() is True


@pytest.fixture
def fresh_probe() -> object:
    numba_available.cache_clear()
    yield
    numba_available.cache_clear()


def test_probe_falls_back_when_the_kernel_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_probe: object
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("no LLVM today")

    monkeypatch.setattr(_episodes, "_sample_kernel", broken)
    with caplog.at_level(logging.WARNING, logger="mamlflow.kernels"):
        assert numba_available() is False
    assert "RuntimeError: no LLVM today" in caplog.text and "numpy twin" in caplog.text


def test_probe_falls_back_when_the_kernel_disagrees(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_probe: object
) -> None:
    def off_by_one(*args: object, **kwargs: object) -> Episodes:
        e = sample_episodes_reference(*args, **kwargs)
        e.query_y[0, 0] += 1
        return e

    monkeypatch.setattr(_episodes, "sample_episodes_reference", off_by_one)
    with caplog.at_level(logging.WARNING, logger="mamlflow.kernels"):
        assert numba_available() is False
    assert "disagrees with its numpy twin on query_y" in caplog.text


def test_probe_checks_random_rotation_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_probe: object
) -> None:
    def wrong_rotation(*args: object, random_rotation: bool = False) -> Episodes:
        e = sample_episodes_reference(*args, random_rotation=random_rotation)
        if random_rotation:
            e.classes[0, 0] ^= 1
        return e

    monkeypatch.setattr(_episodes, "sample_episodes_reference", wrong_rotation)
    with caplog.at_level(logging.WARNING, logger="mamlflow.kernels"):
        assert numba_available() is False
    assert "disagrees with its numpy twin on classes (random_rotation=True)" in caplog.text


def test_probe_falls_back_without_numba(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_probe: object
) -> None:
    monkeypatch.setattr(_episodes, "_IMPORT_ERROR", ImportError("Numba needs NumPy 2.3 or less"))
    with caplog.at_level(logging.WARNING, logger="mamlflow.kernels"):
        assert numba_available() is False
    assert "Numba needs NumPy 2.3 or less" in caplog.text


def test_pure_python_execution_of_the_kernel_matches_the_twin() -> None:
    """NUMBA_DISABLE_JIT runs the kernel's own source as Python: the algorithm, not LLVM."""
    code = textwrap.dedent(
        """
        import numba, numpy as np
        from mamlflow.kernels._episodes import sample_episodes, _sample_kernel
        from mamlflow.kernels._episodes_ref import sample_episodes_reference
        assert numba.config.DISABLE_JIT and not hasattr(_sample_kernel, "py_func")
        images = np.random.default_rng(1).integers(0, 256, (6, 7, 9, 9), dtype=np.uint8)
        pool = np.array([0, 3, 5, 6, 10, 13, 22, 23], dtype=np.int64)
        tasks = np.array([0, 1, -5, 2**62], dtype=np.int64)
        key = 0xFEDC_BA98_7654_3210
        upright = np.array([0, 4, 12, 20], dtype=np.int64)
        for pool, rotate in ((pool, False), (upright, True)):
            args = (images, pool, key, tasks, 3, 2, 3)
            got = sample_episodes(*args, random_rotation=rotate)
            want = sample_episodes_reference(*args, random_rotation=rotate)
            for name in vars(want):
                assert np.array_equal(getattr(got, name), getattr(want, name)), name
        print("parity")
        """
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "MAMLFLOW_AUTOLOAD_PLUGINS": "0"}
    # -W error: wrapping uint64 arithmetic must not leak NumPy overflow warnings.
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "parity"


def _non_contiguous() -> np.ndarray:
    return np.asfortranarray(IMAGES)


BAD_ARGUMENTS = [
    pytest.param({"ways": 11, "pool": SOME_CLASSES}, "ways=11 exceeds the 10 classes", id="ways"),
    pytest.param({"shots": 15, "queries": 6}, "exceeds the 20 drawings", id="shots+queries"),
    pytest.param({"ways": 0}, "ways must be >= 1", id="zero-ways"),
    pytest.param({"shots": 0}, "shots must be >= 1", id="zero-shots"),
    pytest.param({"queries": -1}, "queries must be >= 0", id="negative-queries"),
    pytest.param({"shots": True}, "shots must be an integer", id="bool-shots"),
    pytest.param({"ways": 2.0}, "ways must be an integer", id="float-ways"),
    pytest.param({"key": -1}, "key must be >= 0", id="negative-key"),
    pytest.param({"key": 1 << 64}, "64-bit unsigned", id="huge-key"),
    pytest.param({"images": IMAGES.astype(np.float32)}, "images must be a 4-d uint8", id="dtype"),
    pytest.param({"images": IMAGES[0]}, "images must be a 4-d uint8", id="ndim"),
    pytest.param({"images": _non_contiguous()}, "C-contiguous", id="non-contiguous"),
    pytest.param({"images": IMAGES.tolist()}, "images must be a numpy array", id="list"),
    pytest.param({"pool": SOME_CLASSES.astype(np.int32)}, "pool must be a 1-d int64", id="pool"),
    pytest.param({"pool": np.zeros(0, np.int64)}, "pool is empty", id="empty-pool"),
    pytest.param({"pool": np.array([0, 120], np.int64)}, r"ids must lie in \[0, 120\)", id="id"),
    pytest.param({"pool": np.array([-1, 4], np.int64)}, "ids must lie in", id="negative-id"),
    pytest.param({"pool": np.array([4, 8, 4], np.int64)}, "duplicate class ids", id="duplicate"),
    pytest.param({"task_index": np.zeros((2, 2), np.int64)}, "task_index must be a 1-d", id="2d"),
    pytest.param({"task_index": np.arange(3.0)}, "task_index must be a 1-d int64", id="float"),
    pytest.param(
        {"random_rotation": True, "pool": SOME_CHARACTERS, "ways": 7},
        r"ways=7 exceeds the 6 characters \(upright ids\) in the pool",
        id="random-rotation-ways",
    ),
    pytest.param(
        {"random_rotation": True, "pool": SOME_CLASSES},
        r"pool must hold upright ids \(character \* 4\), got 5",
        id="random-rotation-rotated-pool",
    ),
    pytest.param({"random_rotation": 1}, "random_rotation must be True or False", id="rotate-1"),
    pytest.param(
        {"images": np.zeros((2, 4, 5, 6), np.uint8), "pool": np.array([0, 4], np.int64)}
        | {"queries": 1, "random_rotation": True},
        "rotated classes need square images",
        id="random-rotation-non-square",
    ),
    pytest.param(
        {
            "images": np.zeros((2, 4, 5, 6), np.uint8),
            "pool": np.array([0, 1], np.int64),
            "queries": 1,
        },
        "rotated classes need square images",
        id="non-square",
    ),
]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_clear_value_errors(
    sampler: Sampler, change: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "images": IMAGES,
        "pool": ALL_CLASSES,
        "key": KEY,
        "task_index": np.arange(4),
        "ways": 2,
        "shots": 1,
        "queries": 5,
    }
    with pytest.raises(ValueError, match=message):
        sampler(**{**args, **change})


def test_non_square_images_without_rotations() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 4, 5, 7), dtype=np.uint8)
    args = (images, np.array([0, 4, 8], np.int64), KEY, np.arange(3), 2, 1, 1)
    got = sample_episodes(*args)
    _assert_same(got, sample_episodes_reference(*args))
    assert got.support_x.shape == (3, 2, 1, 5, 7)
    drawing = images[got.classes[0, 0] // 4, got.drawings[0, 0, 0]]
    assert np.array_equal(got.support_x[0, 0, 0] * 255, drawing)
