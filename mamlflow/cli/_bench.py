"""``metaflow bench``: time every meta-step strategy on a preset's meta-batch; table or JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from mamlflow.core import strict_json
from mamlflow.engine import (
    BenchReport,
    StrategyResult,
    benchmark,
    build_components,
    get_host,
    resolve,
)

from ._common import console, err_console, fail

__all__ = ["bench"]


def bench(
    plugin: Annotated[
        str,
        typer.Option(
            "--plugin", "-p", help="preset whose meta-batch, model and inner loop are measured"
        ),
    ] = "sinusoid",
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies",
            help="comma-separated, e.g. loop,batched (default: every one this device runs); "
            "loop, the reference, is always measured",
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option("--order", help="first or second (default: the preset's inner.first_order)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override a key: dotted.key=value (repeatable)"),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")
    ] = None,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="timed calls per strategy (median)")
    ] = 5,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="untimed calls after the first")
    ] = 1,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32 or float64 (default: kernel.dtype)")
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto/--no-auto", help="also report what kernel.strategy=auto picks (it may compile)"
        ),
    ] = True,
) -> None:
    """Measure the meta-step strategies on one meta-batch: tasks/s, memory, compile, parity.

    Every strategy runs on the same batch from the same initial θ; its meta-gradient is compared
    with the loop's. Compiled strategies compile on their first call (tens of seconds on a small
    CPU), which is reported apart from the step time.
    """
    host = get_host()
    overrides: dict[str, tuple[Any, str]] = {}
    if device is not None:
        overrides["device"] = (device, "--device")
    if dtype is not None:
        overrides["kernel.dtype"] = (dtype, "--dtype")
    resolved = resolve(host, preset=plugin, sets=sets or (), overrides=overrides)
    components = build_components(resolved.config, host)
    names = None if strategies is None else [s.strip() for s in strategies.split(",") if s.strip()]
    if names == []:
        fail("--strategies names no strategy; e.g. --strategies loop,batched")

    # Status on stderr, so that ``--json`` leaves stdout to the one JSON object.
    with err_console.status("bench: starting") as status:
        report = benchmark(
            components,
            strategies=names,
            order=order,  # type: ignore[arg-type]  # checked by benchmark, with a suggestion
            repeats=repeats,
            warmup=warmup,
            auto=auto,
            progress=lambda message: status.update(f"bench: {message}"),
        )
    if as_json:
        print(strict_json(report.as_json()))
        return
    _print_table(report)


def _print_table(report: BenchReport) -> None:
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{report.preset}: meta-batch {report.meta_batch}, {report.inner_steps} inner "
        f"step(s), {report.order} order, {report.dtype}",
    )
    table.add_column("strategy", no_wrap=True)
    for column in (
        "tasks/s",
        "× loop",
        "median ms",
        "% peak",
        "peak MiB",
        "compile s",
        "max rel err",
    ):
        # Headers may wrap on a narrow terminal, but never inside a word or a number.
        table.add_column(column, justify="right", min_width=max(len(w) for w in column.split()))
    for row in report.results:
        table.add_row(*_cells(row))
    console.print(table)
    console.print(
        f"{report.device}; fp32 matmul peak {_number(report.peak_gflops, '{:,.0f}')} GFLOP/s; "
        f"{_flops(report.flops_per_step)} per loop step",
        highlight=False,
    )
    for row in report.results:
        if row.error is not None:
            console.print(f"[red]{row.strategy} failed:[/] {escape(row.error)}", highlight=False)
    if report.auto is not None:
        console.print(
            f"auto → [bold]{report.auto.strategy}[/] ({escape(report.auto.reason)})",
            highlight=False,
        )


def _cells(row: StrategyResult) -> list[str]:
    if row.error is not None:
        return [row.strategy, "[red]failed[/]", *(["—"] * 6)]
    return [
        row.strategy,
        _compact(row.tasks_per_s),
        _number(row.speedup_vs_loop, "{:.3g}×"),
        _compact(row.median_ms),
        _compact(row.pct_peak),
        _compact(row.peak_mem_mib),
        _number(row.compile_s, "{:.1f}"),
        "0" if row.max_rel_err == 0 else _number(row.max_rel_err, "{:.0e}"),
    ]


def _compact(value: float | None) -> str:
    """Three significant digits in at most six characters, for the narrow columns."""
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    if value == 0 or value >= 0.01:
        return f"{value:.3g}"
    return f"{value:.0e}"


def _flops(flops: int | None) -> str:
    if flops is None:
        return "unknown FLOPs"
    return f"{flops / 1e9:.3g} GFLOP" if flops >= 1e9 else f"{flops / 1e6:.3g} MFLOP"


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)
