"""How a user's own files become a model's inputs, for adapting and predicting outside training.

A task family that samples images describes, with ``ImageInputs``, the preprocessing its
samples went through (size, channels, ink inversion, normalisation). ``metaflow adapt`` stores
the description beside the adapted weights, and ``metaflow predict`` applies it to new files,
so a photo a user brings is turned into exactly the kind of input the model was trained on,
without the training data set.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["IMAGE_SUFFIXES", "ImageInputs", "image_files", "looks_like_html"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""The files read as images (case-insensitive), by ``imagefolder`` and by ``metaflow adapt``."""


@dataclass(frozen=True)
class ImageInputs:
    """An image file → a ``(channels, size, size)`` float input, as the family's samples are.

    The file is converted to grey (``channels=1``) or RGB (3), resized to ``size`` × ``size``
    with ``resample`` (no crop), its uint8 pixels inverted when ``invert`` (Omniglot's ink is
    255), then scaled: ``(pixel / 255 - mean[c]) / std[c]``.
    """

    size: int
    channels: Literal[1, 3]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: bool = False
    resample: Literal["lanczos", "bilinear", "bicubic", "nearest"] = "lanczos"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if not all(math.isfinite(m) for m in self.mean) or not all(
            math.isfinite(s) and s > 0 for s in self.std
        ):
            raise ValueError("mean must be finite and std finite and positive")
        if self.resample not in ("lanczos", "bilinear", "bicubic", "nearest"):
            raise ValueError(f"resample {self.resample!r} is not a Pillow filter mamlflow uses")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def as_json(self) -> dict[str, Any]:
        return {"kind": "images", **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> ImageInputs:
        """The description ``as_json`` wrote; ``ValueError`` names what is wrong."""
        if not isinstance(data, dict) or data.get("kind") != "images":
            raise ValueError("not an image-inputs description")
        fields = {k: v for k, v in data.items() if k != "kind"}
        try:
            return cls(**fields)
        except TypeError as error:
            raise ValueError(str(error)) from None


def image_files(folder: Path) -> tuple[Path, ...]:
    """Image files under ``folder``, nested folders included, in path order; hidden ones skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            if not file.startswith(".") and Path(file).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root, file))
    return tuple(found)


_HTML_MARKERS = (b"<!doctype", b"<html", b"<head", b"<?xml")


def looks_like_html(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes will do) is a web page: a login, quota or error
    page saved under a data file's name, the commonest failed download."""
    return data[:512].lstrip().lower().startswith(_HTML_MARKERS)
