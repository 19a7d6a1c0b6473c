"""Where the engine runs a plugin's code: an exception escaping it becomes one line that names it.

A task family's ``sample``, a model's ``build``, a callback's ``on_log``: code the engine calls
but did not write. What escapes it is reported as a ``PluginError`` naming the component and the
method (``MAMLFLOW_DEBUG=1`` shows the traceback), so a plugin's bug reads as one line instead of
a traceback through mamlflow; running out of memory becomes a ``ResourceError`` that says what to
make smaller. mamlflow's own errors pass through unchanged.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core import CheckpointError, MamlflowError, PluginError, ResourceError

__all__ = ["plugin_code", "writing"]

_MAX_DETAIL = 200


@contextmanager
def plugin_code(
    who: str, method: str, smaller: str = "the model or train.meta_batch_size"
) -> Iterator[None]:
    """Run ``who``'s ``method`` (e.g. ``"task family 'sinusoid'"``, ``"sample()"``).

    ``smaller`` says what to shrink when it runs out of memory.
    """
    try:
        yield
    except MamlflowError:
        raise
    except Exception as exc:
        if _out_of_memory(exc):
            raise ResourceError(
                f"out of memory in {method} of {who} ({_detail(exc)}); make {smaller} smaller"
            ) from exc
        raise PluginError(
            f"{who} raised {type(exc).__name__} in {method}: {_detail(exc)}; fix the plugin "
            "(metaflow plugins shows which package registers it) or report it to its author; "
            "MAMLFLOW_DEBUG=1 shows the traceback"
        ) from exc


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


@contextmanager
def writing(what: str, run_dir: object) -> Iterator[None]:
    """Write ``what`` into the run directory; an ``OSError`` becomes one line naming the fix."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            raise ResourceError(
                f"no space left on the device writing {what} in {run_dir}; the previous "
                f"checkpoint is intact: free some space, then --resume {run_dir}"
            ) from exc
        raise CheckpointError(
            f"cannot write {what} in {run_dir} ({reason}); choose a run directory you can write "
            "(--out)"
        ) from exc
