"""Callbacks: code that runs between meta-steps, never inside the compiled step."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Callback"]


class Callback:
    """Observe a training run. Every method is optional; the defaults do nothing.

    Enabled by name in ``train.callbacks``; built with the run directory. Only the process that
    owns the run directory (rank 0) calls them.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, state: Mapping[str, Any]) -> None:
        """Before the first step (also after a resume); ``state`` has ``iteration``, ``config``."""

    def on_log(self, record: Mapping[str, Any]) -> None:
        """A metrics record: ``iteration``, ``meta_loss``, ``tasks_per_s``, ``elapsed``, …"""

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        """After the last step or the time limit, once the checkpoint is written."""
