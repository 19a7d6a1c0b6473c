"""A data set shipped as one official tarball (CIFAR-100, CUB-200-2011): the archive, or the
folder it extracts to, and its verified download.

Members are named relative to the archive's top folder (``cifar-100-python/meta`` is ``meta``).
Nothing is ever extracted to disk: members are read into memory, so a hostile member name
(``../../.bashrc``) has nowhere to go. A gzip tarball cannot be read at random without
decompressing from its start each time, so members are streamed in archive order and a reader
that needs another order buffers (:func:`in_order`).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import (
    DATA_ENV,
    Fetch,
    candidate_dirs,
    download_verified,
    one_line,
    user_cache_dir,
)

from ._checks import check_file, file_problem, stat_fingerprint

__all__ = [
    "Bundle",
    "DirBundle",
    "TarBundle",
    "Tarball",
    "download_tarball",
    "in_order",
    "locate_bundle",
]

# What tarfile, gzip and zlib raise on a truncated or corrupt archive.
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


@dataclass(frozen=True)
class Tarball:
    """An official archive: its file name, top folder, where it comes from and its md5."""

    filename: str
    top: str
    url: str
    md5: str


class Bundle(ABC):
    """The files of one :class:`Tarball`, as the archive itself or as its extracted folder."""

    tarball: Tarball

    @abstractmethod
    def names(self) -> frozenset[str]:
        """Every regular file, relative to the top folder; a broken archive is one line."""

    @abstractmethod
    def stream(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        """``(name, bytes)`` of each wanted member, in storage order."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the files may have changed."""

    @abstractmethod
    def where(self, name: str | None = None) -> str:
        """The bundle, or one member of it, as named in messages."""

    def how_to_fix(self) -> str:
        return (
            f"get a good {self.tarball.filename} from {self.tarball.url} (md5 {self.tarball.md5}) "
            f"and put it, or the {self.tarball.top}/ folder it extracts to, in its place"
        )


class TarBundle(Bundle):
    """The members of ``<dir>/<filename>`` under its ``<top>/`` folder."""

    def __init__(self, path: Path, tarball: Tarball) -> None:
        self.path = path
        self.tarball = tarball

    def _broken(self, err: BaseException) -> DataError:
        size = self.path.stat().st_size
        return DataError(
            f"{self.path} is not a readable tar archive, truncated or corrupt "
            f"({type(err).__name__}: {one_line(err)}; {size:,} bytes); delete it and "
            f"{self.how_to_fix()}"
        )

    def _members(self) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
        check_file(self.path, f"delete it and {self.how_to_fix()}")
        prefix = f"{self.tarball.top}/"
        try:
            with tarfile.open(self.path, "r:*") as archive:
                for info in archive:
                    if info.isfile() and info.name.startswith(prefix):
                        yield info.name[len(prefix) :], archive, info
        except _TAR_ERRORS as err:
            raise self._broken(err) from err

    @cached_property
    def _names(self) -> frozenset[str]:
        # Walking the members decompresses the whole archive, which also proves it is complete.
        return frozenset(name for name, _, _ in self._members())

    def names(self) -> frozenset[str]:
        return self._names

    def stream(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        left = set(wanted)
        for name, archive, info in self._members():
            if name in left:
                try:
                    member = archive.extractfile(info)
                    data = b"" if member is None else member.read()
                except _TAR_ERRORS as err:
                    raise self._broken(err) from err
                left.discard(name)
                yield name, data
                if not left:  # the rest of the archive need not be decompressed
                    return

    def fingerprint(self) -> str:
        return f"tar:{stat_fingerprint(self.path)}"

    def where(self, name: str | None = None) -> str:
        return str(self.path) if name is None else f"{self.tarball.top}/{name} in {self.path}"


class DirBundle(Bundle):
    """The extracted folder of a tarball (``<dir>/<top>/``)."""

    def __init__(self, root: Path, tarball: Tarball) -> None:
        self.root = root
        self.tarball = tarball

    @cached_property
    def _names(self) -> frozenset[str]:
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            rel = Path(folder).relative_to(self.root)
            found += [(rel / file).as_posix() for file in files]
        return frozenset(found)

    def names(self) -> frozenset[str]:
        return self._names

    def stream(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        for name in sorted(wanted):
            path = self.root / name
            problem = file_problem(path)
            if problem is not None:
                raise DataError(f"{path} {problem}; {self.how_to_fix()}")
            yield name, path.read_bytes()

    def fingerprint(self) -> str:
        names = sorted(self.names())
        return f"dir:{stat_fingerprint(*(self.root / name for name in names))}"

    def where(self, name: str | None = None) -> str:
        return f"{self.root}{os.sep}" if name is None else str(self.root / name)


def in_order(stream: Iterable[tuple[str, bytes]], order: list[str]) -> Iterator[tuple[str, bytes]]:
    """The members of ``stream`` in ``order``, holding back those that come early.

    When the storage order is already ``order`` (the official archives are), nothing is held.
    """
    held: dict[str, bytes] = {}
    position = 0
    for name, data in stream:
        held[name] = data
        while position < len(order) and order[position] in held:
            yield order[position], held.pop(order[position])
            position += 1
    if position < len(order):  # the caller checked names() first; a race with a deletion
        raise DataError(f"{order[position]} disappeared while it was read; read it again")


def _md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _download_problem(path: Path, tarball: Tarball) -> str | None:
    problem = file_problem(path)
    if problem is not None:
        return problem
    md5 = _md5(path)
    if md5 != tarball.md5:
        return f"has md5 {md5}, not the official {tarball.md5} (truncated or changed)"
    return None


def download_tarball(tarball: Tarball, dest_dir: Path, fetch: Fetch | None = None) -> Path:
    """Download ``tarball`` into ``dest_dir``, verified (no HTML page, the official md5, which a
    truncated body does not have), as ``_imagedata.download_archive`` does for zips."""
    return download_verified(
        tarball.url,
        tarball.filename,
        dest_dir,
        lambda path: _download_problem(path, tarball),
        fetch,
    )


def _bundle_in(directory: Path, tarball: Tarball, marker: str) -> Bundle | None:
    """The bundle in ``directory``: the archive, its extracted top folder, or ``directory``
    itself when it is that folder (holds ``marker``); the archive wins, as a zip does in
    ``_imagedata.find_parts`` (a folder may be half-extracted)."""
    archive, folder = directory / tarball.filename, directory / tarball.top
    if archive.is_file():
        return TarBundle(archive, tarball)
    if (folder / marker).is_file():
        return DirBundle(folder, tarball)
    if (directory / marker).is_file():
        return DirBundle(directory, tarball)
    return None


def locate_bundle(
    name: str,
    data_dir: Path | str | None,
    tarball: Tarball,
    marker: str,
    *,
    download: bool,
    fetch: Fetch | None = None,
) -> Bundle:
    """The data set's bundle from the first of ``candidate_dirs(name, data_dir)`` holding it,
    else downloaded (verified) into the user cache when ``download``; else one line saying what
    was looked for, where, and how to place it."""
    locations = candidate_dirs(name, data_dir)
    for location in locations:
        if location.path is not None and (found := _bundle_in(location.path, tarball, marker)):
            return found
    looked = (
        f"{tarball.filename} (or its extracted {tarball.top}/ folder) not found in "
        f"{'; '.join(location.describe() for location in locations)}"
    )
    place = (
        f"to place it by hand, download {tarball.url} (md5 {tarball.md5}) into task.data_dir, "
        f"or set {DATA_ENV}=<root> and put it in <root>/{name}/"
    )
    if not download:
        raise DataError(f"{looked}; task.download is false, so nothing was downloaded; {place}")
    dest = user_cache_dir() / name
    try:
        return TarBundle(download_tarball(tarball, dest, fetch), tarball)
    except DataError as err:
        raise DataError(f"{looked}; {err}; {place}") from err
