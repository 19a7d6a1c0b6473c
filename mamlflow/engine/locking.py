"""One process at a time in a run directory: an advisory lock that dies with its holder.

``run_lock`` takes an exclusive ``flock`` on a file in the run directory and writes the holder's
PID into it. A second ``metaflow run --out X`` (or ``--resume X``) while X trains gets one line
naming that PID instead of silently overwriting the run; ``eval`` takes a lock of its own around
writing ``eval.json``, so two evaluations merge their results one after the other. The kernel
releases a lock when its process ends, however it ends (``kill -9`` included), so a lock is never
stale. While holding the run lock, the holder removes temporary files a killed writer left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..core import CheckpointError, rundir
from .guard import writing

__all__ = ["EVAL_FILES", "EVAL_LOCK", "RUN_LOCK", "remove_stale_temporaries", "run_lock"]

_HELD: set[int] = set()
"""Descriptors of the locks this process holds. A forked child (environment workers, a
DataLoader's) would otherwise keep each lock alive after this process ends: it closes them."""


def _forget_inherited_locks() -> None:
    for fd in _HELD:
        with suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's flock stays
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)

RUN_LOCK = ".mamlflow.lock"
"""Held by the process training in the directory (``run``, ``--resume``)."""
EVAL_LOCK = ".mamlflow-eval.lock"
"""Held by ``eval`` while it writes ``eval.json`` and its plots."""

# What a run writes atomically: a temporary ``.<name>.<random>.tmp`` beside each (atomic_write).
_RUN_FILES = (
    rundir.CHECKPOINT,
    rundir.BEST_CHECKPOINT,
    rundir.CONFIG,
    rundir.TASK_MANIFEST,
    rundir.METRICS,
    rundir.METRICS_CSV,
)


@contextmanager
def run_lock(run_dir: Path, purpose: str, name: str = RUN_LOCK) -> Iterator[None]:
    """Hold ``run_dir``'s lock ``name`` for ``purpose`` (e.g. ``"training"``), creating the dir.

    Raises ``CheckpointError`` naming the holder's PID if another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take
        yield
        return
    with writing(name, run_dir):  # a full disk or a read-only place: one line
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"{run_dir} is in use by another mamlflow process (PID {_holder(fd)}); wait for "
                "it to finish, stop it, or choose another run directory"
            ) from None
        _note_holder(fd, purpose)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def _note_holder(fd: int, purpose: str) -> None:
    """Write this process's PID into the lock file, for the error of the next one to try."""
    note = f"{os.getpid()} ({purpose})\n".encode()
    try:
        # Over the old note, then cut to length: overwriting needs no new block on a full disk,
        # and a reader never sees an empty file.
        os.pwrite(fd, note, 0)
        os.ftruncate(fd, len(note))
    except OSError:
        pass  # the flock is the lock; without the note, the next process says "PID unknown"


def _holder(fd: int) -> str:
    """The note of the process holding the lock (its first line: a longer old note's tail may
    follow it for a moment)."""
    lines = os.pread(fd, 200, 0).decode(errors="replace").strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def check_unlocked(run_dir: Path, name: str = RUN_LOCK) -> None:
    """Raise the ``run_lock`` error now if another process holds the lock; hold nothing.

    So a command can refuse before it shows anything; the lock itself is taken later.
    """
    if (run_dir / name).is_file():
        with run_lock(run_dir, "checking", name):
            pass


EVAL_FILES = (rundir.EVAL,)
"""What ``eval`` writes atomically under ``EVAL_LOCK``."""


def remove_stale_temporaries(run_dir: Path, names: tuple[str, ...] = _RUN_FILES) -> list[Path]:
    """Delete the temporary files of ``names``' writes that a killed writer left behind.

    Only safe while holding the lock that guards those files (the run lock for a run's own
    files, ``EVAL_LOCK`` for ``EVAL_FILES``): no one else writes them then. Returns them.
    """
    stale = [path for name in names for path in run_dir.glob(f".{name}.*.tmp") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
