"""Built-in callbacks: ``metrics`` writes ``metrics.jsonl`` in the run directory."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from mamlflow.core._io import atomic_write
from mamlflow.core.callbacks import Callback
from mamlflow.core.hookspecs import hookimpl

__all__ = ["MetricsJSONL", "read_records"]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line cut short by a crash is skipped, not an error."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
    return records


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
            # so the file reads as one uninterrupted run. Atomically: a crash here must not
            # lose the records that are kept.
            kept = [r for r in read_records(path) if r["iteration"] <= iteration]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._file = path.open("a", buffering=1)

    def on_log(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record)) + "\n")

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._file.close()


@hookimpl
def register_callbacks(register: Callable[[type[Callback]], None]) -> None:
    register(MetricsJSONL)
