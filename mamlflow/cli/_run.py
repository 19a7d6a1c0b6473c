"""``metaflow run``: resolve a config, meta-train with a live progress bar, summarise."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mamlflow.core.checkpoint import CHECKPOINT_NAME
from mamlflow.core.config import ResolvedConfig, load_saved, parse_set, resolve, save_resolved
from mamlflow.core.errors import ConfigError
from mamlflow.core.host import get_host
from mamlflow.core.trainer import Trainer

from ._common import console, fail

__all__ = ["CONFIG_NAME", "run"]

CONFIG_NAME = "config.json"
# Keys a resumed run may change: how long it goes on and where; never what it learns.
_RESUMABLE_PREFIXES = (
    "train.iterations",
    "train.time_limit",
    "train.log_every",
    "train.checkpoint_every",
    "device",
)


def run(
    plugin: Annotated[
        str | None,
        typer.Option(
            "--plugin", "-p", help="preset to start from, e.g. sinusoid (list: metaflow plugins)"
        ),
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML, YAML or JSON config file")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override a key: dotted.key=value (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run directory (default: runs/NAME-TIME)")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed (overrides the config)")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this directory")
    ] = None,
) -> None:
    """Meta-train a model and write a run directory (config, metrics, checkpoint)."""
    host = get_host()
    overrides: dict[str, tuple[Any, str]] = {}
    if seed is not None:
        overrides["seed"] = (seed, "--seed")
    if device is not None:
        overrides["device"] = (device, "--device")

    if resume is not None:
        if plugin or config_file or seed is not None:
            fail(
                "--resume continues a run with its saved config: drop --plugin/--config/--seed "
                "(only --set train.iterations=…, train.time_limit=… and --device may change)"
            )
        run_dir = resume
        if not (run_dir / CHECKPOINT_NAME).is_file():
            fail(
                f"{run_dir} holds no {CHECKPOINT_NAME} to resume; pass a directory written "
                "by 'metaflow run'"
            )
        resolved = _resume_config(run_dir, sets or (), overrides)
    else:
        if (
            plugin is None
            and config_file is None
            and not any(s.startswith("preset=") for s in sets or ())
        ):
            fail(
                "no preset chosen: pass --plugin NAME (one of: "
                f"{', '.join(host.names('preset'))}) or a --config file"
            )
        resolved = resolve(
            host, preset=plugin, file=config_file, sets=sets or (), overrides=overrides
        )
        run_dir = out if out is not None else _default_run_dir(resolved)
        if (run_dir / CONFIG_NAME).exists() or (run_dir / CHECKPOINT_NAME).exists():
            fail(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --out"
            )
    cfg = resolved.config
    # Build everything (device, model, plugins) before touching the run directory, so a bad
    # choice leaves no half-made run behind.
    trainer = Trainer(cfg, run_dir, host, resume=resume is not None)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(resolved, run_dir / CONFIG_NAME)

    total = cfg.train.iterations
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("meta-loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} tasks/s"),
        TextColumn("{task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("meta-train", total=total, loss="…", rate="…", val="")
        last_refresh = [0.0]

        def on_step(iteration: int, record: dict[str, Any] | None) -> None:
            now = time.monotonic()
            if now - last_refresh[0] < 0.1 and iteration < total:
                return  # keep the bar off the hot path
            last_refresh[0] = now
            fields = {}
            if record is not None:
                fields = {
                    "loss": f"{record['meta_loss']:.4f}",
                    "rate": f"{record['tasks_per_s']:,.0f}",
                }
                for key, value in record.items():
                    if key.startswith("val_") and not key.endswith("_ci95"):
                        fields["val"] = f"{key.replace('_', ' ')} {value:.4f}"
            progress.update(bar, completed=iteration, **fields)

        trainer.on_step = on_step
        progress.update(bar, completed=0)
        with _graceful_interrupt(trainer, progress.console):
            summary = trainer.fit()

    from ._plots import plot_learning_curve

    if plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "learning_curve.png"):
        console.print(f"learning curve: {run_dir / 'learning_curve.png'}")
    table = Table(title=f"run {run_dir}", show_header=False)
    table.add_row("iterations", f"{summary.iteration:,} / {summary.iterations:,}")
    table.add_row("stopped by", summary.stopped_by)
    table.add_row(
        "final meta-loss", "—" if summary.meta_loss is None else f"{summary.meta_loss:.4f}"
    )
    table.add_row("tasks/s (incl. compile)", f"{summary.tasks_per_s:,.0f}")
    table.add_row("kernel", f"{summary.strategy} ({summary.strategy_reason})")
    table.add_row("wall-clock", f"{summary.elapsed:.1f} s")
    table.add_row("next", f"metaflow eval {run_dir}")
    console.print(table)


@contextlib.contextmanager
def _graceful_interrupt(trainer: Trainer, out: Console) -> Iterator[None]:
    """First Ctrl-C: stop after this step with a checkpoint. Second: abort at once."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        out.print("[yellow]stopping after this step (Ctrl-C again to abort)…[/]")
        trainer.request_stop()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_run_dir(resolved: ResolvedConfig) -> Path:
    name = resolved.config.preset or resolved.config.task.name
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_config(
    run_dir: Path, sets: list[str] | tuple[str, ...], overrides: dict[str, tuple[Any, str]]
) -> ResolvedConfig:
    host = get_host()
    saved = load_saved(host, run_dir / CONFIG_NAME)
    changes = dict(parse_set(item) for item in sets)
    bad = [k for k in changes if not k.startswith(_RESUMABLE_PREFIXES)]
    if bad:
        raise ConfigError(
            [
                f"{k}: cannot change on --resume (only train.iterations, train.time_limit, "
                "train.log_every, train.checkpoint_every and --device); start a new run instead "
                "(from --set)"
                for k in bad
            ]
        )
    if not changes and not overrides:
        return saved
    values = saved.config.model_dump(mode="json")
    layered = {k: (_get(values, k), saved.provenance.get(k, "default")) for k in saved.provenance}
    layered.update({k: (v, "--set") for k, v in changes.items()})
    layered.update(overrides)
    return resolve(host, overrides=layered)


def _get(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values
