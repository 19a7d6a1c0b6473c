"""Reading the pickles few-shot sets ship in, without running anything a pickle asks for.

A pickle is a program: ``pickle.load`` calls whatever callable it names, so a file swapped on a
shared drive or a download mirror could run ``os.system``. The sets only ever hold dicts, lists,
strings, numbers and numpy arrays, so :func:`load_pickle` resolves only the handful of globals
those need and refuses every other one with a one-line DataError, before anything is called.

Python 2 pickles (CIFAR-100, tieredImagenet) hold ``str`` that is really bytes: they are read with
``encoding="latin1"``, which maps every byte to one character and is what numpy needs to rebuild a
Python 2 array; keys and names come out as ``str`` and an encoded image as a ``str`` of its bytes.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mamlflow.core import DataError
from mamlflow.plugins._imagedata import one_line

__all__ = ["UnsafePickleError", "load_pickle", "load_pickle_bytes"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set; nothing was called."""


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3 writes ``bytes`` into protocol-2 pickles as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _numpy_globals() -> dict[str, Callable[..., Any]]:
    """The callables numpy's own reductions name, found from numpy itself so that the numpy 1
    (``numpy.core``) and numpy 2 (``numpy._core``) spellings both map to what is installed."""
    array = np.zeros(1, dtype=np.uint8)
    return {
        "_reconstruct": array.__reduce__()[0],  # every protocol up to 4
        "scalar": np.float64(0).__reduce__()[0],  # numpy scalars in lists and dicts
        "_frombuffer": array.__reduce_ex__(5)[0],  # protocol 5, out-of-band buffers
    }


def _allowed() -> dict[tuple[str, str], Callable[..., Any]]:
    found: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for name, func in _numpy_globals().items():
        where = "numeric" if name == "_frombuffer" else "multiarray"
        for package in ("numpy.core", "numpy._core"):
            found[(f"{package}.{where}", name)] = func
    containers = (dict, list, tuple, set, frozenset, bytearray)
    for module in ("builtins", "__builtin__"):  # __builtin__: Python 2's name
        found.update({(module, kind.__name__): kind for kind in containers})
    return found


_ALLOWED = _allowed()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent id")


def _load(stream: BinaryIO, what: str, fix: str) -> Any:
    try:
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as err:
        raise DataError(
            f"{what} asks to run {err}, which a data file never needs (it may be malicious); "
            f"nothing was run; delete it and {fix}"
        ) from None
    except MemoryError as err:
        raise DataError(f"{what} does not fit in memory ({one_line(err)}); free memory") from err
    except Exception as err:  # truncation and corruption raise EOFError, ValueError, KeyError...
        raise DataError(
            f"{what} cannot be unpickled, truncated or corrupt ({type(err).__name__}: "
            f"{one_line(err)}); {fix}"
        ) from err


def load_pickle(path: Path, fix: str) -> Any:
    """The object in the pickle at ``path``, built from containers, numbers, strings and numpy
    arrays only; anything else, or a broken file, is a one-line DataError ending in ``fix``."""
    with path.open("rb") as f:
        return _load(f, str(path), fix)


def load_pickle_bytes(data: bytes, what: str, fix: str) -> Any:
    """:func:`load_pickle` for a pickle already in memory (an archive member)."""
    return _load(io.BytesIO(data), what, fix)
