"""``imagefolder``: few-shot classification of any folder of images, in the layouts users have.

``task.layout=auto`` picks the first that fits ``task.data_dir``:

* ``csv``: ``train.csv``, ``val.csv``, ``test.csv`` with ``filename,label`` rows (Ravi &
  Larochelle's MiniImagenet files); an image is looked for in ``root/images/``,
  ``root/images/<label>/``, ``root/`` and ``root/<label>/``, in that order.
* ``txt``: ``train.txt``, ``val.txt``, ``test.txt``, one class name per line; a class's images
  are the folder ``root/<class>/`` or ``root/images/<class>/``.
* ``splits``: ``root/train|val|test/<class>/<image>`` (``valid`` or ``validation`` for val).
* ``folders``: ``root/<class>/<image>``, every class; a shuffle seeded by ``task.split_seed``
  splits the classes into ``train_classes`` / ``val_classes`` / the rest for test.

A class's images are all files with an image suffix under its folder, nested folders included,
in path order; hidden files and other suffixes are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from mamlflow.core import IMAGE_SUFFIXES, DataError, Preset, TaskConfig, image_files
from mamlflow.plugins._imagedata import DATA_ENV, candidate_dirs, one_line

from ._family import ImageFamily, ImageFamilyConfig
from ._source import SPLIT_NAMES, ClassIndex, ImageData, ImageSource

__all__ = ["IMAGE_SUFFIXES", "PRESETS", "ImageFolder", "ImageFolderConfig", "ImageFolderSource"]

Layout = Literal["auto", "csv", "txt", "splits", "folders"]
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


class ImageFolderConfig(ImageFamilyConfig):
    layout: Layout = Field(
        "auto", description="how data_dir is organised: auto, csv, txt, splits or folders"
    )
    train_classes: float = Field(
        0.64,
        gt=0,
        description="folders layout: training classes, a fraction (< 1) or a count (>= 1)",
    )
    val_classes: float = Field(
        0.16,
        ge=0,
        description="folders layout: validation classes, a fraction (< 1) or a count; test: rest",
    )
    split_seed: int = Field(0, description="folders layout: seed of the class shuffle")

    @model_validator(mode="after")
    def _counts_are_whole(self) -> ImageFolderConfig:
        for name in ("train_classes", "val_classes"):
            value = getattr(self, name)
            if value >= 1 and value != int(value):
                raise ValueError(f"{name} must be a fraction below 1 or a whole count, got {value}")
        return self


@dataclass(frozen=True)
class _Class:
    name: str
    files: tuple[Path, ...]


def _images_under(folder: Path) -> tuple[Path, ...]:
    return image_files(folder)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_sizes(total: int, train: float, val: float, where: Path) -> tuple[int, int]:
    def size(value: float) -> int:
        return round(value * total) if value < 1 else int(value)

    n_train, n_val = max(size(train), 1), size(val)
    if n_train + n_val > total:
        raise DataError(
            f"{where} has {total} class folders, fewer than task.train_classes + "
            f"task.val_classes = {n_train} + {n_val}; lower them or add classes"
        )
    return n_train, n_val


class ImageFolderSource(ImageSource):
    """The images under ``root`` in one of the layouts of the module text."""

    def __init__(
        self,
        root: Path,
        layout: Layout = "auto",
        *,
        train_classes: float = 0.64,
        val_classes: float = 0.16,
        split_seed: int = 0,
    ) -> None:
        self.root = root
        self.layout = self._detect() if layout == "auto" else layout
        self._split_options = (train_classes, val_classes, split_seed)

    @property
    def description(self) -> str:
        return f"image folder ({self.layout} layout) in {self.root}"

    def _detect(self) -> Layout:
        if any((self.root / f"{s}.csv").is_file() for s in SPLIT_NAMES):
            return "csv"
        if any((self.root / f"{s}.txt").is_file() for s in SPLIT_NAMES):
            return "txt"
        if (self.root / "train").is_dir():
            return "splits"
        return "folders"

    # -- the listing, per layout

    @cached_property
    def classes(self) -> dict[str, tuple[_Class, ...]]:
        """Each split's classes and their files (checked to exist), in the cache's order."""
        lister = {
            "csv": self._csv,
            "txt": self._txt,
            "splits": self._splits,
            "folders": self._folders,
        }[self.layout]
        classes = lister()
        if not any(classes.values()):
            raise DataError(
                f"{self.description}: no classes found; put class folders of images there "
                "(root/<class>/<image>), or train/val/test folders of them, or train.csv etc."
            )
        if not any(c.files for split in classes.values() for c in split):
            raise DataError(
                f"{self.description}: found classes but no image files "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}); check the folder"
            )
        return classes

    def _folders(self) -> dict[str, tuple[_Class, ...]]:
        folders = _subfolders(self.root)
        train, val, seed = self._split_options
        n_train, n_val = _split_sizes(len(folders), train, val, self.root) if folders else (0, 0)
        order = np.random.default_rng(seed).permutation(len(folders))
        cut = {"train": order[:n_train], "val": order[n_train : n_train + n_val]}
        cut["test"] = order[n_train + n_val :]
        return {
            split: tuple(_Class(folders[i].name, _images_under(folders[i])) for i in sorted(idx))
            for split, idx in cut.items()
        }

    def _splits(self) -> dict[str, tuple[_Class, ...]]:
        out: dict[str, tuple[_Class, ...]] = {}
        for split, names in _SPLIT_DIRS.items():
            folder = next((self.root / n for n in names if (self.root / n).is_dir()), None)
            folders = _subfolders(folder) if folder is not None else []
            out[split] = tuple(_Class(f.name, _images_under(f)) for f in folders)
        return out

    def _txt(self) -> dict[str, tuple[_Class, ...]]:
        out: dict[str, tuple[_Class, ...]] = {}
        for split in SPLIT_NAMES:
            listing = self.root / f"{split}.txt"
            if not listing.is_file():
                out[split] = ()
                continue
            lines = [line.strip() for line in _read_text(listing).splitlines()]
            names = [line for line in lines if line and not line.startswith("#")]
            out[split] = tuple(_Class(n, _images_under(self._class_dir(listing, n))) for n in names)
        return out

    def _class_dir(self, listing: Path, name: str) -> Path:
        for folder in (self.root / name, self.root / "images" / name):
            if folder.is_dir():
                return folder
        raise DataError(
            f"{listing} names class {name!r}, but neither {self.root / name} nor "
            f"{self.root / 'images' / name} is a folder; fix the list or add the folder"
        )

    def _csv(self) -> dict[str, tuple[_Class, ...]]:
        out: dict[str, tuple[_Class, ...]] = {}
        for split in SPLIT_NAMES:
            table = self.root / f"{split}.csv"
            files: dict[str, list[Path]] = {}
            if table.is_file():
                for row, (filename, label) in _csv_rows(table):
                    files.setdefault(label, []).append(self._csv_image(table, row, filename, label))
            out[split] = tuple(_Class(label, tuple(paths)) for label, paths in files.items())
        return out

    def _csv_image(self, table: Path, row: int, filename: str, label: str) -> Path:
        places = (
            self.root / "images",
            self.root / "images" / label,
            self.root,
            self.root / label,
        )
        for place in places:
            if (place / filename).is_file():
                return place / filename
        raise DataError(
            f"{table} row {row} names {filename!r} (class {label!r}), found in none of "
            f"{', '.join(str(p) + os.sep for p in places)}; add the image or drop the row"
        )

    # -- the ImageSource contract

    def fingerprint(self) -> str:
        # Names, sizes and mtimes, as ``FolderPart`` does: hashing every image would cost about
        # as much as decoding it. The lists' contents are hashed (they are small).
        digest = hashlib.sha256(f"{self.layout}\n".encode())
        for name in ("train", "val", "test"):
            for suffix in (".csv", ".txt"):
                listing = self.root / f"{name}{suffix}"
                if self.layout in ("csv", "txt") and listing.is_file():
                    digest.update(hashlib.sha256(listing.read_bytes()).digest())
        for split, classes in self.classes.items():
            for cls in classes:
                digest.update(f"{split}\0{cls.name}\n".encode())
                for file in cls.files:
                    st = file.stat()
                    digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"imagefolder:{digest.hexdigest()}"

    def index(self) -> ClassIndex:
        return ClassIndex(
            {
                split: tuple((c.name, len(c.files)) for c in classes)
                for split, classes in self.classes.items()
            }
        )

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        for cls in self.classes.get(split, ()):
            for file in cls.files:
                try:
                    data = file.read_bytes()
                except OSError as err:
                    raise DataError(f"{file} cannot be read ({one_line(err)})") from err
                yield cls.name, data

    def where(self, split: str, name: str, position: int) -> str:
        for cls in self.classes.get(split, ()):
            if cls.name == name and position < len(cls.files):
                return str(cls.files[position])
        return super().where(split, name, position)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} cannot be read as UTF-8 text ({one_line(err)})") from err


def _csv_rows(table: Path) -> Iterator[tuple[int, tuple[str, str]]]:
    """``(row number, (filename, label))`` per data row; a ``filename,label`` header is skipped."""
    rows = csv.reader(_read_text(table).splitlines())
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (
            number == 1 and [c.lower() for c in cells[:2]] == ["filename", "label"]
        ):
            continue
        if len(cells) != 2 or not all(cells):
            raise DataError(
                f"{table} row {number} is {','.join(cells)!r}, not 'filename,label'; fix the row"
            )
        yield number, (cells[0], cells[1])


class ImageFolder(ImageFamily):
    """N-way K-shot classification of the images in a folder you name."""

    name: ClassVar[str] = "imagefolder"
    Config: ClassVar[type[TaskConfig]] = ImageFolderConfig
    description: ClassVar[str] = (
        "N-way K-shot classification of your images: class folders, train/val/test folders, "
        "or CSV/TXT class lists (set task.data_dir)"
    )
    config: ImageFolderConfig

    def source(self) -> ImageFolderSource:
        cfg = self.config
        for location in candidate_dirs(self.name, cfg.data_dir):
            if location.path is not None and location.path.is_dir():
                return ImageFolderSource(
                    location.path,
                    cfg.layout,
                    train_classes=cfg.train_classes,
                    val_classes=cfg.val_classes,
                    split_seed=cfg.split_seed,
                )
        raise DataError(
            f"imagefolder needs a folder of images: set task.data_dir=<folder> (or "
            f"${DATA_ENV} to a root holding imagefolder/)"
        )


PRESETS = (
    Preset(
        name="imagefolder",
        description=(
            "Your images, 5-way 1-shot, with the paper's MiniImagenet settings (set task.data_dir)"
        ),
        values={
            "task": {"name": "imagefolder", "ways": 5, "shots": 1, "query": 15},
            # The paper's MiniImagenet network: 32 filters, max-pooling, on 84x84 RGB.
            "model": {"name": "conv4", "filters": 32, "downsample": "maxpool"},
            "algorithm": {"name": "maml"},
            # α = 0.01, 5 inner steps in training and 10 at test, 4 tasks per meta-batch.
            "inner": {"steps": 5, "lr": 0.01},
            "outer": {"name": "adam", "lr": 1e-3},
            "train": {
                "iterations": 60_000,
                "meta_batch_size": 4,
                "val_every": 500,
                "val_tasks": 100,
                "log_every": 50,
                "checkpoint_every": 500,
            },
            "eval": {"steps": 10, "tasks": 600, "batch_size": 50},
        },
    ),
)
