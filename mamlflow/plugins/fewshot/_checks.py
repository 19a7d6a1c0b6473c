"""What each few-shot set must hold, and the one-line checks every reader runs on its files.

The class and image counts of the published sets are fixed, and checking them is the only thing
that catches a half-extracted folder, a truncated pickle or a CSV from another split before
hours of training. They live in one table, :data:`EXPECTED`, that a reader looks up when it is
built (not at import), so the tests can hand a reader, or monkeypatch for a family, the counts of
a tiny fixture with the real names, headers and nesting. There is deliberately no config switch
that turns the check off: a user with a broken copy would train on it silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import one_line
from mamlflow.plugins.images import SPLIT_NAMES, ClassIndex

__all__ = [
    "EXPECTED",
    "Expected",
    "check_file",
    "check_index",
    "file_problem",
    "stat_fingerprint",
]


@dataclass(frozen=True)
class Expected:
    """The counts a correct copy of a data set has.

    ``classes`` per split; ``per_class`` the fewest and most images any class may hold; ``images``
    the images per split and ``total`` over all splits, where the set fixes them.
    """

    classes: Mapping[str, int]
    per_class: tuple[int, int]
    images: Mapping[str, int] | None = None
    total: int | None = None


def _even(classes: tuple[int, int, int], per_class: int) -> Expected:
    splits = dict(zip(SPLIT_NAMES, classes, strict=True))
    return Expected(
        classes=splits,
        per_class=(per_class, per_class),
        images={split: n * per_class for split, n in splits.items()},
    )


EXPECTED: dict[str, Expected] = {
    # Vinyals et al. 2016 / Ravi & Larochelle 2017: 100 ImageNet classes x 600 images.
    "miniimagenet": _even((64, 16, 20), 600),
    # Ren et al. 2018: 608 ImageNet classes, each with all its ILSVRC-12 training images
    # (732 to 1,300); 779,165 images in all.
    "tieredimagenet": Expected(
        classes={"train": 351, "val": 97, "test": 160},
        per_class=(732, 1300),
        images={"train": 448_695, "val": 124_261, "test": 206_209},
    ),
    # Every CIFAR-100 class has 500 training + 100 test images, and the few-shot sets pool both.
    "cifar-fs": _even((64, 16, 20), 600),
    "fc100": _even((60, 20, 20), 600),
    # CUB-200-2011: 11,788 images of 200 species, at most 60 per species (41 at the fewest, as
    # far as we know). The lower bound is loose on purpose: the exact total already catches a
    # missing image, and a bound one too tight would reject every good copy.
    "cub": Expected(
        classes={"train": 100, "val": 50, "test": 50}, per_class=(30, 60), total=11_788
    ),
}


def _fewer_or_more(have: int, want: int) -> str:
    return f"{have:,}, not {want:,}"


def _class_problem(index: ClassIndex, expected: Expected) -> str | None:
    low, high = expected.per_class
    for split in SPLIT_NAMES:
        for name, count in index.splits.get(split, ()):
            if not low <= count <= high:
                want = f"{low:,}" if low == high else f"between {low:,} and {high:,}"
                return f"class {name} of the {split} split has {count:,} images, not {want}"
    return None


def _count_problem(index: ClassIndex, expected: Expected) -> str | None:
    """The first count that differs from ``expected``, in words; None when all match."""
    for split, want in expected.classes.items():
        have = len(index.splits.get(split, ()))
        if have != want:
            return f"the {split} split has {_fewer_or_more(have, want)} classes"
    problem = _class_problem(index, expected)
    if problem is not None:
        return problem
    for split, want in (expected.images or {}).items():
        have = sum(index.counts(split))
        if have != want:
            return f"the {split} split has {_fewer_or_more(have, want)} images"
    if expected.total is not None:
        have = sum(sum(index.counts(split)) for split in SPLIT_NAMES)
        if have != expected.total:
            return f"it holds {_fewer_or_more(have, expected.total)} images"
    return None


def check_index(index: ClassIndex, expected: Expected, what: str, fix: str) -> ClassIndex:
    """``index`` when its counts are ``expected``'s, else a one-line DataError naming the first
    mismatch, in ``what`` (the source's description), and ``fix``."""
    problem = _count_problem(index, expected)
    if problem is not None:
        raise DataError(f"{what} is incomplete or not this data set: {problem}; {fix}")
    return index


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a data file (unreadable, empty, an HTML page); None when it may be.

    A quota page, a login form or an HTTP error saved under the file's name is the commonest
    broken download (Google Drive serves one for large files); no pickle, archive, HDF5 or JPEG
    starts with ``<``, so the first non-blank byte tells.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(512).lstrip()
    except OSError as err:
        return f"cannot be read ({one_line(err)})"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(b"<"):
        return "is an HTML page (an error or quota page saved in its place), not the data"
    return None


def check_file(path: Path, fix: str) -> None:
    """A one-line DataError naming ``path`` and ``fix`` when :func:`file_problem` finds one."""
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path} {problem}; {fix}")


def stat_fingerprint(*paths: Path) -> str:
    """Names, sizes and modification times: hashing gigabytes of pickles on every start would
    cost seconds, and these change whenever a file is replaced or edited."""
    parts = []
    for path in paths:
        st = os.stat(path)
        parts.append(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}")
    return "\n".join(parts)
