"""Decoding and resizing, the part of a cache build that runs in worker processes.

Kept apart from the cache and the family so a worker needs only Pillow and numpy; everything
here is a pure function of its arguments and returns problems as values, never raises, so the
parent can name the file (which the worker does not know) in a one-line error.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from mamlflow.core import looks_like_html
from mamlflow.plugins._imagedata import one_line

from ._source import ImageData

__all__ = ["RESAMPLE", "decode_chunk"]

RESAMPLE = "lanczos"
"""Pillow's filter for the square resize (Ravi & Larochelle's MiniImagenet script uses it too)."""


def _image(data: ImageData) -> object:
    """A Pillow image of ``data``, or the reason it is not one."""
    from PIL import Image  # only a cache build needs Pillow

    if isinstance(data, np.ndarray):
        array = data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            return f"is a {array.dtype} array of shape {data.shape}, not uint8 (H, W[, C])"
        return Image.fromarray(array)
    if not data:
        return "is empty (0 bytes)"
    if looks_like_html(data):
        # A login or error page saved under an image's name (a failed download).
        return "is an HTML page, not an image"
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes now, so a truncated file fails here and not in resize
    return image


def decode_one(data: ImageData, size: int, channels: int) -> np.ndarray | str:
    """``data`` as uint8 ``(size, size, channels)``, or why it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = _image(data)
        if isinstance(image, str):
            return image
        assert isinstance(image, Image.Image)
        # Palette, alpha, CMYK, 16-bit: Pillow's own conversion to grey or RGB.
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        return "cannot be decoded (not an image format Pillow reads, or a corrupt header)"
    except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, bomb errors …
        return f"cannot be decoded ({type(error).__name__}: {one_line(error)})"


def decode_chunk(
    images: Sequence[ImageData], size: int, channels: int
) -> tuple[np.ndarray, int, str]:
    """Decode ``images`` into ``(len(images), size, size, channels)`` uint8.

    Returns ``(array, -1, "")``, or at the first failure ``(partial array, position, reason)``.
    """
    out = np.empty((len(images), size, size, channels), np.uint8)
    for position, data in enumerate(images):
        decoded = decode_one(data, size, channels)
        if isinstance(decoded, str):
            return out, position, decoded
        out[position] = decoded
    return out, -1, ""
