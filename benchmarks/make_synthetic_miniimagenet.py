"""A synthetic data set of MiniImagenet's exact shape and file layout, for benchmarks and tests.

MiniImagenet's images are ImageNet's and cannot be shipped, so this writes a stand-in the
``miniimagenet`` family reads unchanged: 64 / 16 / 20 classes x 600 images of 84 x 84 RGB, with
WordNet-like class ids (``n0…``, eight digits) and file names (``n0153282900000005.jpg``), in
one of two real layouts:

* ``csv``: Ravi & Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv`` (header
  ``filename,label``) and the JPEGs in ``images/``;
* ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
  (N x 84 x 84 x 3 uint8) and ``class_dict`` (WordNet id -> list of row indices).

Each class has its own background and stripe colours, stripe angle and frequency, and three
coloured discs; each image moves the discs, shifts the stripes' phase, changes the brightness,
may be mirrored, and adds pixel noise. A conv net can learn the classes but not from one pixel.
Everything is a function of ``--seed``, the class's number and the image's number, so the same
arguments give the same pixels on any machine and with any number of workers. A
``synthetic.json`` beside the data records the arguments, the time taken and the bytes written.

The full set (60,000 images; several minutes and about 0.3 GB as JPEG, or 1.3 GB as pickles,
on the 2-core machine: see benchmarks/README.md)::

    python benchmarks/make_synthetic_miniimagenet.py /data/synthetic/miniimagenet
    MAMLFLOW_DATA=/data/synthetic metaflow run --plugin miniimagenet   # finds <root>/miniimagenet
    metaflow run --plugin miniimagenet --set task.data_dir=/data/synthetic/miniimagenet
    python benchmarks/make_synthetic_miniimagenet.py /data/pkl/miniimagenet --layout pickle

A small one for smoke tests (it fails the ``miniimagenet`` family's 64/16/20 x 600 count checks
on purpose; read it with ``--plugin imagefolder --set task.data_dir=OUT``)::

    python benchmarks/make_synthetic_miniimagenet.py /tmp/mini-small --classes 6,5,5 \\
        --images-per-class 40
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import pickle
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
NOISE = 25.0
"""Standard deviation of the per-pixel noise, in 0-255 units."""
BLOBS = 3


def class_ids(seed: int, count: int) -> list[str]:
    """``count`` distinct WordNet-like ids (``n0`` + seven digits), as ImageNet spells them."""
    numbers = np.random.default_rng([seed, 0]).choice(9_000_000, count, replace=False)
    return [f"n{1_000_000 + int(n):08d}" for n in numbers]


def file_numbers(seed: int, number: int, count: int) -> list[int]:
    """A class's image numbers: sorted and gappy, as the ImageNet indices in the real names."""
    span = max(1300, count)
    rng = np.random.default_rng([seed, 1, number])
    return sorted(int(n) + 1 for n in rng.choice(span, count, replace=False))


def class_images(seed: int, number: int, count: int, size: int) -> np.ndarray:
    """``count`` images of class ``number``: uint8 ``(count, size, size, 3)``."""
    look = np.random.default_rng([seed, 2, number])  # what the class looks like
    background, stripe = look.uniform(20, 235, 3), look.uniform(20, 235, 3)
    angle, frequency, strength = look.uniform(0, np.pi), look.uniform(1.5, 6), look.uniform(0.3, 1)
    blobs = [
        (look.uniform(0.2, 0.8, 2), look.uniform(0.08, 0.22), look.uniform(0, 255, 3))
        for _ in range(BLOBS)
    ]
    rng = np.random.default_rng([seed, 3, number])  # what varies from image to image
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    y, x = grid[None, :, None], grid[None, None, :]
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1)).astype(np.float32)
    along = x * np.cos(angle) + y * np.sin(angle)
    stripes = strength * (0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + phase))
    pixels = background + (stripe - background) * stripes[..., None]
    for centre, radius, colour in blobs:
        cx, cy = (centre + rng.normal(0, 0.06, (count, 2))).T.astype(np.float32)
        distance = np.sqrt((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2)
        inside = 1 / (1 + np.exp((distance - radius) / 0.02))  # a disc with a soft edge
        pixels += (colour - pixels) * inside[..., None]
    pixels *= rng.uniform(0.75, 1.25, (count, 1, 1, 1))
    pixels += NOISE * rng.standard_normal(pixels.shape, dtype=np.float32)
    mirrored = rng.random(count) < 0.5
    pixels[mirrored] = pixels[mirrored, :, ::-1]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _write_class(job: tuple[int, int, str, int, int, str | None]) -> tuple[list[str], Any]:
    """One class, in a worker: its file names, and its images (pickle) or bytes written (csv)."""
    seed, number, wnid, count, size, images_dir = job
    names = [f"{wnid}{n:08d}.jpg" for n in file_numbers(seed, number, count)]
    images = class_images(seed, number, count, size)
    if images_dir is None:
        return names, images
    from PIL import Image

    written = 0
    for name, image in zip(names, images, strict=True):
        path = Path(images_dir) / name
        Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)
        written += path.stat().st_size
    return names, written


def _jobs(args: argparse.Namespace, images_dir: Path | None) -> list[tuple[Any, ...]]:
    drawn, wnids, start = class_ids(args.seed, sum(args.classes)), [], 0
    for count in args.classes:
        # Within a split the classes come in id order, as in Ravi & Larochelle's CSVs.
        wnids += sorted(drawn[start : start + count])
        start += count
    where = None if images_dir is None else str(images_dir)
    return [
        (args.seed, number, wnid, args.images_per_class, args.size, where)
        for number, wnid in enumerate(wnids)
    ]


def _split_of(args: argparse.Namespace) -> list[str]:
    """The split of each class, by class number: the first ``classes[0]`` are train, …"""
    return [split for split, n in zip(SPLITS, args.classes, strict=True) for _ in range(n)]


class _Split:
    """One split's classes as they arrive; written as soon as its last class is in, so the
    pickle layout holds one split's images at a time (0.8 GB for train at full size)."""

    def __init__(self, out: Path, layout: str, name: str, classes: int) -> None:
        self.out, self.layout, self.name, self.classes = out, layout, name, classes
        self.rows: list[tuple[str, list[str]]] = []
        self.images: np.ndarray | None = None

    def add(self, wnid: str, names: list[str], result: Any) -> None:
        if self.layout == "pickle":
            if self.images is None:
                self.images = np.empty((self.classes * len(names), *result.shape[1:]), np.uint8)
            row = len(self.rows) * len(names)
            self.images[row : row + len(names)] = result
        self.rows.append((wnid, names))
        if len(self.rows) == self.classes:
            self.write()

    def write(self) -> None:
        if self.layout == "csv":
            with (self.out / f"{self.name}.csv").open("w", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["filename", "label"])
                for wnid, names in self.rows:
                    writer.writerows([name, wnid] for name in names)
            return
        class_dict, row = {}, 0
        for wnid, names in self.rows:
            class_dict[wnid] = list(range(row, row + len(names)))
            row += len(names)
        final = self.out / f"mini-imagenet-cache-{self.name}.pkl"
        tmp = final.with_name(f".{final.name}.part")
        with tmp.open("wb") as f:
            # Protocol 5 writes the array's buffer as it is, without a second copy in memory.
            pickle.dump({"image_data": self.images, "class_dict": class_dict}, f, protocol=5)
        tmp.replace(final)
        self.images = None


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Write the data set into ``args.out``; what was written, for ``synthetic.json``."""
    out: Path = args.out
    images_dir = out / "images" if args.layout == "csv" else None
    (images_dir or out).mkdir(parents=True, exist_ok=True)
    jobs, splits = _jobs(args, images_dir), _split_of(args)
    writers = {
        name: _Split(out, args.layout, name, n)
        for name, n in zip(SPLITS, args.classes, strict=True)
    }
    start, total = time.perf_counter(), len(jobs)
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for done, (names, result) in enumerate(pool.imap(_write_class, jobs), 1):
            writers[splits[done - 1]].add(jobs[done - 1][2], names, result)
            if done == total or done % max(1, total // 20) == 0:
                print(
                    f"{done}/{total} classes, {done * args.images_per_class:,} images, "
                    f"{time.perf_counter() - start:.1f} s",
                    flush=True,
                )
    seconds = time.perf_counter() - start
    return {
        "layout": args.layout,
        "classes": dict(zip(SPLITS, args.classes, strict=True)),
        "images_per_class": args.images_per_class,
        "images": sum(args.classes) * args.images_per_class,
        "size": args.size,
        "seed": args.seed,
        "workers": args.workers,
        "seconds": seconds,
        "bytes": _bytes_under(out),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _classes(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"three positive counts, train,val,test; got {text!r}")
    return parts[0], parts[1], parts[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the data set's folder (task.data_dir)")
    parser.add_argument("--layout", choices=("csv", "pickle"), default="csv")
    parser.add_argument("--images-per-class", type=int, default=600)
    parser.add_argument(
        "--classes", type=_classes, default=(64, 16, 20), help="train,val,test (default 64,16,20)"
    )
    parser.add_argument("--size", type=int, default=84, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.images_per_class < 1 or args.size < 4:
        parser.error("--images-per-class must be ≥ 1 and --size ≥ 4")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; name a new folder")
    manifest = generate(args)
    (args.out / "synthetic.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"wrote {manifest['images']:,} images ({args.layout}) to {args.out} in "
        f"{manifest['seconds']:.1f} s: {manifest['bytes'] / 2**20:,.1f} MiB"
    )


if __name__ == "__main__":
    main()
