"""Built-in callbacks: ``metrics`` writes ``metrics.jsonl`` in the run directory."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from mamlflow.core.callbacks import Callback
from mamlflow.core.hookspecs import hookimpl

__all__ = ["MetricsJSONL"]


class MetricsJSONL(Callback):
    """One JSON object per line: iteration, meta_loss, tasks_per_s, elapsed, …"""

    name: ClassVar[str] = "metrics"
    description: ClassVar[str] = "append every metrics record to metrics.jsonl"
    filename: ClassVar[str] = "metrics.jsonl"

    def on_train_start(self, state: Mapping[str, Any]) -> None:
        path = self.run_dir / self.filename
        iteration = int(state["iteration"])
        if path.exists():
            # A resumed run repeats the steps after its last checkpoint: drop their old records
            # so the file reads as one uninterrupted run.
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if int(json.loads(line)["iteration"]) <= iteration:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
            path.write_text("".join(f"{line}\n" for line in kept))
        self._file = path.open("a", buffering=1)

    def on_log(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._file.close()


@hookimpl
def register_callbacks(register: Callable[[type[Callback]], None]) -> None:
    register(MetricsJSONL)
