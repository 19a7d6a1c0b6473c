"""Building blocks for image datasets: find the raw files, check and download zip archives, cache
the decoded arrays.

Nothing here knows a particular dataset. A dataset module (``omniglot._data``) names its archives
and their layout and calls these helpers. Every failure is a one-line :class:`DataError` that says
what was found and how to fix it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import numpy as np

from mamlflow.core import DataError, atomic_write, looks_like_html

__all__ = [
    "DATA_ENV",
    "Archive",
    "Fetch",
    "FolderPart",
    "Location",
    "Part",
    "ZipPart",
    "cache_file",
    "candidate_dirs",
    "download_archive",
    "download_verified",
    "file_sha256",
    "find_parts",
    "load_array_cache",
    "one_line",
    "save_array_cache",
    "source_key",
    "urllib_fetch",
    "user_cache_dir",
]

DATA_ENV = "MAMLFLOW_DATA"
"""Env var naming a data root: dataset ``name`` is looked for in ``$MAMLFLOW_DATA/<name>/``."""

Fetch = Callable[[str, Path], None]
"""Writes the body at a URL into a file; raises ``OSError`` (or ``HTTPException``) on failure."""

_CACHE_FORMAT = 1  # bump when the sidecar's fields change


def one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mamlflow``, else ``~/.cache/mamlflow``: downloads and array caches."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "mamlflow"


@dataclass(frozen=True)
class Location:
    """A directory where a dataset's raw files may be, and why it is looked at."""

    origin: str
    path: Path | None  # None: the origin is not set (an env var that is unset)

    def describe(self) -> str:
        return f"{self.origin} (unset)" if self.path is None else f"{self.path} ({self.origin})"


def candidate_dirs(name: str, data_dir: Path | str | None) -> list[Location]:
    """Where dataset ``name`` is looked for, in order: the argument, ``$MAMLFLOW_DATA/<name>``,
    then ``<user cache dir>/<name>`` (where downloads go)."""
    found: list[Location] = []
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            # Asked for by name: looking elsewhere instead would train on other data silently.
            raise DataError(
                f"task.data_dir: {path} is not a directory; fix the path, or drop task.data_dir "
                f"to look in ${DATA_ENV}/{name} and {user_cache_dir() / name}"
            )
        found.append(Location("data_dir", path))
    env = os.environ.get(DATA_ENV, "")
    found.append(Location(f"${DATA_ENV}/{name}", Path(env).expanduser() / name if env else None))
    found.append(Location("user cache", user_cache_dir() / name))
    return found


# --- the raw files: a zip archive or its extracted folder


class Part(ABC):
    """One part of a dataset, e.g. Omniglot's ``images_background``: as a zip or as a folder.

    Member names are POSIX paths relative to the part's top folder (``Latin/character01/x.png``).
    ``url`` is where a good ``<name>.zip`` comes from, for messages.
    """

    name: str
    path: Path
    url: str

    @abstractmethod
    def members(self) -> list[str]:
        """The relative paths of all files in the part (directories excluded)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the content may have changed."""

    @abstractmethod
    @contextmanager
    def reader(self) -> Iterator[Callable[[str], bytes]]:
        """A function returning a member's bytes, valid inside the ``with`` block."""

    @abstractmethod
    def where(self, member: str | None = None) -> str:
        """How the part, or one member of it, is named in messages."""

    @abstractmethod
    def how_to_fix(self) -> str:
        """What to do when the part is broken or incomplete, for messages."""

    def _origin(self) -> str:
        return f" (from {self.url})" if self.url else ""


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable zip archive, or None when it opens as one."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError as err:
        return f"cannot be read ({one_line(err)})"
    if size == 0:
        return "is empty (0 bytes)"
    if looks_like_html(head):
        # A captive portal, a login page or an HTTP error page saved under the zip's name.
        return "is an HTML page, not a zip"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"is not a valid zip, truncated or corrupt ({one_line(err)}; {size:,} bytes)"
    return None


@final
@dataclass(frozen=True)
class ZipPart(Part):
    """A part read straight from ``<dir>/<name>.zip``, whose entries sit under ``<name>/``."""

    name: str
    path: Path
    url: str = ""

    def check(self) -> None:
        """Raise a one-line DataError when the file is not a readable zip."""
        problem = _zip_problem(self.path)
        if problem is not None:
            raise DataError(f"{self.path} {problem}; {self.how_to_fix()}")

    def members(self) -> list[str]:
        self.check()
        prefix = f"{self.name}/"
        with zipfile.ZipFile(self.path) as archive:
            return [
                n[len(prefix) :]
                for n in archive.namelist()
                if n.startswith(prefix) and not n.endswith("/")
            ]

    def fingerprint(self) -> str:
        return f"zip:{file_sha256(self.path)}"

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], bytes]]:
        self.check()
        with zipfile.ZipFile(self.path) as archive:

            def read(member: str) -> bytes:
                return archive.read(f"{self.name}/{member}")

            yield read

    def where(self, member: str | None = None) -> str:
        return str(self.path) if member is None else f"{self.name}/{member} in {self.path}"

    def how_to_fix(self) -> str:
        return (
            f"delete it and put a good {self.name}.zip there{self._origin()}, "
            f"or its extracted {self.name}/ folder"
        )


@final
@dataclass(frozen=True)
class FolderPart(Part):
    """A part read from the extracted folder ``<dir>/<name>/``."""

    name: str
    path: Path
    url: str = ""

    def _files(self) -> Iterator[tuple[str, os.stat_result]]:
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            rel = Path(root).relative_to(self.path)
            for file in sorted(files):
                yield (rel / file).as_posix(), Path(root, file).stat()

    def members(self) -> list[str]:
        return [rel for rel, _ in self._files()]

    def fingerprint(self) -> str:
        # Hashing 30k small files would cost about as much as decoding them; names, sizes and
        # mtimes catch a re-extraction or an edit.
        digest = hashlib.sha256()
        for rel, st in self._files():
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"dir:{digest.hexdigest()}"

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], bytes]]:
        def read(member: str) -> bytes:
            return (self.path / member).read_bytes()

        yield read

    def where(self, member: str | None = None) -> str:
        return f"{self.path}{os.sep}" if member is None else str(self.path / member)

    def how_to_fix(self) -> str:
        return (
            f"extract {self.name}.zip{self._origin()} into {self.path.parent} again, "
            f"or put the zip itself there (a zip is used before its folder)"
        )


def find_parts(
    locations: list[Location], names: tuple[str, ...], urls: Mapping[str, str] | None = None
) -> tuple[dict[str, Part] | None, list[str]]:
    """The first location holding every part in ``names``, as ``<name>.zip`` or ``<name>/``.

    A zip wins over a folder of the same name (the folder may be half-extracted). Returns the
    parts (None when no location has them all) and one note per location for error messages.
    """
    urls = urls or {}
    notes: list[str] = []
    for location in locations:
        if location.path is None:
            notes.append(location.describe())
            continue
        parts: dict[str, Part] = {}
        for name in names:
            zip_path, folder = location.path / f"{name}.zip", location.path / name
            if zip_path.is_file():
                parts[name] = ZipPart(name, zip_path, urls.get(name, ""))
            elif folder.is_dir():
                parts[name] = FolderPart(name, folder, urls.get(name, ""))
        if len(parts) == len(names):
            return parts, notes
        if not location.path.is_dir():
            notes.append(f"{location.describe()}: no such directory")
        elif parts:
            have = ", ".join(sorted(p.path.name for p in parts.values()))
            notes.append(f"{location.describe()}: has only {have}")
        else:
            notes.append(f"{location.describe()}: has neither")
    return None, notes


# --- downloads


@dataclass(frozen=True)
class Archive:
    """A zip archive that can be downloaded, with the digests any good copy has.

    A download is accepted when its md5 is in ``md5`` or its sha256 is in ``sha256``, so an
    official archive and a known repack both pass.
    """

    filename: str
    url: str
    md5: frozenset[str] = frozenset()
    sha256: frozenset[str] = frozenset()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def urllib_fetch(url: str, dest: Path) -> None:
    """The default :data:`Fetch`: stream ``url`` into ``dest`` with urllib."""
    request = urllib.request.Request(url, headers={"User-Agent": "mamlflow"})
    with urllib.request.urlopen(request, timeout=60) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _download_problem(path: Path, archive: Archive) -> str | None:
    problem = _zip_problem(path)
    if problem is not None:
        return problem
    with path.open("rb") as f:
        data = f.read()
    md5, sha256 = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    if md5 in archive.md5 or sha256 in archive.sha256:
        return None
    return f"has md5 {md5} and sha256 {sha256}, neither a known good copy"


def download_archive(archive: Archive, dest_dir: Path, fetch: Fetch | None = None) -> Path:
    """Download ``archive`` into ``dest_dir``, verified (a zip, with a known digest)."""
    return download_verified(
        archive.url,
        archive.filename,
        dest_dir,
        lambda path: _download_problem(path, archive),
        fetch,
    )


def download_verified(
    url: str,
    filename: str,
    dest_dir: Path,
    problem_of: Callable[[Path], str | None],
    fetch: Fetch | None = None,
) -> Path:
    """Download ``url`` as ``dest_dir/filename``, verified, then renamed into place atomically.

    The body goes to a temp file beside the destination; when ``problem_of(temp)`` finds one (an
    HTML page, a truncated archive, a wrong digest), that is a one-line DataError and nothing is
    left behind. A network failure is a DataError starting with ``download of <url> failed``.
    """
    fetch = urllib_fetch if fetch is None else fetch
    dest = dest_dir / filename
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            fetch(url, tmp)
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise DataError(f"download of {url} failed ({one_line(err)})") from err
        problem = problem_of(tmp)
        if problem is not None:
            raise DataError(f"download of {url} failed: the file {problem}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# --- the array cache


def source_key(*fingerprints: str) -> str:
    """A short hash naming a cache built from sources with these fingerprints."""
    return hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:16]


def cache_file(cache_dir: Path, stem: str, key: str) -> Path:
    """``<cache_dir>/<stem>-<key>.npy``; its sidecar is the same path with ``.json``."""
    return cache_dir / f"{stem}-{key}.npy"


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array)).hexdigest()


def save_array_cache(path: Path, array: np.ndarray, meta: Mapping[str, Any]) -> None:
    """Write ``array`` to ``path`` (.npy) and ``meta`` plus the array's shape, dtype and sha256
    to the ``.json`` sidecar, each atomically; the sidecar goes last, so it never vouches for a
    half-written array."""
    sidecar = {
        **meta,
        "format": _CACHE_FORMAT,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "sha256": _array_sha256(array),
    }
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
    atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())


def load_array_cache(
    path: Path, expect: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached array, memory-mapped read-only, and its sidecar; None when there is none.

    The cache is used only when the sidecar holds every item of ``expect`` and the sha256 of the
    mapped bytes matches (~30 ms for 25 MB), so a truncated, bit-flipped or stale cache is caught;
    such a cache warns (RuntimeWarning) and returns None, for the caller to rebuild it.
    """
    if not path.exists():
        return None
    opened = _open_cache(path, expect)
    if isinstance(opened, str):
        warnings.warn(f"cache {path} {opened}; rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    return opened


def _open_cache(path: Path, expect: Mapping[str, Any]) -> str | tuple[np.ndarray, dict[str, Any]]:
    """The mapped array and its sidecar, or why they cannot be used."""
    try:
        sidecar = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return "has no .json sidecar"
    except (OSError, ValueError) as err:
        return f"has an unreadable .json sidecar ({one_line(err)})"
    if not isinstance(sidecar, dict):
        return "has a malformed .json sidecar"
    wanted = {**expect, "format": _CACHE_FORMAT}
    stale = sorted(k for k, v in wanted.items() if sidecar.get(k) != v)
    if stale:
        return f"is stale (sidecar differs in {', '.join(stale)})"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return f"is unreadable, truncated or corrupt ({one_line(err)})"
    if list(array.shape) != sidecar.get("shape") or array.dtype.str != sidecar.get("dtype"):
        return f"holds {array.dtype} {tuple(array.shape)}, not what its sidecar says"
    if _array_sha256(array) != sidecar.get("sha256"):
        return "is corrupt (sha256 of its data differs from the sidecar)"
    return array, sidecar
