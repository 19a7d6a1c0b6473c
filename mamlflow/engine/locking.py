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
from contextlib import contextmanager
from pathlib import Path

from ..core import CheckpointError, rundir

__all__ = ["EVAL_LOCK", "RUN_LOCK", "remove_stale_temporaries", "run_lock"]

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
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(
                f"{run_dir} is in use by another mamlflow process (PID {holder}); wait for it "
                "to finish, stop it, or choose another run directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} ({purpose})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_unlocked(run_dir: Path, name: str = RUN_LOCK) -> None:
    """Raise the ``run_lock`` error now if another process holds the lock; hold nothing.

    So a command can refuse before it shows anything; the lock itself is taken later.
    """
    if (run_dir / name).is_file():
        with run_lock(run_dir, "checking", name):
            pass


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of a run's own writes that a killed writer left behind.

    Only safe while holding the run lock: no one else writes these files then. Returns them.
    """
    stale = [
        path for name in _RUN_FILES for path in run_dir.glob(f".{name}.*.tmp") if path.is_file()
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
