"""CIFAR-FS and FC100 from the official CIFAR-100 tarball (Krizhevsky 2009).

``cifar-100-python.tar.gz`` holds three Python 2 pickles under ``cifar-100-python/``: ``train``
(50,000 images) and ``test`` (10,000), each a dict with ``data`` (N x 3072 uint8, the R, G and B
planes of a 32x32 image in turn), ``fine_labels`` and ``coarse_labels``; and ``meta`` with
``fine_label_names`` and ``coarse_label_names``. The few-shot sets pool both batches, 600 images
per class, and split the 100 classes by the lists in ``_splits``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import Fetch
from mamlflow.plugins.images import SPLIT_NAMES, ClassIndex, ImageData, ImageSource

from ._bundle import Bundle, Tarball, locate_bundle
from ._checks import EXPECTED, Expected, check_index
from ._pickle import load_pickle_bytes
from ._splits import CIFAR_FS, FC100_SUPERCLASSES

__all__ = ["CIFAR100", "CifarSource", "locate_cifar"]

CIFAR100 = Tarball(
    filename="cifar-100-python.tar.gz",
    top="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)
_DATA_NAME = "cifar100"  # both families read the same tarball: one download serves both
_SIDE = 32

Variant = Literal["cifar-fs", "fc100"]


@dataclass(frozen=True, eq=False)
class _Cifar100:
    """All 60,000 images, the training batch first, with their labels and the label names."""

    images: np.ndarray  # (60000, 32, 32, 3) uint8
    fine: np.ndarray
    coarse: np.ndarray
    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]


def _text(value: Any) -> str:
    # latin1 turns a Python 2 str into str; a pickle written by Python 3 may hold bytes.
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _fields(obj: Any, keys: tuple[str, ...], where: str, fix: str) -> dict[str, Any]:
    """``obj``'s ``keys`` (bytes or str in the file), or one line naming what is missing."""
    found = {_text(k): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    missing = [k for k in keys if k not in found]
    if missing:
        what = f"a dict without {', '.join(missing)}" if isinstance(obj, dict) else "no dict"
        raise DataError(f"{where} holds {what}, not a CIFAR-100 pickle; {fix}")
    return found


def _batch(obj: Any, where: str, fix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fields = _fields(obj, ("data", "fine_labels", "coarse_labels"), where, fix)
    data = fields["data"]
    fine = np.asarray(fields["fine_labels"], dtype=np.int64)
    coarse = np.asarray(fields["coarse_labels"], dtype=np.int64)
    side = _SIDE * _SIDE * 3
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise DataError(f"{where}: data is not a uint8 matrix; {fix}")
    if data.shape[1] != side or not len(data) == len(fine) == len(coarse):
        raise DataError(
            f"{where}: data is {data.shape[0]:,} x {data.shape[1]:,} with {len(fine):,} fine and "
            f"{len(coarse):,} coarse labels, not N x {side} with N of each; {fix}"
        )
    # Rows are the R, G and B planes of a 32x32 image, one after the other.
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, fine, coarse


def _load(bundle: Bundle) -> _Cifar100:
    fix = bundle.how_to_fix()
    wanted = ("train", "test", "meta")
    missing = sorted(set(wanted) - bundle.names())
    if missing:
        raise DataError(f"{bundle.where()} lacks {CIFAR100.top}/{', '.join(missing)}; {fix}")
    raw = dict(bundle.stream(wanted))
    loaded = {name: load_pickle_bytes(raw.pop(name), bundle.where(name), fix) for name in wanted}
    meta = _fields(
        loaded["meta"], ("fine_label_names", "coarse_label_names"), bundle.where("meta"), fix
    )
    train = _batch(loaded["train"], bundle.where("train"), fix)
    test = _batch(loaded["test"], bundle.where("test"), fix)
    images, fine, coarse = (np.concatenate(pair) for pair in zip(train, test, strict=True))
    return _Cifar100(
        images=np.ascontiguousarray(images),
        fine=fine,
        coarse=coarse,
        fine_names=tuple(_text(n) for n in meta["fine_label_names"]),
        coarse_names=tuple(_text(n) for n in meta["coarse_label_names"]),
    )


class CifarSource(ImageSource):
    """CIFAR-FS or FC100 (``variant``) from the CIFAR-100 tarball or its extracted folder."""

    def __init__(self, bundle: Bundle, variant: Variant, expected: Expected | None = None) -> None:
        self.bundle = bundle
        self.variant = variant
        self.expected = EXPECTED[variant] if expected is None else expected

    @property
    def description(self) -> str:
        label = "CIFAR-FS" if self.variant == "cifar-fs" else "FC100"
        return f"{label} from CIFAR-100 in {self.bundle.where()}"

    def fingerprint(self) -> str:
        return f"{self.variant}\n{self.bundle.fingerprint()}"

    @cached_property
    def _data(self) -> _Cifar100:
        return _load(self.bundle)

    def _unknown(self, kind: str, names: list[str]) -> DataError:
        return DataError(
            f"{self.bundle.where('meta')} has no {kind} {', '.join(names[:3])}, which "
            f"{self.variant} uses: not the official CIFAR-100; {self.bundle.how_to_fix()}"
        )

    def _classes(self) -> Mapping[str, list[int]]:
        """The fine label ids of each split, in fine-label order."""
        data = self._data
        if self.variant == "cifar-fs":
            named = {split: set(CIFAR_FS[split]) for split in SPLIT_NAMES}
            unknown = sorted(set().union(*named.values()) - set(data.fine_names))
            if unknown:
                raise self._unknown("classes", unknown)
            return {s: [i for i, n in enumerate(data.fine_names) if n in named[s]] for s in named}
        unknown = sorted(
            {n for names in FC100_SUPERCLASSES.values() for n in names} - set(data.coarse_names)
        )
        if unknown:
            raise self._unknown("superclasses", unknown)
        coarse_of = dict(zip(data.fine.tolist(), data.coarse.tolist(), strict=True))
        return {
            split: [
                fine
                for fine in sorted(coarse_of)
                if data.coarse_names[coarse_of[fine]] in FC100_SUPERCLASSES[split]
            ]
            for split in SPLIT_NAMES
        }

    @cached_property
    def _index(self) -> ClassIndex:
        data = self._data
        counts = np.bincount(data.fine, minlength=len(data.fine_names))
        splits = {
            split: tuple((data.fine_names[i], int(counts[i])) for i in ids)
            for split, ids in self._classes().items()
        }
        fix = self.bundle.how_to_fix()
        return check_index(ClassIndex(splits), self.expected, self.description, fix)

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        data = self._data
        names = set(self._index.names(split))
        for fine, name in enumerate(data.fine_names):
            if name in names:
                for i in np.flatnonzero(data.fine == fine):
                    yield name, data.images[i]


def locate_cifar(
    variant: Variant,
    data_dir: Path | str | None,
    *,
    download: bool,
    fetch: Fetch | None = None,
    expected: Expected | None = None,
) -> CifarSource:
    """CIFAR-FS or FC100 from ``cifar-100-python.tar.gz`` or its extracted folder in
    ``data_dir``, ``$MAMLFLOW_DATA/cifar100`` or the user cache; downloaded there (md5-checked)
    when none has it and ``download`` is true."""
    bundle = locate_bundle(_DATA_NAME, data_dir, CIFAR100, "meta", download=download, fetch=fetch)
    return CifarSource(bundle, variant, expected)
