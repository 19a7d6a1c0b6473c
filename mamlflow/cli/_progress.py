"""The live progress bar of ``metaflow run``: it fits its terminal, and log lines print above it.

At 80 columns the full bar (name, bar, iteration, metric, rate, validation, elapsed and remaining
time) does not fit, and rich would cut every column short. ``FittingProgress`` instead leaves out
whole columns, least important first, so what it shows stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["FittingProgress", "headline", "rate", "record_fields", "train_progress"]

BAR_WIDTHS = (40, 10)
"""The bar's width when there is room, and the narrowest worth drawing."""


class FittingProgress(Progress):
    """A ``Progress`` that drops whole columns, ``drop_order`` first, to fit its console.

    ``bar`` (one of ``columns``) takes what is left, up to ``BAR_WIDTHS[0]``; below
    ``BAR_WIDTHS[1]`` it is dropped like any other column.
    """

    def __init__(
        self,
        *columns: ProgressColumn,
        bar: BarColumn,
        drop_order: Sequence[ProgressColumn],
        **kwargs: Any,
    ) -> None:
        super().__init__(*columns, **kwargs)
        self.bar = bar
        self.drop_order = tuple(drop_order)

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        shown_tasks = [task for task in tasks if task.visible]
        if not shown_tasks:  # also while Progress's constructor renders once, before ours ran
            return Table.grid()
        columns = [c for c in self.columns if isinstance(c, ProgressColumn)]
        cells = {c: [c(task) for task in shown_tasks] for c in columns if c is not self.bar}
        widths = {
            c: max((self._width(r) for r in rendered), default=0) for c, rendered in cells.items()
        }
        shown = self._fitting(columns, widths)
        if self.bar in shown:
            self.bar.bar_width = self._bar_width(shown, widths)
            cells[self.bar] = [self.bar(task) for task in shown_tasks]
        table = Table.grid(*(c.get_table_column().copy() for c in shown), padding=(0, 1))
        for row in range(len(shown_tasks)):
            table.add_row(*(cells[c][row] for c in shown))
        return table

    def _fitting(
        self, columns: list[ProgressColumn], widths: Mapping[ProgressColumn, int]
    ) -> list[ProgressColumn]:
        """``columns`` less the first of ``drop_order`` until the rest fit the console."""
        shown = [c for c in columns if c is self.bar or widths[c] > 0]  # e.g. no validation yet
        for column in self.drop_order:
            if self._needed(shown, widths) <= self.console.width:
                break
            if column in shown:
                shown.remove(column)
        return shown

    def _needed(self, shown: list[ProgressColumn], widths: Mapping[ProgressColumn, int]) -> int:
        """The width of a row of ``shown`` (the bar at its narrowest), one space between cells."""
        cells = sum(BAR_WIDTHS[1] if c is self.bar else widths[c] for c in shown)
        return cells + len(shown) - 1

    def _bar_width(self, shown: list[ProgressColumn], widths: Mapping[ProgressColumn, int]) -> int:
        spare = self.console.width - self._needed(shown, widths)
        return min(BAR_WIDTHS[0], BAR_WIDTHS[1] + spare)

    def _width(self, renderable: RenderableType) -> int:
        return Measurement.get(self.console, self.console.options, renderable).maximum


def train_progress(out: Console) -> FittingProgress:
    """The bar of a meta-training run, on ``out``; its task's fields are ``record_fields``."""
    name = TextColumn("[bold]{task.description}")
    bar = BarColumn(bar_width=BAR_WIDTHS[0])
    iteration = MofNCompleteColumn()
    metric = TextColumn("{task.fields[loss]}")
    speed = TextColumn("{task.fields[rate]} tasks/s")
    validation = TextColumn("{task.fields[val]}")
    elapsed, remaining = TimeElapsedColumn(), TimeRemainingColumn()
    return FittingProgress(
        *(name, bar, iteration, metric, speed, validation, elapsed, remaining),
        bar=bar,
        # The iteration, the live metric and the rate always stay.
        drop_order=(name, elapsed, bar, remaining, validation),
        console=out,
        transient=False,
    )


def record_fields(record: Mapping[str, Any]) -> dict[str, str]:
    """What the bar shows of a metrics record: its headline, rate and validation."""
    fields = {"loss": headline(record), "rate": rate(record["tasks_per_s"])}
    for key, value in record.items():
        if key.startswith("val_") and not key.endswith("_ci95"):
            fields["val"] = f"{key.replace('_', ' ')} {value:.4f}"
    return fields


def headline(record: Mapping[str, Any]) -> str:
    """A record's meta-loss, or for RL the returns it earned.

    A policy-gradient surrogate is ~0 at the collecting parameters whatever the policy does,
    so RL runs show the mean return before → after adaptation instead.
    """
    if record.get("return_after") is not None:
        return f"return {record['return_before']:.2f} → {record['return_after']:.2f}"
    return f"meta-loss {record['meta_loss']:.4f}"


def rate(tasks_per_s: float) -> str:
    return f"{tasks_per_s:,.0f}" if tasks_per_s >= 10 else f"{tasks_per_s:.2f}"
