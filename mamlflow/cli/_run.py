"""``metaflow run``: resolve a config, meta-train with a live progress bar, summarise.

With ``--nproc-per-node N`` it starts N processes through torchrun's agent and waits for them;
each of them runs this same command, finds its place from torchrun's environment, and only rank 0
prints the progress bar and the summary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
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
from mamlflow.core.distributed import (
    DistributedError,
    check_device,
    from_env,
    launched_by_torchrun,
    threads_per_process,
)
from mamlflow.core.errors import ConfigError
from mamlflow.core.host import get_host
from mamlflow.core.trainer import Trainer, TrainSummary

from ._common import DEBUG_ENV, console, err_console, fail

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

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
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            min=1,
            help="processes sharing each meta-batch, started by torchrun on this machine "
            "(one per GPU with --device cuda)",
        ),
    ] = None,
) -> None:
    """Meta-train a model and write a run directory (config, metrics, checkpoint)."""
    host = get_host()
    if nproc_per_node is not None and launched_by_torchrun():
        fail(
            "--nproc-per-node starts torchrun itself; under torchrun, drop it (torchrun's own "
            "--nproc-per-node sets the number of processes)"
        )
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
        run_dir = out
    cfg = resolved.config

    if nproc_per_node is not None and nproc_per_node > 1:
        # The run directory is fixed here, once: the default name has a timestamp, which the
        # processes would each read at a slightly different second.
        if run_dir is None:
            run_dir = _default_run_dir(resolved)
        if resume is None:
            _refuse_existing_run(run_dir)
        check_device(cfg.device, nproc_per_node)  # fails once, here, not in every process
        worker_args = _worker_args(plugin, config_file, sets, run_dir, seed, device, resume)
        _launch(nproc_per_node, worker_args, run_dir)
        return

    dist = from_env(cfg.device)
    try:
        if run_dir is None:
            # Under torchrun without --out: rank 0 names the directory for everyone.
            name = str(_default_run_dir(resolved)) if dist.is_main else None
            run_dir = Path(dist.broadcast_object(name, "sharing the run directory"))
        if resume is None:
            _refuse_existing_run(run_dir)
        # Build everything (device, model, plugins) before touching the run directory, so a bad
        # choice leaves no half-made run behind.
        trainer = Trainer(cfg, run_dir, host, resume=resume is not None, dist=dist)
        # No process may still be checking for an existing run when rank 0 starts this one.
        dist.barrier("starting the run")
        if not dist.is_main:
            with _graceful_interrupt(trainer, None):  # torchrun forwards Ctrl-C to every rank
                trainer.fit()
            # Leave the group together: a rank that tears gloo down while rank 0 still writes
            # its final checkpoint can abort in gloo's teardown (seen once in CI: SIGABRT).
            dist.barrier("finishing the run")
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(resolved, run_dir / CONFIG_NAME)
        summary = _fit_with_progress(trainer)
        dist.barrier("finishing the run")
    finally:
        dist.shutdown()
    _print_summary(run_dir, summary)


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / CONFIG_NAME).exists() or (run_dir / CHECKPOINT_NAME).exists():
        fail(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )


def _fit_with_progress(trainer: Trainer) -> TrainSummary:
    """``trainer.fit()`` under a live progress bar, with a graceful first Ctrl-C."""
    total = trainer.config.train.iterations
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[rate]} tasks/s"),
        TextColumn("{task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("meta-train", total=total, loss="meta-loss …", rate="…", val="")
        last_refresh = [0.0]

        def on_step(iteration: int, record: dict[str, Any] | None) -> None:
            now = time.monotonic()
            if now - last_refresh[0] < 0.1 and iteration < total:
                return  # keep the bar off the hot path
            last_refresh[0] = now
            fields = {}
            if record is not None:
                fields = {"loss": _headline(record), "rate": _rate(record["tasks_per_s"])}
                for key, value in record.items():
                    if key.startswith("val_") and not key.endswith("_ci95"):
                        fields["val"] = f"{key.replace('_', ' ')} {value:.4f}"
            progress.update(bar, completed=iteration, **fields)

        trainer.on_step = on_step
        progress.update(bar, completed=0)
        with _graceful_interrupt(trainer, progress.console):
            return trainer.fit()


def _headline(record: dict[str, Any]) -> str:
    """What the bar shows of a record: the meta-loss, or for RL the returns it earned.

    A policy-gradient surrogate is ~0 at the collecting parameters whatever the policy does,
    so RL runs show the mean return before → after adaptation instead.
    """
    if "return_after" in record:
        return f"return {record['return_before']:.2f} → {record['return_after']:.2f}"
    return f"meta-loss {record['meta_loss']:.4f}"


def _rate(tasks_per_s: float) -> str:
    return f"{tasks_per_s:,.0f}" if tasks_per_s >= 10 else f"{tasks_per_s:.2f}"


def _print_summary(run_dir: Path, summary: TrainSummary) -> None:
    from mamlflow.plugins.callbacks import read_records

    from ._plots import plot_learning_curve

    if plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "learning_curve.png"):
        console.print(f"learning curve: {run_dir / 'learning_curve.png'}")
    table = Table(title=f"run {run_dir}", show_header=False)
    table.add_row("iterations", f"{summary.iteration:,} / {summary.iterations:,}")
    table.add_row("stopped by", summary.stopped_by)
    table.add_row(
        "final meta-loss", "—" if summary.meta_loss is None else f"{summary.meta_loss:.4f}"
    )
    records = read_records(run_dir / "metrics.jsonl")
    if records and "return_after" in records[-1]:
        table.add_row("return (last log)", _headline(records[-1]).removeprefix("return "))
    table.add_row("tasks/s (incl. compile)", _rate(summary.tasks_per_s))
    table.add_row("kernel", f"{summary.strategy} ({summary.strategy_reason})")
    table.add_row("wall-clock", f"{summary.elapsed:.1f} s")
    table.add_row("next", f"metaflow eval {run_dir}")
    console.print(table)


@contextlib.contextmanager
def _graceful_interrupt(trainer: Trainer, out: Console | None) -> Iterator[None]:
    """First Ctrl-C: stop after this step with a checkpoint. Second: abort at once.

    ``out`` is where to say so; ``None`` (ranks other than 0) stops silently.
    """
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if out is not None:
            out.print("[yellow]stopping after this step (Ctrl-C again to abort)…[/]")
        trainer.request_stop()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_args(
    plugin: str | None,
    config_file: Path | None,
    sets: list[str] | None,
    run_dir: Path,
    seed: int | None,
    device: str | None,
    resume: Path | None,
) -> list[str]:
    """The ``metaflow run`` each process runs: this one, with the run directory made explicit."""
    args = ["run"]
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        if plugin is not None:
            args += ["--plugin", plugin]
        if config_file is not None:
            args += ["--config", str(config_file)]
        args += ["--out", str(run_dir)]
        if seed is not None:
            args += ["--seed", str(seed)]
    for item in sets or ():
        args += ["--set", item]
    if device is not None:
        args += ["--device", device]
    return args


def _launch(nproc: int, worker_args: list[str], run_dir: Path) -> None:
    """``torchrun --standalone --nproc-per-node N -m mamlflow <worker_args>``, in this process.

    torchrun's agent runs here rather than as a child, so its failures come back as values and
    are reported in one line (which rank, how it ended, what the run directory still holds)
    instead of the agent's traceback and failure table.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    # Unset, torchrun would set it to 1 and print a warning. Each process sets its own thread
    # count anyway (threads_per_process: MAMLFLOW_THREADS, or the cores shared out).
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    if not os.environ.get(DEBUG_ENV):
        # Our one line below says what the agent's warnings and failure table would. Its
        # loggers set levels of their own, so the parent's level alone would not do.
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "mamlflow", *worker_args]
    )
    try:
        torchrun(args)
    except ChildFailedError as failed:
        _report_failure(failed, run_dir)
    except SignalException as interrupted:
        # torchrun forwarded the signal once to every process: each finished its step and
        # rank 0 wrote the checkpoint (or, past the agent's grace period, was killed).
        err_console.print(
            f"[yellow]interrupted ({interrupted.sigval.name}):[/] {escape(_what_is_kept(run_dir))}",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(128 + int(interrupted.sigval)) from None


def _what_is_kept(run_dir: Path) -> str:
    if (run_dir / CHECKPOINT_NAME).is_file():
        return f"{run_dir} keeps the last complete checkpoint: continue with --resume {run_dir}"
    return "no checkpoint was written yet"


def _report_failure(failed: ChildFailedError, run_dir: Path) -> NoReturn:
    """One line for the process whose failure stopped the run.

    A process that only lost its peers exits with ``DistributedError``'s code, and the ones the
    agent stopped afterwards die by SIGTERM: neither is the cause unless nothing else failed.
    """
    lost = DistributedError.exit_code

    def consequence(item: tuple[int, Any]) -> tuple[bool, int, int]:
        rank, failure = item
        after = failure.exitcode in (lost, -signal.SIGTERM)
        return (after, failure.timestamp, rank)

    rank, failure = min(failed.failures.items(), key=consequence)
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    elif failure.exitcode == lost:
        how = "lost contact with the other processes"
    else:
        how = f"failed with exit code {failure.exitcode} (its error is printed above)"
    others = len(failed.failures) - 1
    also = f", {others} other process{'es' if others > 1 else ''} stopped with it" if others else ""
    code = failure.exitcode if failure.exitcode > 0 else 1
    fail(f"rank {rank} {how}{also}; the run stopped. {_what_is_kept(run_dir)}", code)


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
