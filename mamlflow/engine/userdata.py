"""A user's own examples as tensors: a folder of class folders of images, or a CSV table.

What ``metaflow adapt`` and ``predict`` read. Every problem is one ``DataError`` line that names
the file and the fix; nothing here writes anything.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core import DataError, ImageInputs, image_files, looks_like_html

__all__ = [
    "ClassFolder",
    "Table",
    "read_class_folder",
    "read_images",
    "read_table",
]


def read_images(paths: Sequence[Path], spec: ImageInputs) -> Tensor:
    """The images at ``paths`` as float32 ``(n, channels, size, size)`` inputs, as ``spec`` says."""
    from PIL import Image, UnidentifiedImageError  # only reading images needs Pillow

    resample = getattr(Image.Resampling, spec.resample.upper())
    out = np.empty((len(paths), spec.size, spec.size, spec.channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
        if looks_like_html(data):
            raise DataError(f"{path}: is an HTML page, not an image; replace it with the image")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image = image.convert("L" if spec.channels == 1 else "RGB")
                if image.size != (spec.size, spec.size):
                    image = image.resize((spec.size, spec.size), resample)
                pixels = np.asarray(image, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            reason = (
                " ".join(str(error).split())
                if not isinstance(error, UnidentifiedImageError)
                else "not an image Pillow can read"
            )
            raise DataError(f"{path}: cannot be decoded ({reason}); replace or remove it") from None
        out[i] = pixels.reshape(spec.size, spec.size, spec.channels)
    if spec.invert:
        out = 255 - out
    x = torch.from_numpy(out).permute(0, 3, 1, 2).to(torch.float32)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(-1, 1, 1)
    # The same float32 arithmetic as the families' prepare: pixel * 1/(255 std) - mean/std.
    scale, shift = (1.0 / (255.0 * std)).float(), (mean / std).float()
    return x.mul_(scale).sub_(shift)


@dataclass(frozen=True)
class ClassFolder:
    """A support set from a folder: ``paths[i]`` is an image of class ``classes[labels[i]]``."""

    paths: tuple[Path, ...]
    labels: Tensor
    classes: tuple[str, ...]


def read_class_folder(folder: Path, *, ways: int | None = None) -> ClassFolder:
    """``folder/<class>/<image>``: classes in name order, labelled 0, 1, …

    ``ways``: the number of classes the model takes; another count is one line saying so.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: no such folder; pass a folder with one sub-folder of images per class"
        )
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{folder}: {len(classes)} class folder(s); put each class's images in a sub-folder "
            "named after it (at least 2 classes)"
        )
    if ways is not None and len(classes) != ways:
        raise DataError(
            f"{folder}: {len(classes)} class folders, but this model is {ways}-way; "
            f"give exactly {ways} classes"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = image_files(cls)
        if not files:
            raise DataError(
                f"{cls}: no images (.png, .jpg, …) in class '{cls.name}'; add some or remove "
                "the folder"
            )
        paths += files
        labels += [label] * len(files)
    return ClassFolder(tuple(paths), torch.tensor(labels), tuple(c.name for c in classes))


@dataclass(frozen=True)
class Table:
    """Numeric columns of a CSV, by name: ``columns[name]`` is float64 ``(rows,)``."""

    columns: dict[str, Tensor]
    rows: int

    def stack(self, names: Sequence[str]) -> Tensor:
        return torch.stack([self.columns[n] for n in names], dim=1)


def read_table(path: Path, needed: Sequence[str]) -> Table:
    """The columns ``needed`` of the CSV at ``path`` (with a header row), as numbers."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({error})") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty; write a header row and one row per example")
    header = [h.strip() for h in rows[0]]
    missing = [n for n in needed if n not in header]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))} (columns: "
            f"{', '.join(header)}); rename the column or pass the column names"
        )
    if len(rows) < 2:
        raise DataError(f"{path}: a header but no rows; add one row per example")
    columns: dict[str, Tensor] = {}
    for name in needed:
        j = header.index(name)
        values = []
        for line, row in enumerate(rows[1:], start=2):
            cell = row[j].strip() if j < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataError(
                    f"{path}: row {line}, column '{name}' is {cell!r}, not a finite number; "
                    "fix the cell or remove the row"
                )
            values.append(value)
        columns[name] = torch.tensor(values, dtype=torch.float64)
    return Table(columns, len(rows) - 1)
