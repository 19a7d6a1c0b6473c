"""A run directory: the names of the files in it, the metrics record, and crash-safe writes.

Every file a run writes is named here once, so the trainer, the callbacks, ``metaflow eval`` and
the plots agree on where things are; ``RunDir`` gives their paths. ``MetricsRecord`` is what the
trainer logs every ``train.log_every`` iterations (and callbacks receive); its JSON form is one
line of ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .optim import OuterStepReport

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "CONFIG",
    "EVAL",
    "EVAL_CURVE",
    "LEARNING_CURVE",
    "METRICS",
    "METRICS_CSV",
    "TASK_MANIFEST",
    "TENSORBOARD",
    "MetricsRecord",
    "RunDir",
    "atomic_write",
    "read_records",
    "strict_json",
]

CONFIG = "config.json"
"""The resolved config and where each value came from (written before the first step)."""
CHECKPOINT = "checkpoint.pt"
"""The latest complete training state: ``--resume`` continues from it, ``eval`` reads it."""
BEST_CHECKPOINT = "checkpoint_best.pt"
"""The checkpoint with the best validation metric so far (``train.val_every``)."""
METRICS = "metrics.jsonl"
"""One ``MetricsRecord`` per line (the ``metrics`` callback)."""
METRICS_CSV = "metrics.csv"
"""The same records as CSV (the ``csv`` callback)."""
TENSORBOARD = "tensorboard"
"""TensorBoard event files (the ``tensorboard`` callback): a folder."""
TASK_MANIFEST = "task.json"
"""What data the run used, when its task family says (``TaskFamily.manifest``)."""
EVAL = "eval.json"
"""Every ``metaflow eval`` result of the run, per checkpoint and shots."""
EVAL_CURVE = "eval_curve.png"
LEARNING_CURVE = "learning_curve.png"


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory's files: ``RunDir(path).checkpoint`` and so on."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def task_manifest(self) -> Path:
        return self.path / TASK_MANIFEST

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def eval_curve(self) -> Path:
        return self.path / EVAL_CURVE

    @property
    def learning_curve(self) -> Path:
        return self.path / LEARNING_CURVE

    def examples(self, shots: int) -> Path:
        """The plot of a few tasks before and after adaptation with ``shots`` examples."""
        return self.path / f"examples_k{shots}.png"

    def holds_run(self) -> bool:
        """Whether a run has written a checkpoint here: what ``--resume`` continues, and what a
        new run must not overwrite. An attempt that ended before its first checkpoint does not
        count: its directory may be reused."""
        return self.checkpoint.exists()

    def is_free(self) -> bool:
        """Whether a new run may start here: no checkpoint, and any config is a dead attempt's.

        A directory is free when it does not exist, or holds no checkpoint and no config.json
        but one mamlflow wrote (an attempt that died before its first checkpoint, whose files
        ``remove_leftovers`` deletes). A config.json of anything else is never overwritten.
        """
        if self.holds_run():
            return False
        if not self.config.exists():
            return True
        try:
            saved = json.loads(self.config.read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and {"config", "provenance"} <= saved.keys()

    def remove_leftovers(self) -> list[Path]:
        """Delete what a run writes before its first checkpoint (config, metrics, manifest).

        For reusing the directory of an attempt that wrote no checkpoint; returns what it removed.
        """
        removed = []
        for path in (self.config, self.metrics, self / METRICS_CSV, self.task_manifest):
            if path.is_file():
                path.unlink()
                removed.append(path)
        events = self / TENSORBOARD
        if events.is_dir():
            shutil.rmtree(events)
            removed.append(events)
        return removed


@dataclass(frozen=True)
class MetricsRecord(Mapping[str, Any]):
    """What the trainer logs every ``train.log_every`` iterations, averaged since the last one.

    Typed attributes, and read-only mapping access to the JSON form too
    (``record["meta_loss"]``), so callbacks written against plain dicts keep working.
    """

    iteration: int
    meta_loss: float
    """The mean meta-loss of the steps since the last record."""
    tasks_per_s: float
    elapsed: float
    """Seconds of training so far, across resumes."""
    return_before: float | None = None
    """Rollout families: the mean return of the support trajectories (θ) since the last record."""
    return_after: float | None = None
    """…and of the query trajectories (each task's adapted θ′)."""
    outer: OuterStepReport | None = None
    """What the latest outer step reported (TRPO: ``kl``, ``loss``, ``line_search``)."""
    metric: str | None = None
    """The task family's metric, when this record holds a validation."""
    val: float | None = None
    """The validation metric after ``eval.steps`` steps (``val_<metric>`` in JSON)."""
    val_ci95: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON object of ``metrics.jsonl``: absent values are left out."""
        out: dict[str, Any] = {
            "iteration": self.iteration,
            "meta_loss": self.meta_loss,
            "tasks_per_s": self.tasks_per_s,
        }
        if self.return_before is not None and self.return_after is not None:
            out["return_before"], out["return_after"] = self.return_before, self.return_after
        if self.outer is not None:
            out.update({f"outer_{k}": v for k, v in self.outer.as_dict().items()})
        if self.metric is not None and self.val is not None:
            out[f"val_{self.metric}"] = self.val
            out[f"val_{self.metric}_ci95"] = self.val_ci95
        out["elapsed"] = self.elapsed
        return out

    def __getitem__(self, key: str) -> Any:
        return self.as_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_json())

    def __len__(self) -> int:
        return len(self.as_json())


def strict_json(value: Any, **dumps: Any) -> str:
    """``json.dumps`` that never writes ``NaN`` or ``Infinity``: non-finite floats become null.

    Strict JSON parsers reject those tokens, and every JSON file the project writes is read by
    them (the counts of non-finite values are reported beside them where they matter).
    """
    return json.dumps(_finite(value), allow_nan=False, **dumps)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a crash or garbled is skipped."""
    records = []
    text = path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
    return records


def atomic_write(path: Path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    The data goes to a temp file beside ``path``, is fsynced, then renamed over ``path``: a crash
    mid-write leaves the previous file intact, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); keep the mode a replaced file had, else the
        # usual 0644, so results stay readable like any other file the user writes.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
