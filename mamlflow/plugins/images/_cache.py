"""The image cache: every image of a data set decoded, resized and stored once as uint8.

One ``<stem>-<S>x<S>x<C>-<key>.npy`` of shape ``(N, S, S, C)`` holds the images split by split
(``SPLIT_NAMES`` order), class by class in the source's index order; a ``.json`` sidecar holds
what the array means: the source and its fingerprint, the options, each class's ``[name, start,
count]`` per split, the training split's per-channel mean and std, and checksums. ``key`` hashes
the source's fingerprint and the options, so a changed file or option names a new cache.

Building streams: images are decoded in chunks on every core, written to a temporary file with
plain writes (a full disk raises ``OSError``; writing through a memory map would kill the
process with SIGBUS), hashed as they go, re-hashed from disk, and only then renamed into place,
the sidecar last. A failure leaves nothing but what was there before.

Opening maps the array read-only (``np.load(mmap_mode="r")``): a 16 GB cache costs page cache,
not RAM. Checking a cache must not cost a read of all of it on every run either, so:

* always: the sidecar's key and format, the array's shape and dtype, the file's size;
* arrays up to ``FULL_CHECK_BYTES``: the sha256 of all the data (~0.3 s per 256 MiB);
* larger ones: when the file's mtime is the one recorded at build, the sha256 of
  ``SPOT_BLOCKS`` evenly spaced 1 MiB blocks (a truncation or rewrite is caught by size and
  mtime; a silent bit flip elsewhere is not, the price of opening 16 GB in milliseconds); when
  it is not (the file was touched or copied), the full sha256, once per open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mamlflow.core import DataError, atomic_write
from mamlflow.plugins._imagedata import cache_file, one_line, source_key, user_cache_dir

from ._decode import RESAMPLE, decode_chunk
from ._source import SPLIT_NAMES, ClassIndex, ImageData, ImageSource

__all__ = [
    "FULL_CHECK_BYTES",
    "CacheOptions",
    "ImageArrays",
    "build_image_cache",
    "load_image_cache",
]

log = logging.getLogger("mamlflow.images")

FULL_CHECK_BYTES = 256 << 20
SPOT_BLOCKS = 16
_BLOCK = 1 << 20
_FORMAT = 1  # bump when the sidecar or the preprocessing changes
_CHUNK = 64  # images per worker task: big enough to amortise pickling, small for progress
_SERIAL_BELOW = 512  # fewer images decode faster in-process than a pool starts
_HASH_STEP = 64 << 20

Check = Callable[[ClassIndex], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CacheOptions:
    """What the cached pixels depend on besides the raw files."""

    image_size: int
    channels: int
    resample: str = RESAMPLE

    def stem(self, name: str) -> str:
        return f"{name}-{self.image_size}x{self.image_size}x{self.channels}"


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A cache, opened. Class ids index ``starts``, ``counts`` and ``names``.

    ``images[starts[c] : starts[c] + counts[c]]`` are class ``c``'s images; ``splits[s]`` holds
    the ids of split ``s``'s classes (every name in ``SPLIT_NAMES``, possibly empty). ``mean``
    and ``std`` are per channel, on pixels scaled to [0, 1].
    """

    images: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...]
    splits: Mapping[str, np.ndarray]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    path: Path

    @property
    def index(self) -> ClassIndex:
        return ClassIndex(
            {
                split: tuple((self.names[c], int(self.counts[c])) for c in classes.tolist())
                for split, classes in self.splits.items()
            }
        )


def load_image_cache(
    source: ImageSource,
    *,
    stem: str,
    options: CacheOptions,
    cache_dir: Path | None = None,
    workers: int | None = None,
    check: Check | None = None,
    progress: Progress | None = None,
) -> ImageArrays:
    """The cache of ``source`` under ``options``, opened; built (or rebuilt) when missing, stale
    or damaged. ``check`` sees the class index before anything is decoded (and on every open),
    to refuse data that cannot fill the configured tasks."""
    fingerprint = source.fingerprint()
    key = source_key(fingerprint, json.dumps(asdict(options), sort_keys=True), str(_FORMAT))
    path = cache_file(_cache_dir(cache_dir), options.stem(stem), key)
    if path.exists():
        opened = _open(path, key)
        if isinstance(opened, ImageArrays):
            if check is not None:
                check(opened.index)
            return opened
        warnings.warn(f"cache {path} {opened}; rebuilding it", RuntimeWarning, stacklevel=2)
    build_image_cache(source, path, key, fingerprint, options, workers, check, progress)
    opened = _open(path, key)
    if isinstance(opened, str):  # written and verified a moment ago: the disk is failing
        raise DataError(f"cache {path} {opened} right after it was built; check the disk")
    return opened


def _cache_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir() / "images"


# -- building


@dataclass
class _Stats:
    """Exact per-channel pixel sums of the training split, so chunking cannot change them."""

    channels: int
    pixels: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> None:
        flat = chunk.reshape(-1, self.channels)
        total = flat.sum(0, dtype=np.uint64)
        squares = (flat.astype(np.uint32) ** 2).sum(0, dtype=np.uint64)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.pixels += flat.shape[0]

    def mean_std(self) -> tuple[list[float], list[float]]:
        assert self.total is not None and self.squares is not None and self.pixels
        mean = self.total.astype(np.float64) / (self.pixels * 255.0)
        var = self.squares.astype(np.float64) / (self.pixels * 255.0**2) - mean**2
        # A constant channel (a blank test image) would divide by zero when normalising.
        std = np.sqrt(np.maximum(var, 0.0))
        return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


def build_image_cache(
    source: ImageSource,
    path: Path,
    key: str,
    fingerprint: str,
    options: CacheOptions,
    workers: int | None = None,
    check: Check | None = None,
    progress: Progress | None = None,
) -> None:
    """Decode every image of ``source`` into ``path`` (and its sidecar), atomically."""
    index = source.index()
    if check is not None:
        check(index)
    layout = _layout(index)
    total = sum(count for _, _, _, count in layout)
    if total == 0:
        raise DataError(f"{source.description} holds no images; check the folder and its layout")
    size, channels = options.image_size, options.channels
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_header(f, (total, size, size, channels))
            digest, stats = _write_images(f, source, index, options, total, workers, progress)
            f.flush()
            os.fsync(f.fileno())
        array = np.load(tmp, mmap_mode="r", allow_pickle=False)
        if _sha256(array) != digest:
            raise DataError(f"{path.parent}: the cache read back differs from what was written")
        blocks = _block_hashes(array)
        del array
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    mean, std = stats.mean_std()
    st = path.stat()
    sidecar = {
        "format": _FORMAT,
        "key": key,
        "source": source.description,
        "fingerprint": fingerprint,
        "options": asdict(options),
        "splits": {
            split: [[n, start, count] for s, n, start, count in layout if s == split]
            for split in SPLIT_NAMES
        },
        "mean": mean,
        "std": std,
        "shape": [total, size, size, channels],
        "dtype": np.dtype(np.uint8).str,
        "sha256": digest,
        "blocks": blocks,
        "file": {"size": st.st_size, "mtime_ns": st.st_mtime_ns},
    }
    # The sidecar goes last: it never vouches for an array that is not in place.
    atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())
    log.info("%s: cache of %d images written to %s", source.description, total, path)


def _layout(index: ClassIndex) -> list[tuple[str, str, int, int]]:
    """``(split, class, start, count)`` for every class, in the array's order."""
    out, start = [], 0
    for split in SPLIT_NAMES:
        for name, count in index.splits.get(split, ()):
            out.append((split, name, start, count))
            start += count
    return out


def _write_header(f: BinaryIO, shape: tuple[int, ...]) -> None:
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(f, header)


def _labelled(source: ImageSource, index: ClassIndex) -> Iterator[tuple[str, str, int, ImageData]]:
    """``(split, class, position, image)`` for every image, checked against the index."""
    for split in SPLIT_NAMES:
        expected = list(index.splits.get(split, ()))
        if not expected:
            continue
        got = 0
        wanted = iter(expected)
        name, count = next(wanted)
        for cls, data in source.read(split):
            while got == count:  # the next class starts
                name, count = next(wanted, ("", -1))
                got = 0
            if cls != name:
                raise DataError(
                    f"{source.description}: reading the {split} split gave an image of class "
                    f"{cls!r} where {name!r} was due; the files changed while reading, try again"
                )
            yield split, cls, got, data
            got += 1


def _chunks(
    items: Iterator[tuple[str, str, int, ImageData]],
) -> Iterator[tuple[list[tuple[str, str, int]], list[ImageData]]]:
    while chunk := list(islice(items, _CHUNK)):
        yield [item[:3] for item in chunk], [item[3] for item in chunk]


def _write_images(
    f: BinaryIO,
    source: ImageSource,
    index: ClassIndex,
    options: CacheOptions,
    total: int,
    workers: int | None,
    progress: Progress | None,
) -> tuple[str, _Stats]:
    digest = hashlib.sha256()
    stats, everything = _Stats(options.channels), _Stats(options.channels)
    done = 0
    for labels, array in _decoded(
        _chunks(_labelled(source, index)), source, options, total, workers
    ):
        f.write(array.tobytes())
        digest.update(array)
        everything.add(array)
        train = np.array([split == "train" for split, _, _ in labels])
        if train.any():
            stats.add(array[train])
        done += len(labels)
        if progress is not None:
            progress(done, total)
    if done != total:
        raise DataError(
            f"{source.description}: read {done} images where the index counted {total}; "
            "the files changed while reading, try again"
        )
    # Without a training split (a test-only folder) the statistics come from all images.
    return digest.hexdigest(), stats if stats.pixels else everything


def _decoded(
    chunks: Iterator[tuple[list[tuple[str, str, int]], list[ImageData]]],
    source: ImageSource,
    options: CacheOptions,
    total: int,
    workers: int | None,
) -> Iterator[tuple[list[tuple[str, str, int]], np.ndarray]]:
    """Each chunk decoded, in order; the first bad image raises a DataError naming it."""
    size, channels = options.image_size, options.channels
    workers = workers or len(os.sched_getaffinity(0))
    if workers == 1 or total < _SERIAL_BELOW:
        for labels, images in chunks:
            yield labels, _checked(source, labels, decode_chunk(images, size, channels))
        return
    # fork: a worker needs only Pillow and numpy, already imported here; spawning would import
    # torch again in each (~2 s). The workers start no threads of their own.
    context = multiprocessing.get_context("fork")
    pending: deque[tuple[list[tuple[str, str, int]], Future[tuple[np.ndarray, int, str]]]]
    pending = deque()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        try:
            for labels, images in chunks:
                pending.append((labels, pool.submit(decode_chunk, images, size, channels)))
                # A bounded window: encoded bytes of a 16 GB data set never pile up in RAM.
                if len(pending) >= 2 * workers:
                    labels, future = pending.popleft()
                    yield labels, _checked(source, labels, future.result())
            while pending:
                labels, future = pending.popleft()
                yield labels, _checked(source, labels, future.result())
        finally:
            for _, future in pending:
                future.cancel()


def _checked(
    source: ImageSource, labels: list[tuple[str, str, int]], result: tuple[np.ndarray, int, str]
) -> np.ndarray:
    array, bad, reason = result
    if bad >= 0:
        split, name, position = labels[bad]
        raise DataError(
            f"{source.where(split, name, position)} {reason}; replace or delete the file "
            "(no cache was written)"
        )
    return array


# -- opening


def _sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    flat = array.reshape(-1)
    # In steps, so hashing a memory map never needs a contiguous copy of it in RAM.
    for start in range(0, flat.shape[0], _HASH_STEP):
        digest.update(flat[start : start + _HASH_STEP])
    return digest.hexdigest()


def _block_hashes(array: np.ndarray) -> list[str]:
    flat = array.reshape(-1)
    if flat.shape[0] <= FULL_CHECK_BYTES:
        return []
    offsets = np.linspace(0, flat.shape[0] - _BLOCK, SPOT_BLOCKS).astype(np.int64)
    return [hashlib.sha256(flat[o : o + _BLOCK]).hexdigest() for o in offsets.tolist()]


def _read_sidecar(path: Path) -> dict[str, Any] | str:
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return "has no .json sidecar"
    except (OSError, ValueError) as err:
        return f"has an unreadable .json sidecar ({one_line(err)})"
    return sidecar if isinstance(sidecar, dict) else "has a malformed .json sidecar"


def _open(path: Path, key: str) -> ImageArrays | str:
    """The opened cache, or why it cannot be used."""
    sidecar = _read_sidecar(path)
    if isinstance(sidecar, str):
        return sidecar
    if sidecar.get("format") != _FORMAT or sidecar.get("key") != key:
        return "is stale (its sidecar has another format or key)"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        st = path.stat()
        recorded = sidecar["file"]
        if list(array.shape) != sidecar["shape"] or array.dtype.str != sidecar["dtype"]:
            return f"holds {array.dtype} {tuple(array.shape)}, not what its sidecar says"
        if st.st_size != recorded["size"]:
            return f"is {st.st_size:,} bytes, not the {recorded['size']:,} written"
        if array.nbytes <= FULL_CHECK_BYTES or st.st_mtime_ns != recorded["mtime_ns"]:
            if _sha256(array) != sidecar["sha256"]:
                return "is corrupt (sha256 of its data differs from the sidecar)"
        elif _block_hashes(array) != sidecar["blocks"]:
            return "is corrupt (sha256 of a sampled block differs from the sidecar)"
        return _arrays(path, array, sidecar)
    except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError) as err:
        return f"is unreadable, truncated or corrupt ({type(err).__name__}: {one_line(err)})"


def _arrays(path: Path, images: np.ndarray, sidecar: dict[str, Any]) -> ImageArrays:
    starts, counts, names, splits = [], [], [], {}
    for split in SPLIT_NAMES:
        rows = sidecar["splits"].get(split, [])
        splits[split] = np.arange(len(names), len(names) + len(rows), dtype=np.int64)
        for name, start, count in rows:
            names.append(str(name))
            starts.append(int(start))
            counts.append(int(count))
    starts_a, counts_a = np.array(starts, np.int64), np.array(counts, np.int64)
    if len(names) and (starts_a.min() < 0 or (starts_a + counts_a).max() > images.shape[0]):
        raise ValueError("class offsets in the sidecar lie outside the array")
    return ImageArrays(
        images=images,
        starts=starts_a,
        counts=counts_a,
        names=tuple(names),
        splits=splits,
        mean=tuple(float(m) for m in sidecar["mean"]),
        std=tuple(float(s) for s in sidecar["std"]),
        source=str(sidecar["source"]),
        path=path,
    )
