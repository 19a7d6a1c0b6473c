"""MiniImagenet (Vinyals et al. 2016, Ravi & Larochelle's split) in the three layouts in use.

* ``csv``: Ravi & Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv`` (header
  ``filename,label``, e.g. ``n0153282900000005.jpg,n01532829``) with the images in an
  ``images/`` folder beside them, or beside them directly.
* ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl`` of github.com/renmengye/
  few-shot-ssl-public (``val`` is ``validation`` in some copies): a dict with ``image_data``
  (N x 84 x 84 x 3 uint8) and ``class_dict`` (WordNet id -> list of row indices).
* ``hdf5``: torchmeta's conversion of those pickles (tristandeleu/pytorch-meta:
  torchmeta/datasets/miniimagenet.py): ``{split}_data.hdf5`` with one N x 84 x 84 x 3 uint8
  dataset per WordNet id in its ``datasets`` group, and ``{split}_labels.json``, the sorted list
  of those ids. Needs h5py (``pip install "mamlflow[hdf5]"``), imported only here.

MiniImagenet has no official download (the images are ImageNet's), so nothing is downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import DATA_ENV, candidate_dirs, one_line
from mamlflow.plugins.images import SPLIT_NAMES, ClassIndex, ImageData, ImageSource

from ._checks import EXPECTED, Expected, check_file, check_index, stat_fingerprint
from ._pickle import load_pickle

__all__ = [
    "MiniCsvSource",
    "MiniHdf5Source",
    "MiniPickleSource",
    "find_miniimagenet",
]

_HOW_TO_PLACE = (
    "MiniImagenet has no official download: put Ravi & Larochelle's train.csv, val.csv and "
    "test.csv with an images/ folder, or mini-imagenet-cache-{train,val,test}.pkl "
    "(github.com/renmengye/few-shot-ssl-public), or torchmeta's {train,val,test}_data.hdf5 with "
    f"{{train,val,test}}_labels.json in task.data_dir, or set {DATA_ENV}=<root> and put them in "
    "<root>/miniimagenet/"
)


def _expected(expected: Expected | None) -> Expected:
    return EXPECTED["miniimagenet"] if expected is None else expected


# --- the CSV layout


class MiniCsvSource(ImageSource):
    """``{split}.csv`` in ``root``, the JPEGs in ``images`` (``root/images`` or ``root``)."""

    def __init__(self, root: Path, images: Path, expected: Expected | None = None) -> None:
        self.root, self.images = root, images
        self.expected = _expected(expected)
        self.fix = f"put the images the CSVs name in {images}, or fix the CSVs"

    @property
    def description(self) -> str:
        return f"MiniImagenet CSVs in {self.root} (images in {self.images})"

    def _csv(self, split: str) -> dict[str, list[str]]:
        """Each class's image file names, in the CSV's order."""
        path = self.root / f"{split}.csv"
        check_file(path, "put Ravi & Larochelle's CSV there")
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a spreadsheet is harmless
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            head = one_line(",".join(rows[0]))[:60] if rows else "nothing"
            raise DataError(f"{path} starts with {head!r}, not the header 'filename,label'")
        classes: dict[str, list[str]] = {}
        for number, row in enumerate(rows[1:], 2):
            if len(row) != 2:
                raise DataError(f"line {number} of {path} has {len(row)} fields, not 2: {row}")
            classes.setdefault(row[1].strip(), []).append(row[0].strip())
        return classes

    @cached_property
    def _classes(self) -> dict[str, dict[str, list[str]]]:
        found = {split: self._csv(split) for split in SPLIT_NAMES}
        for split, classes in found.items():
            missing = [f for files in classes.values() for f in files if not self._has(f)]
            if missing:
                raise DataError(
                    f"{self.root / f'{split}.csv'} names {len(missing):,} images missing from "
                    f"{self.images} (e.g. {missing[0]}); {self.fix}"
                )
        return found

    def _has(self, name: str) -> bool:
        return (self.images / name).is_file()

    def fingerprint(self) -> str:
        # The CSVs' bytes, and every listed image's size and modification time.
        digest = hashlib.sha256()
        for split, classes in self._classes.items():
            digest.update((self.root / f"{split}.csv").read_bytes())
            for files in classes.values():
                digest.update(stat_fingerprint(*(self.images / f for f in files)).encode())
        return f"csv:{digest.hexdigest()}"

    @cached_property
    def _index(self) -> ClassIndex:
        splits = {
            split: tuple((name, len(files)) for name, files in classes.items())
            for split, classes in self._classes.items()
        }
        return check_index(ClassIndex(splits), self.expected, self.description, self.fix)

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        self.index()
        for name, files in self._classes[split].items():
            for file in files:
                yield name, (self.images / file).read_bytes()


# --- the pickle layout


def _pickle_fix(path: Path) -> str:
    return f"replace {path.name} with a good copy (github.com/renmengye/few-shot-ssl-public)"


def _mini_pickle(path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
    """``image_data`` and ``class_dict`` of one split's pickle, checked."""
    fix = _pickle_fix(path)
    check_file(path, fix)
    obj = load_pickle(path, fix)
    fields = {str(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    images, classes = fields.get("image_data"), fields.get("class_dict")
    if not (isinstance(images, np.ndarray) and isinstance(classes, dict)):
        raise DataError(
            f"{path} holds no dict with image_data (an array) and class_dict (a dict), so it "
            f"is not a MiniImagenet pickle; {fix}"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(
            f"{path}: image_data is {images.dtype} {tuple(images.shape)}, not N x H x W x 3 "
            f"uint8; {fix}"
        )
    indices = {str(name): [int(i) for i in rows] for name, rows in classes.items()}
    bad = [i for rows in indices.values() for i in rows if not 0 <= i < len(images)]
    if bad:
        raise DataError(
            f"{path}: class_dict points at row {bad[0]}, but image_data has {len(images):,} "
            f"rows; {fix}"
        )
    return images, indices


class MiniPickleSource(ImageSource):
    """One ``mini-imagenet-cache-*.pkl`` per split; classes in WordNet-id order."""

    def __init__(self, files: dict[str, Path], expected: Expected | None = None) -> None:
        self.files = files
        self.expected = _expected(expected)

    @property
    def description(self) -> str:
        return f"MiniImagenet pickles in {self.files['train'].parent}"

    def fingerprint(self) -> str:
        return stat_fingerprint(*(self.files[split] for split in SPLIT_NAMES))

    @cached_property
    def _index(self) -> ClassIndex:
        # Each pickle is loaded for its class_dict and dropped: keeping three splits' arrays
        # would hold 1.3 GB while the cache is built, one split at a time.
        splits = {}
        for split in SPLIT_NAMES:
            _, classes = _mini_pickle(self.files[split])
            splits[split] = tuple((name, len(classes[name])) for name in sorted(classes))
        fix = "replace the pickles with good copies (github.com/renmengye/few-shot-ssl-public)"
        return check_index(ClassIndex(splits), self.expected, self.description, fix)

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        self.index()
        images, classes = _mini_pickle(self.files[split])
        for name in sorted(classes):
            for row in classes[name]:
                yield name, images[row]


# --- the HDF5 layout


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise DataError(
            "reading MiniImagenet's {split}_data.hdf5 needs h5py, which is not installed: "
            'pip install "mamlflow[hdf5]", or use the pickle or CSV layout'
        ) from err
    return h5py


class MiniHdf5Source(ImageSource):
    """torchmeta's ``{split}_data.hdf5`` + ``{split}_labels.json`` in ``root``."""

    def __init__(self, root: Path, expected: Expected | None = None) -> None:
        self.root = root
        self.expected = _expected(expected)
        self.fix = (
            "rebuild them from mini-imagenet-cache-*.pkl (or use those pickles directly: "
            "mamlflow reads them)"
        )

    @property
    def description(self) -> str:
        return f"MiniImagenet HDF5 files in {self.root}"

    def _paths(self, split: str) -> tuple[Path, Path]:
        return self.root / f"{split}_data.hdf5", self.root / f"{split}_labels.json"

    def fingerprint(self) -> str:
        return stat_fingerprint(*(p for split in SPLIT_NAMES for p in self._paths(split)))

    def _labels(self, path: Path) -> list[str]:
        check_file(path, self.fix)
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not JSON ({one_line(err)}); {self.fix}") from err
        if not (isinstance(labels, list) and all(isinstance(n, str) for n in labels)):
            raise DataError(f"{path} is not a list of class names; {self.fix}")
        return labels

    def _with_datasets(self, split: str, use: Any) -> Any:
        """``use(labels, group)`` with the split's ``datasets`` group open; one line on errors."""
        h5py = _h5py()
        data_path, labels_path = self._paths(split)
        labels = self._labels(labels_path)
        check_file(data_path, self.fix)
        try:
            with h5py.File(data_path, "r") as f:
                group = f.get("datasets")
                if not isinstance(group, h5py.Group):
                    raise DataError(f"{data_path} has no 'datasets' group; {self.fix}")
                absent = [n for n in labels if not isinstance(group.get(n), h5py.Dataset)]
                if absent:
                    raise DataError(
                        f"{data_path} lacks the datasets of {len(absent)} classes "
                        f"{labels_path.name} lists (e.g. {absent[0]}); {self.fix}"
                    )
                return use(labels, group)
        except OSError as err:  # h5py raises OSError for a truncated or non-HDF5 file
            raise DataError(
                f"{data_path} is not a readable HDF5 file, truncated or corrupt "
                f"({one_line(err)}); {self.fix}"
            ) from err

    @cached_property
    def _index(self) -> ClassIndex:
        splits = {
            split: self._with_datasets(
                split, lambda labels, group: tuple((n, int(group[n].shape[0])) for n in labels)
            )
            for split in SPLIT_NAMES
        }
        return check_index(ClassIndex(splits), self.expected, self.description, self.fix)

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        self.index()

        def arrays(labels: list[str], group: Any) -> list[tuple[str, np.ndarray]]:
            return [(name, np.asarray(group[name][()], dtype=np.uint8)) for name in labels]

        # One class at a time would keep the file open across yields; a split is < 1 GB.
        for name, images in self._with_datasets(split, arrays):
            for image in images:
                yield name, image


# --- finding a layout


def _pickles(directory: Path) -> dict[str, Path] | None:
    found = {}
    for split in SPLIT_NAMES:
        names = ("val", "validation") if split == "val" else (split,)
        paths = [directory / f"mini-imagenet-cache-{n}.pkl" for n in names]
        hits = [p for p in paths if p.is_file()]
        if not hits:
            return None
        found[split] = hits[0]
    return found


def _layout_in(directory: Path, expected: Expected | None) -> ImageSource | None:
    """The first complete layout in ``directory``: pickles, then HDF5, then CSVs."""
    pickles = _pickles(directory)
    if pickles is not None:
        return MiniPickleSource(pickles, expected)
    if all((directory / f"{s}_data.hdf5").is_file() for s in SPLIT_NAMES):
        return MiniHdf5Source(directory, expected)
    if all((directory / f"{s}.csv").is_file() for s in SPLIT_NAMES):
        images = directory / "images"
        return MiniCsvSource(directory, images if images.is_dir() else directory, expected)
    return None


def find_miniimagenet(data_dir: Path | str | None, expected: Expected | None = None) -> ImageSource:
    """The MiniImagenet files in the first of ``data_dir``, ``$MAMLFLOW_DATA/miniimagenet`` and
    the user cache that holds a complete layout; one line saying where it looked otherwise."""
    notes = []
    for location in candidate_dirs("miniimagenet", data_dir):
        if location.path is None:
            notes.append(location.describe())
        elif (source := _layout_in(location.path, expected)) is not None:
            return source
        else:
            notes.append(f"{location.describe()}: no complete layout")
    raise DataError(
        f"MiniImagenet not found: looked for train/val/test CSVs, mini-imagenet-cache pickles "
        f"or _data.hdf5 files in {'; '.join(notes)}; {_HOW_TO_PLACE}"
    )
