"""Built-in callbacks: metrics.jsonl, metrics.csv, TensorBoard scalars and early stopping."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mamlflow.core import (
    Callback,
    CallbackConfig,
    ConfigError,
    MetricsRecord,
    TrainStart,
    TrainSummary,
    atomic_write,
    hookimpl,
    rundir,
    strict_json,
)

if TYPE_CHECKING:
    from mamlflow.core import RunConfig

__all__ = [
    "EarlyStopping",
    "EarlyStoppingConfig",
    "MetricsCSV",
    "MetricsJSONL",
    "TensorBoard",
    "TensorBoardConfig",
    "read_csv_records",
]

log = logging.getLogger("mamlflow.callbacks")


class MetricsJSONL(Callback):
    """One JSON object per line: iteration, meta_loss, tasks_per_s, elapsed, …"""

    name: ClassVar[str] = "metrics"
    description: ClassVar[str] = "append every metrics record to metrics.jsonl"
    filename: ClassVar[str] = rundir.METRICS

    def on_train_start(self, state: TrainStart) -> None:
        path = self.run_dir / self.filename
        if path.exists():
            # A resumed run repeats the steps after its last checkpoint: drop their old records
            # so the file reads as one uninterrupted run. Atomically: a crash here must not
            # lose the records that are kept.
            kept = [r for r in rundir.read_records(path) if r["iteration"] <= state.iteration]
            atomic_write(path, "".join(strict_json(r) + "\n" for r in kept).encode())
        self._file = path.open("a", buffering=1)

    def on_log(self, record: MetricsRecord) -> None:
        self._file.write(strict_json(record.as_json()) + "\n")

    def on_train_end(self, summary: TrainSummary) -> None:
        self._file.close()


# --- metrics.csv -------------------------------------------------------------------------------


def read_csv_records(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a metrics.csv, cells as written (an absent value is ``""``).

    A row cut short by a crash (no final newline, or too few cells) is skipped, not an error.
    """
    text = path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else ""
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
    columns = next(reader, [])
    rows = []
    for cells in reader:
        row = dict(zip(columns, cells, strict=False))
        if len(cells) == len(columns) and row.get("iteration", "").isdigit():
            rows.append(row)
    return columns, rows


class MetricsCSV(Callback):
    """metrics.csv: one row per metrics record, one column per key any record has had.

    Validation keys (``val_mse``, …) appear on some rows only, and plugins may add keys of their
    own, so the columns cannot be known when the file starts. They are the union of the keys
    seen so far, in order of appearance; a record with a new key rewrites the file once, with
    the wider header and empty cells in the old rows (atomically; that happens once per new
    key, typically at the first validation, while the file is small). Every row is complete
    and any CSV reader (pandas, a spreadsheet) reads the file as it is.
    """

    name: ClassVar[str] = "csv"
    description: ClassVar[str] = "write every metrics record as a row of metrics.csv"
    filename: ClassVar[str] = rundir.METRICS_CSV

    def on_train_start(self, state: TrainStart) -> None:
        self._path = self.run_dir / self.filename
        iteration = state.iteration
        self._columns, rows = read_csv_records(self._path)
        if self._path.exists():
            # As for metrics.jsonl: a resumed run drops the rows after its checkpoint.
            self._rewrite([r for r in rows if int(r["iteration"]) <= iteration])
        self._open()

    def on_log(self, record: MetricsRecord) -> None:
        row = record.as_json()
        new = [key for key in row if key not in self._columns]
        if new:
            self._file.close()
            _, rows = read_csv_records(self._path)
            self._columns += new
            self._rewrite(rows)
            self._open()
        self._writer.writerow(row)

    def on_train_end(self, summary: TrainSummary) -> None:
        self._file.close()

    def _open(self) -> None:
        # Line-buffered: every row reaches the file as soon as it is written.
        self._file = self._path.open("a", newline="", encoding="utf-8", buffering=1)
        self._writer = csv.DictWriter(self._file, self._columns, lineterminator="\n")

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        text = io.StringIO()
        if self._columns:
            writer = csv.DictWriter(text, self._columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write(self._path, text.getvalue().encode("utf-8"))


# --- TensorBoard -------------------------------------------------------------------------------


class TensorBoardConfig(CallbackConfig):
    flush_secs: int = Field(
        30, ge=1, description="seconds between writes of buffered events to the event file"
    )


class TensorBoard(Callback):
    """Every numeric value of every metrics record as a TensorBoard scalar, step = iteration.

    Tags: ``val_<key>`` is logged as ``val/<key>`` (``val/mse``, ``val/mse_ci95``), every other
    key as ``train/<key>`` (``train/meta_loss``, ``train/tasks_per_s``, ``train/elapsed``).
    """

    name: ClassVar[str] = "tensorboard"
    description: ClassVar[str] = (
        'scalars of every metrics record in tensorboard/ (pip install "mamlflow[tensorboard]")'
    )
    Config: ClassVar[type[CallbackConfig]] = TensorBoardConfig
    config: TensorBoardConfig
    subdir: ClassVar[str] = rundir.TENSORBOARD

    def __init__(self, run_dir: Path, config: CallbackConfig | None = None) -> None:
        super().__init__(run_dir, config)
        # Import now, while the trainer is being built: a missing package must stop the run
        # before it starts, not after hours of training.
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            detail = " ".join(str(error).split())
            raise ConfigError(
                [
                    f"train.callbacks: the tensorboard callback needs the tensorboard package "
                    f'({detail}); install it with pip install "mamlflow[tensorboard]" or drop '
                    "tensorboard from train.callbacks"
                ]
            ) from None
        self._writer_class = SummaryWriter

    def on_train_start(self, state: TrainStart) -> None:
        iteration = state.iteration
        self._writer = self._writer_class(
            log_dir=str(self.run_dir / self.subdir),
            # A resumed run repeats the steps after its checkpoint: TensorBoard hides the old
            # events from there on, so the curves read as one uninterrupted run.
            purge_step=iteration + 1 if iteration > 0 else None,
            flush_secs=self.config.flush_secs,
        )

    def on_log(self, record: MetricsRecord) -> None:
        step = record.iteration
        for key, value in record.as_json().items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self._writer.add_scalar(tag, value, step)

    def on_train_end(self, summary: TrainSummary) -> None:
        self._writer.close()


# --- early stopping ----------------------------------------------------------------------------


class EarlyStoppingConfig(CallbackConfig):
    patience: int = Field(
        5, ge=1, description="validations in a row without improvement before the run stops"
    )
    min_delta: float = Field(
        0.0, ge=0, description="smallest change of the validation metric that counts as better"
    )


class EarlyStopping(Callback):
    """Stop when the validation metric has not improved for ``patience`` validations.

    Watches ``val_<metric>`` of the task family (lower ``mse`` is better, higher ``accuracy``),
    compared with the best value so far, which a resumed run restores from its checkpoint. The
    run then ends like any other: a final ``checkpoint.pt``, ``stopped_by="early_stopping"``,
    and the best parameters already in ``checkpoint_best.pt``.
    """

    name: ClassVar[str] = "early_stopping"
    description: ClassVar[str] = "stop when the validation metric stops improving"
    Config: ClassVar[type[CallbackConfig]] = EarlyStoppingConfig
    config: EarlyStoppingConfig

    @classmethod
    def check_config(cls, run: RunConfig) -> str | None:
        if run.train.val_every is None:
            return (
                "early_stopping watches validation, but train.val_every is null; set "
                "train.val_every=N (validate every N iterations) or drop early_stopping"
            )
        return None

    def on_train_start(self, state: TrainStart) -> None:
        self._key = f"val_{state.metric}"
        self._higher_is_better = state.higher_is_better
        self._best: float | None = state.best
        self._waited = 0

    def on_log(self, record: MetricsRecord) -> None:
        value = record.val
        if value is None:
            return
        delta = self.config.min_delta
        if self._best is None or (
            value > self._best + delta if self._higher_is_better else value < self._best - delta
        ):
            self._best, self._waited = float(value), 0
            return
        self._waited += 1  # NaN lands here too: it never improves on anything
        if self._waited >= self.config.patience:
            log.info(
                "early stopping at iteration %d: %s has not improved on %.6g for %d "
                "validations; the best parameters are in %s",
                record.iteration,
                self._key,
                self._best,
                self._waited,
                rundir.BEST_CHECKPOINT,
            )
            self.control.request_stop("early_stopping")


@hookimpl
def register_callbacks(register: Callable[[type[Callback]], None]) -> None:
    register(MetricsJSONL)
    register(MetricsCSV)
    register(TensorBoard)
    register(EarlyStopping)
