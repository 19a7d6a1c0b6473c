"""What an image data set is before the cache: its classes per split, and each class's images.

A data set's reader (an image folder, MiniImagenet's CSVs or pickles, the CIFAR-100 tarball, …)
is an ``ImageSource``. The cache builder asks it for the class index first (cheap: names and
counts, so counts are checked before anything is decoded), then streams each split's images in
the index's order, decodes and resizes them on every core, and writes one uint8 memory-mapped
array. A source never decodes what it does not have to: an encoded file is handed over as its
bytes, an array the layout already holds (a pickle of decoded images) as the array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["SPLIT_NAMES", "ClassIndex", "ImageData", "ImageSource"]

SPLIT_NAMES = ("train", "val", "test")
"""The split names a source uses (mamlflow's ``Split`` values)."""

ImageData = bytes | np.ndarray
"""One image: the bytes of an encoded file (any format Pillow decodes), or a decoded uint8 array
of shape (H, W) or (H, W, C) with C in (1, 3, 4)."""


@dataclass(frozen=True)
class ClassIndex:
    """The classes of every split, in order, with how many images each has.

    ``splits["train"]`` is ``((class name, image count), ...)``; a split a layout does not have
    is absent or empty. Class names are what the user knows them by (a folder name, a WordNet
    id, a CIFAR fine label), unique within a split.
    """

    splits: Mapping[str, tuple[tuple[str, int], ...]]

    def names(self, split: str) -> tuple[str, ...]:
        return tuple(name for name, _ in self.splits.get(split, ()))

    def counts(self, split: str) -> tuple[int, ...]:
        return tuple(count for _, count in self.splits.get(split, ()))


class ImageSource(ABC):
    """A data set on disk, in one of the layouts users have.

    Every method raises ``mamlflow.core.DataError`` with one line naming what was found, where,
    and how to fix it (``mamlflow.plugins._imagedata.one_line``), never a library's exception.
    """

    @property
    @abstractmethod
    def description(self) -> str:
        """What was found and where, for messages: ``"MiniImagenet pickles in /data/mini"``."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies the raw files (names, sizes, modification times or checksums): the cache is
        rebuilt when it changes."""

    @abstractmethod
    def index(self) -> ClassIndex:
        """The classes per split and their image counts, checked against what the layout must
        hold; no image is decoded."""

    @abstractmethod
    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        """``(class name, image)`` for every image of ``split``, class by class in ``index()``'s
        order and exactly its counts."""

    def where(self, split: str, name: str, position: int) -> str:
        """How image ``position`` (0-based, in ``read``'s order) of class ``name`` is named in
        messages; a source that reads files overrides this to give the file's path."""
        return f"image {position} of class {name!r} ({split} split) of {self.description}"
