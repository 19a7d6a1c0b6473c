"""tieredImagenet (Ren et al. 2018) as its authors ship it: Python 2 pickles per split.

``{split}_images_png.pkl`` is a list with one PNG-encoded image per entry (a uint8 numpy array
of the file's bytes, as ``cv2.imencode`` returns it); ``{split}_labels.pkl`` a dict whose
``label_specific`` gives each image's class id and ``label_specific_str`` each class's name (a
WordNet id), beside ``label_general`` / ``label_general_str`` for the 34 super-categories. The
files come from ``tiered-imagenet.tar`` of github.com/renmengye/few-shot-ssl-public, which has no
verifiable public URL, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import DATA_ENV, candidate_dirs
from mamlflow.plugins.images import SPLIT_NAMES, ClassIndex, ImageData, ImageSource

from ._checks import EXPECTED, Expected, check_file, check_index, stat_fingerprint
from ._pickle import load_pickle

__all__ = ["TieredSource", "locate_tiered"]

_GET = (
    "get tiered-imagenet.tar (linked from github.com/renmengye/few-shot-ssl-public) and extract "
    "its {train,val,test}_images_png.pkl and {train,val,test}_labels.pkl"
)


@dataclass(frozen=True, eq=False)
class _Labels:
    names: tuple[str, ...]
    specific: np.ndarray  # the class id of each image, in file order


def _files(root: Path, split: str) -> tuple[Path, Path]:
    return root / f"{split}_images_png.pkl", root / f"{split}_labels.pkl"


def _labels(path: Path, fix: str) -> _Labels:
    obj = load_pickle(path, fix)
    fields = {str(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    if "label_specific" not in fields or "label_specific_str" not in fields:
        raise DataError(
            f"{path} holds no dict with label_specific and label_specific_str, so it is not a "
            f"tieredImagenet labels file; {fix}"
        )
    names = tuple(str(n) for n in fields["label_specific_str"])
    specific = np.asarray(fields["label_specific"]).astype(np.int64, copy=False).reshape(-1)
    if specific.size and (specific.min() < 0 or specific.max() >= len(names)):
        raise DataError(
            f"{path}: label_specific holds ids up to {specific.max()} for {len(names)} classes "
            f"in label_specific_str; {fix}"
        )
    return _Labels(names, specific)


def _encoded(item: Any, where: str, fix: str) -> bytes:
    """One image's file bytes, however the pickle stored them."""
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):  # a Python 2 str read back through latin1, byte for byte
        return item.encode("latin1")
    raise DataError(f"{where} holds a {type(item).__name__}, not an encoded image; {fix}")


class TieredSource(ImageSource):
    """The three splits' pickles in ``root``."""

    def __init__(self, root: Path, expected: Expected | None = None) -> None:
        self.root = root
        self.expected = EXPECTED["tieredimagenet"] if expected is None else expected
        self.fix = f"{_GET} into {root}"

    @property
    def description(self) -> str:
        return f"tieredImagenet pickles in {self.root}"

    def fingerprint(self) -> str:
        return stat_fingerprint(*(p for split in SPLIT_NAMES for p in _files(self.root, split)))

    @cached_property
    def _labels(self) -> dict[str, _Labels]:
        found = {}
        for split in SPLIT_NAMES:
            images, labels = _files(self.root, split)
            check_file(images, self.fix)  # cheap: its size and first bytes, before anything
            check_file(labels, self.fix)
            found[split] = _labels(labels, self.fix)
        return found

    @cached_property
    def _index(self) -> ClassIndex:
        splits = {}
        for split, labels in self._labels.items():
            counts = np.bincount(labels.specific, minlength=len(labels.names))
            splits[split] = tuple(zip(labels.names, counts.tolist(), strict=True))
        return check_index(ClassIndex(splits), self.expected, self.description, self.fix)

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        labels = self._labels[split]
        self.index()
        path = _files(self.root, split)[0]
        images = load_pickle(path, self.fix)
        listed = isinstance(images, list | tuple | np.ndarray)
        if not listed or len(images) != labels.specific.size:
            have = f"{len(images):,} entries" if listed else "no list"
            raise DataError(
                f"{path} holds {have}, but {split}_labels.pkl labels "
                f"{labels.specific.size:,} images; {self.fix}"
            )
        for class_id, name in enumerate(labels.names):
            for i in np.flatnonzero(labels.specific == class_id):
                yield name, _encoded(images[i], f"entry {i} of {path}", self.fix)


def locate_tiered(data_dir: Path | str | None, expected: Expected | None = None) -> TieredSource:
    """The pickles in the first of ``data_dir``, ``$MAMLFLOW_DATA/tieredimagenet`` and the user
    cache (each as is, or its ``tiered-imagenet/`` folder) that holds all six."""
    notes = []
    for location in candidate_dirs("tieredimagenet", data_dir):
        if location.path is None:
            notes.append(location.describe())
            continue
        for root in (location.path, location.path / "tiered-imagenet"):
            if all(p.is_file() for split in SPLIT_NAMES for p in _files(root, split)):
                return TieredSource(root, expected)
        notes.append(f"{location.describe()}: no complete set")
    raise DataError(
        f"tieredImagenet not found: looked for {{train,val,test}}_images_png.pkl and "
        f"{{train,val,test}}_labels.pkl in {'; '.join(notes)}; {_GET} into task.data_dir, or "
        f"set {DATA_ENV}=<root> and put them in <root>/tieredimagenet/"
    )
