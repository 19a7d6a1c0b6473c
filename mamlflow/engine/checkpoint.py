"""Checkpoints: written atomically, validated on load, with errors that say what to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from ..core import CheckpointError, atomic_write, rundir

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped."""

    iteration: int
    params: dict[str, Tensor]
    learnables: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor]
    strategy: str
    elapsed: float
    finished: bool
    best: float | None = None
    """The best validation metric so far (what ``checkpoint_best.pt`` holds)."""


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, name: str = rundir.CHECKPOINT) -> Path:
    path = run_dir / name
    payload = {
        "format": _FORMAT,
        "iteration": ckpt.iteration,
        "params": {k: v.detach().cpu() for k, v in ckpt.params.items()},
        "learnables": {k: v.detach().cpu() for k, v in ckpt.learnables.items()},
        "optimizer": ckpt.optimizer,
        "rng": ckpt.rng,
        "strategy": ckpt.strategy,
        "elapsed": ckpt.elapsed,
        "finished": ckpt.finished,
        "best": ckpt.best,
    }
    atomic_write(path, lambda f: _torch_save(payload, f))
    return path


class _Sink:
    """What ``torch.save`` writes to: ``file``, keeping the ``OSError`` a write raised."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(payload: dict[str, Any], file: BinaryIO) -> None:
    """``torch.save(payload, file)``, raising the ``OSError`` of a failed write as it is.

    torch's zip writer reports a write that raised (a full disk) as a ``RuntimeError``
    ("unexpected pos …") that names no cause; the ``OSError`` lets ``writing`` say what
    happened (no space left) in one line instead of a traceback.
    """
    sink = _Sink(file)
    try:
        torch.save(payload, sink)
    except RuntimeError:
        if sink.error is None:
            raise
        raise sink.error from None


def load_checkpoint(run_dir: Path | str, name: str = rundir.CHECKPOINT) -> Checkpoint:
    """Read ``run_dir/<name>``; a missing or damaged file is a ``CheckpointError``."""
    run_dir = Path(run_dir)
    path = run_dir / name
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint in {run_dir}: expected {path.name}; pass the directory a "
            "'metaflow run' wrote (it saves one at the end and every train.checkpoint_every)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); it may be truncated or "
            "from another program: restore it from a copy or start a new run"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} has an unknown checkpoint format; it was not written by this mamlflow "
            "version: start a new run"
        )
    try:
        checkpoint = Checkpoint(
            iteration=int(payload["iteration"]),
            params=_tensors(payload["params"], "params"),
            learnables=_tensors(payload["learnables"], "learnables"),
            optimizer=_mapping(payload["optimizer"], "optimizer"),
            rng=_tensors(payload["rng"], "rng"),
            strategy=str(payload["strategy"]),
            elapsed=float(payload["elapsed"]),
            finished=bool(payload["finished"]),
            best=None if payload.get("best") is None else float(payload["best"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({type(exc).__name__}: {exc}): restore it from a copy or start "
            "a new run"
        ) from exc
    if "torch" not in checkpoint.rng or checkpoint.rng["torch"].dtype != torch.uint8:
        raise CheckpointError(
            f"{path} is damaged (no torch RNG state): restore it from a copy or start a new run"
        )
    return checkpoint


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} is a {type(value).__name__}, not a mapping")
    return value


def _tensors(value: object, what: str) -> dict[str, Tensor]:
    """A mapping of names to tensors, as every tensor field of a checkpoint is."""
    found = _mapping(value, what)
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in found.items()):
        raise TypeError(f"{what} is not a mapping of names to tensors")
    return dict(found)
