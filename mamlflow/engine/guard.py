"""Where the engine runs a plugin's code: an exception escaping it becomes one line that names it.

A task family's ``sample``, a model's ``build``, a callback's ``on_log``: code the engine calls
but did not write. What escapes it is reported as a ``PluginError`` naming the component and the
method (``MAMLFLOW_DEBUG=1`` shows the traceback), so a plugin's bug reads as one line instead of
a traceback through mamlflow; running out of memory becomes a ``ResourceError`` that says what to
make smaller, and so does a full disk (a callback writing its file), which is no plugin's bug.
mamlflow's own errors pass through unchanged.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core import CheckpointError, MamlflowError, PluginError, ResourceError, RunDir, rundir

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
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            # Not the plugin's bug: nothing it could write would fit.
            raise ResourceError(
                f"{_disk_full(exc)}: {who} could not write in {method} ({_detail(exc)}); free "
                "some space, then continue the run with --resume (or start it again if it wrote "
                "no checkpoint)"
            ) from exc
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
        if exc.errno in _DISK_FULL:
            raise ResourceError(
                f"{_disk_full(exc)} writing {what} in {run_dir}; {_kept(what, run_dir)}"
            ) from exc
        raise CheckpointError(
            f"cannot write {what} in {run_dir} ({reason}); choose a run directory you can write "
            "(--out)"
        ) from exc


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: OSError) -> str:
    return "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"


def _kept(what: str, run_dir: object) -> str:
    """What a failed write leaves the user, and what to do once there is space again.

    Every file is written atomically, so what was there before the write is intact.
    """
    if what == rundir.EVAL:
        return "the run and eval.json are intact: free some space, then evaluate again"
    if RunDir(Path(str(run_dir))).checkpoint.is_file():
        return (
            f"the last complete {rundir.CHECKPOINT} is intact: free some space, then "
            f"--resume {run_dir}"
        )
    return (
        "no checkpoint was written yet: free some space, then start the run again (the "
        "directory can be reused)"
    )
