"""CUB-200-2011 (Wah et al. 2011) from its official tarball, split as in Chen et al. 2019.

``CUB_200_2011.tgz`` holds ``CUB_200_2011/classes.txt`` (``<id> <NNN.Species_name>``, one line a
species), ``CUB_200_2011/images.txt`` (``<id> <NNN.Species_name>/<file>.jpg``) and the JPEGs
under ``CUB_200_2011/images/``. A class is a species, named by its folder (``001.Black_footed_
Albatross``); its images come in ``images.txt`` order, so the cache does not depend on how the
archive or a file system orders them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import Fetch
from mamlflow.plugins.images import ClassIndex, ImageData, ImageSource

from ._bundle import Bundle, Tarball, in_order, locate_bundle
from ._checks import EXPECTED, Expected, check_index
from ._splits import cub_split

__all__ = ["CUB", "CubSource", "locate_cub"]

CUB = Tarball(
    filename="CUB_200_2011.tgz",
    top="CUB_200_2011",
    # CaltechDATA's record of the data set (its old vision.caltech.edu address is gone).
    url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
    md5="97eceeb196236b17998738112f37df78",
)


@dataclass(frozen=True)
class _Layout:
    """Species in ``classes.txt`` order, and each one's image members in ``images.txt`` order."""

    species: tuple[str, ...]
    members: dict[str, list[str]]


def _pairs(text: str, where: str, fix: str) -> list[tuple[str, str]]:
    """``(id, value)`` per non-blank line of a ``<id> <value>`` list file."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or not fields[0].isdigit():
                raise DataError(f"line {number} of {where} is not '<id> <name>': {line!r}; {fix}")
            pairs.append((fields[0], fields[1].strip()))
    return pairs


def _decode(data: bytes, where: str, fix: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where} is not a text file ({err.reason}); {fix}") from err


class CubSource(ImageSource):
    """CUB-200-2011's 200 species, 100 / 50 / 50 by Chen et al.'s index rule."""

    def __init__(self, bundle: Bundle, expected: Expected | None = None) -> None:
        self.bundle = bundle
        self.expected = EXPECTED["cub"] if expected is None else expected

    @property
    def description(self) -> str:
        return f"CUB-200-2011 in {self.bundle.where()}"

    def fingerprint(self) -> str:
        return self.bundle.fingerprint()

    @cached_property
    def _layout(self) -> _Layout:
        bundle, fix = self.bundle, self.bundle.how_to_fix()
        lists = ("classes.txt", "images.txt")
        missing = [name for name in lists if name not in bundle.names()]
        if missing:
            raise DataError(f"{bundle.where()} lacks {CUB.top}/{', '.join(missing)}; {fix}")
        text = {name: _decode(data, bundle.where(name), fix) for name, data in bundle.stream(lists)}
        species = tuple(
            name for _, name in _pairs(text["classes.txt"], bundle.where(lists[0]), fix)
        )
        members: dict[str, list[str]] = {name: [] for name in species}
        for _, path in _pairs(text["images.txt"], bundle.where(lists[1]), fix):
            folder = path.split("/", 1)[0]
            if folder not in members:
                raise DataError(
                    f"{bundle.where(lists[1])} lists {path}, of no species in classes.txt; {fix}"
                )
            members[folder].append(f"images/{path}")
        self._check_present(members)
        return _Layout(species, members)

    def _check_present(self, members: dict[str, list[str]]) -> None:
        names = self.bundle.names()
        listed = [m for ms in members.values() for m in ms]
        absent = [m for m in listed if m not in names]
        if absent:
            raise DataError(
                f"{self.description} lacks {len(absent):,} of the {len(listed):,} images "
                f"images.txt lists (e.g. {self.bundle.where(absent[0])}); "
                f"{self.bundle.how_to_fix()}"
            )

    @cached_property
    def _index(self) -> ClassIndex:
        layout = self._layout
        splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
        for i, name in enumerate(layout.species):
            splits[cub_split(i)].append((name, len(layout.members[name])))
        index = ClassIndex({split: tuple(classes) for split, classes in splits.items()})
        return check_index(index, self.expected, self.description, self.bundle.how_to_fix())

    def index(self) -> ClassIndex:
        return self._index

    def read(self, split: str) -> Iterator[tuple[str, ImageData]]:
        members = self._layout.members
        order = [m for name in self._index.names(split) for m in members[name]]
        species = {m: name for name in self._index.names(split) for m in members[name]}
        for member, data in in_order(self.bundle.stream(order), order):
            yield species[member], data


def locate_cub(
    data_dir: Path | str | None,
    *,
    download: bool,
    fetch: Fetch | None = None,
    expected: Expected | None = None,
) -> CubSource:
    """CUB-200-2011 from ``CUB_200_2011.tgz`` or its extracted folder in ``data_dir``,
    ``$MAMLFLOW_DATA/cub`` or the user cache; downloaded there (md5-checked) when none has it
    and ``download`` is true."""
    bundle = locate_bundle("cub", data_dir, CUB, "images.txt", download=download, fetch=fetch)
    return CubSource(bundle, expected)
