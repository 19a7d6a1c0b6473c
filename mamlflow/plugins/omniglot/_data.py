"""Omniglot (Lake et al. 2015) as one uint8 array: 1,623 characters x 20 drawings of 28x28.

:func:`load_omniglot` finds the two official archives (``images_background.zip``,
``images_evaluation.zip``) or their extracted folders, checks the layout, resizes every 105x105
drawing to 28x28 with Lanczos (as the MAML paper does) with ink = 255, and caches the result as
``omniglot-28x28-<key>.npy`` plus a ``.json`` sidecar. Later calls memory-map the cache.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import (
    Archive,
    Fetch,
    Location,
    Part,
    cache_file,
    candidate_dirs,
    download_archive,
    find_parts,
    load_array_cache,
    one_line,
    save_array_cache,
    source_key,
    user_cache_dir,
)

__all__ = ["DRAWINGS", "IMAGE_SIZE", "OmniglotArrays", "load_omniglot"]

IMAGE_SIZE = 28
DRAWINGS = 20
_RAW_SIZE = (105, 105)
# Part of the cache key: bump it when the preprocessing changes.
_CACHE_VERSION = "omniglot-28x28-lanczos-ink255-v1"
_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_PROGRESS_EVERY = 500

_BACKGROUND_ALPHABETS = (
    "Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Armenian",
    "Asomtavruli_(Georgian)", "Balinese", "Bengali", "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Braille", "Burmese_(Myanmar)", "Cyrillic", "Early_Aramaic", "Futurama", "Grantha", "Greek",
    "Gujarati", "Hebrew", "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Japanese_(hiragana)",
    "Japanese_(katakana)", "Korean", "Latin", "Malay_(Jawi_-_Arabic)", "Mkhedruli_(Georgian)",
    "N_Ko", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Sanskrit", "Syriac_(Estrangelo)",
    "Tagalog", "Tifinagh",
)  # fmt: skip
_EVALUATION_ALPHABETS = (
    "Angelic", "Atemayar_Qelisayer", "Atlantean", "Aurek-Besh", "Avesta", "Ge_ez", "Glagolitic",
    "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
    "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan",
    "ULOG",
)  # fmt: skip


@dataclass(frozen=True)
class _Split:
    name: str
    alphabets: tuple[str, ...]
    characters: int
    md5: str  # of the official archive
    sha256: str  # of the repack in shared/data/omniglot

    @property
    def drawings(self) -> int:
        return self.characters * DRAWINGS

    @property
    def archive(self) -> Archive:
        return Archive(
            f"{self.name}.zip",
            _BASE_URL + f"{self.name}.zip",
            md5=frozenset({self.md5}),
            sha256=frozenset({self.sha256}),
        )


_SPLITS = (
    _Split(
        "images_background",
        _BACKGROUND_ALPHABETS,
        964,
        "68d2efa1b9178cc56df9314c21c6e718",
        "7a4cae547f16207901bd3acaabd866c1dbbef4d559dff26d797dbc6423a64a1e",
    ),
    _Split(
        "images_evaluation",
        _EVALUATION_ALPHABETS,
        659,
        "6b91aef0f799c5bb55b94e3f2daec811",
        "d84af890b3ea334eca90f1cb04c6111603a1b620d66b82f86414b8707fbd0e8d",
    ),
)
_NUM_CHARACTERS = sum(s.characters for s in _SPLITS)
_SHAPE = (_NUM_CHARACTERS, DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
_HOW_TO_PLACE = (
    f"to place the data by hand, get images_background.zip and images_evaluation.zip from "
    f"{_BASE_URL} and put both in data_dir, or set MAMLFLOW_DATA=<root> with "
    f"<root>/omniglot/images_background.zip and <root>/omniglot/images_evaluation.zip"
)
_CHARACTER_DIR = re.compile(r"character(\d+)")
_DRAWING_FILE = re.compile(r"\d{4}_(\d{2})\.png")


@dataclass(frozen=True, eq=False)
class OmniglotArrays:
    """All of Omniglot, one row per character.

    ``images[c, d]`` is drawing ``d`` (drawer 01..20) of character ``c``: 28x28 uint8, ink = 255,
    background = 0, a read-only memory map of the cache. Characters are the 964
    ``images_background`` ones, then the 659 ``images_evaluation`` ones, each sorted by
    (alphabet, characterNN); ``characters[c]`` is ``"<Alphabet>/characterNN"`` as in the Vinyals
    split files.
    """

    images: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]
    background: np.ndarray


# --- finding and checking the raw files


def _locate(data_dir: Path | str | None, download: bool, fetch: Fetch | None) -> dict[str, Part]:
    names = tuple(s.name for s in _SPLITS)
    urls = {s.name: s.archive.url for s in _SPLITS}
    parts, notes = find_parts(candidate_dirs("omniglot", data_dir), names, urls)
    if parts is not None:
        return parts
    looked = (
        "Omniglot not found: looked for images_background and images_evaluation (.zip or "
        f"extracted folder) in {'; '.join(notes)}"
    )
    if not download:
        raise DataError(f"{looked}; download=False, so nothing was downloaded; {_HOW_TO_PLACE}")
    dest = user_cache_dir() / "omniglot"
    try:
        for split in _SPLITS:
            if not (dest / split.archive.filename).is_file():
                download_archive(split.archive, dest, fetch)
    except DataError as err:
        raise DataError(f"{looked}; {err}; {_HOW_TO_PLACE}") from err
    parts, notes = find_parts([Location("user cache", dest)], names, urls)
    if parts is None:  # only if someone deletes the downloads under our feet
        raise DataError(f"{looked}; after the download: {'; '.join(notes)}; {_HOW_TO_PLACE}")
    return parts


def _number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.fullmatch(text)
    return int(match.group(1)) if match else None


def _layout(part: Part, split: _Split) -> list[tuple[str, str, list[str]]]:
    """``(alphabet, characterNN, members sorted by drawer)`` per character, in cache order, after
    checking that the part holds exactly the expected alphabets, characters and drawings."""
    tree: dict[str, dict[str, dict[int, str]]] = {}
    for member in part.members():
        pieces = member.split("/")
        if len(pieces) != 3 or _number(_CHARACTER_DIR, pieces[1]) is None:
            continue  # stray files (.DS_Store, a README) are not Omniglot's business
        drawer = _number(_DRAWING_FILE, pieces[2])
        if drawer is not None:
            tree.setdefault(pieces[0], {}).setdefault(pieces[1], {})[drawer] = member

    wanted = set(range(1, DRAWINGS + 1))
    issues: list[str] = []
    missing = [a for a in split.alphabets if a not in tree]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        issues.append(f"missing alphabets {', '.join(missing[:3])}{more}")
    issues += [f"unexpected alphabet {a}" for a in sorted(set(tree) - set(split.alphabets))]
    for alphabet in sorted(tree):
        numbers = sorted(_number(_CHARACTER_DIR, c) or 0 for c in tree[alphabet])
        if numbers != list(range(1, len(numbers) + 1)):
            issues.append(f"{alphabet} has character numbers {numbers[0]}..{numbers[-1]} with gaps")
        for character, drawers in sorted(tree[alphabet].items()):
            lacking, extra = sorted(wanted - set(drawers)), sorted(set(drawers) - wanted)
            if lacking or extra:
                odd = [f"missing {', '.join(f'{d:02d}' for d in lacking)}"] if lacking else []
                odd += [f"unexpected {', '.join(f'{d:02d}' for d in extra)}"] if extra else []
                issues.append(
                    f"{alphabet}/{character} has {len(drawers)} of {DRAWINGS} drawings"
                    f" ({', '.join(odd)})"
                )
    n_characters = sum(len(chars) for chars in tree.values())
    n_drawings = sum(len(d) for chars in tree.values() for d in chars.values())
    if issues or n_characters != split.characters:
        rest = f"; and {len(issues) - 3} more" if len(issues) > 3 else ""
        example = "; ".join(issues[:3]) + rest
        raise DataError(
            f"{part.where()} is incomplete: {len(tree)} of {len(split.alphabets)} alphabets, "
            f"{n_characters:,} of {split.characters:,} characters, {n_drawings:,} of "
            f"{split.drawings:,} drawings{f' ({example})' if example else ''}; {part.how_to_fix()}"
        )
    return [
        (alphabet, character, [tree[alphabet][character][d] for d in sorted(wanted)])
        for alphabet in sorted(tree)
        for character in sorted(tree[alphabet], key=lambda c: _number(_CHARACTER_DIR, c) or 0)
    ]


# --- preprocessing


def _preprocess(data: bytes) -> np.ndarray:
    """One 105x105 PNG (black ink on white) -> 28x28 uint8 with ink = 255."""
    from PIL import Image  # only a cache miss needs Pillow

    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        if image.size != _RAW_SIZE:
            raise ValueError(f"it is {image.size[0]}x{image.size[1]}, not 105x105")
        # Mode "1" must become "L" first: Pillow resamples a bilevel image without filtering.
        small = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _build(
    parts: dict[str, Part], progress: Callable[[int, int], None] | None
) -> tuple[np.ndarray, list[str], list[bool]]:
    layouts = [(split, parts[split.name], _layout(parts[split.name], split)) for split in _SPLITS]
    images = np.empty(_SHAPE, dtype=np.uint8)
    flat = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    characters: list[str] = []
    background: list[bool] = []
    total, done = flat.shape[0], 0
    # A plain loop: ~0.25 ms per image, 8-15 s for all, once. A 2-worker fork pool measured no
    # faster on the shared 2-core box (and forking a process running torch threads can hang);
    # spawned workers would each pay ~2.5 s importing torch through the mamlflow package.
    for split, part, layout in layouts:
        with part.reader() as read:
            for alphabet, character, members in layout:
                characters.append(f"{alphabet}/{character}")
                background.append(split is _SPLITS[0])
                for member in members:
                    try:
                        data = read(member)
                    except Exception as err:  # zipfile raises BadZipFile, zlib.error, EOFError...
                        raise DataError(
                            f"cannot read {part.where(member)} ({one_line(err)}); "
                            f"{part.how_to_fix()}"
                        ) from err
                    try:
                        flat[done] = _preprocess(data)
                    except Exception as err:  # Pillow raises many types on a broken PNG
                        raise DataError(
                            f"cannot decode the PNG {part.where(member)} ({one_line(err)}); "
                            f"{part.how_to_fix()}"
                        ) from err
                    done += 1
                    if progress is not None and (done % _PROGRESS_EVERY == 0 or done == total):
                        progress(done, total)
    return images, characters, background


# --- the cache


def _arrays(images: np.ndarray, sidecar: dict[str, Any]) -> OmniglotArrays | None:
    """The dataclass from a mapped cache and its sidecar; None when the names are malformed."""
    characters, background = sidecar.get("characters"), sidecar.get("background")
    if not (
        isinstance(characters, list)
        and isinstance(background, list)
        and len(characters) == len(background) == _NUM_CHARACTERS
        and all(isinstance(c, str) and c.count("/") == 1 for c in characters)
        and all(isinstance(b, bool) for b in background)
        and sum(background) == _SPLITS[0].characters
    ):
        return None
    flags = np.array(background, dtype=bool)
    flags.setflags(write=False)
    return OmniglotArrays(
        images=images,
        alphabets=tuple(c.split("/")[0] for c in characters),
        characters=tuple(characters),
        background=flags,
    )


def load_omniglot(
    data_dir: Path | str | None = None,
    *,
    cache_dir: Path | str | None = None,
    download: bool = True,
    progress: Callable[[int, int], None] | None = None,
    fetch: Fetch | None = None,
) -> OmniglotArrays:
    """All of Omniglot as 28x28 uint8 arrays, built once and then memory-mapped from a cache.

    The raw data is looked for in ``data_dir``, then ``$MAMLFLOW_DATA/omniglot``, then
    ``$XDG_CACHE_HOME/mamlflow/omniglot`` (default ``~/.cache/mamlflow/omniglot``), each as
    ``images_background.zip`` + ``images_evaluation.zip`` or their extracted folders. When none
    has it and ``download`` is true, the official archives are downloaded (with ``fetch``,
    default urllib) and verified into the last one.

    The cache goes to ``cache_dir`` (default ``$XDG_CACHE_HOME/mamlflow/cache``) as
    ``omniglot-28x28-<key>.npy`` and ``.json``, ``<key>`` hashing the source; a corrupt or stale
    cache warns and is rebuilt. ``progress(done, total)`` is called every 500 images of a build.

    Raises:
        DataError: one line saying what is missing or broken, and how to fix it.
    """
    parts = _locate(data_dir, download, fetch)
    key = source_key(_CACHE_VERSION, *(parts[s.name].fingerprint() for s in _SPLITS))
    directory = user_cache_dir() / "cache" if cache_dir is None else Path(cache_dir).expanduser()
    path = cache_file(directory, "omniglot-28x28", key)
    expect = {"dataset": "omniglot", "key": key, "shape": list(_SHAPE), "dtype": "|u1"}

    cached = load_array_cache(path, expect)
    arrays = None if cached is None else _arrays(*cached)
    if cached is not None and arrays is None:
        warnings.warn(
            f"cache {path.with_suffix('.json')} has malformed names; rebuilding it",
            RuntimeWarning,
            stacklevel=2,
        )
    if arrays is not None:
        return arrays

    images, characters, background = _build(parts, progress)
    meta = {
        **expect,
        "source": {name: part.where() for name, part in parts.items()},
        "characters": characters,
        "background": background,
    }
    try:
        save_array_cache(path, images, meta)
    except OSError as err:
        raise DataError(
            f"cannot write the Omniglot cache {path} ({one_line(err)}); "
            "pass cache_dir= a writable directory"
        ) from err
    cached = load_array_cache(path, expect)
    if cached is None or (arrays := _arrays(*cached)) is None:
        raise DataError(f"the Omniglot cache {path} just written does not read back; check disk")
    return arrays
