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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from mamlflow.core import ConfigError, MetricsRecord, RunDir, TrainSummary, rundir
from mamlflow.engine import (
    DistributedError,
    PluginHost,
    ResolvedConfig,
    Trainer,
    check_device,
    check_unlocked,
    from_env,
    get_host,
    launched_by_torchrun,
    load_saved,
    parse_set,
    resolve,
    threads_per_process,
)

from ._common import DEBUG_ENV, console, err_console, fail, logs_through
from ._progress import rate, record_fields, train_progress

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

__all__ = ["run"]

_STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
"""The signals that stop a run cleanly, and the ``stopped_by`` each leaves."""
TERMINATED_EXIT = 128 + signal.SIGTERM
"""A run stopped by SIGTERM exits with this, after its checkpoint, as a killed one would."""

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
    overrides = _option_overrides(seed, device)
    run_dir: Path | None
    if resume is not None:
        _check_resumable(resume, plugin, config_file, seed, out)
        resolved, run_dir = _resume_config(resume, sets or (), overrides), resume
    else:
        resolved, run_dir = _new_config(host, plugin, config_file, sets, overrides), out
    if nproc_per_node is not None and nproc_per_node > 1:
        run_dir = _prepare_launch(resolved, run_dir, nproc_per_node, resuming=resume is not None)
        worker_args = _worker_args(plugin, config_file, sets, run_dir, seed, device, resume)
        _launch(nproc_per_node, worker_args, run_dir)
        return
    _train_here(host, resolved, run_dir, resuming=resume is not None)


def _option_overrides(seed: int | None, device: str | None) -> dict[str, tuple[Any, str]]:
    """What ``--seed`` and ``--device`` set, with their sources."""
    overrides: dict[str, tuple[Any, str]] = {}
    if seed is not None:
        overrides["seed"] = (seed, "--seed")
    if device is not None:
        overrides["device"] = (device, "--device")
    return overrides


def _check_resumable(
    run_dir: Path,
    plugin: str | None,
    config_file: Path | None,
    seed: int | None,
    out: Path | None,
) -> None:
    if plugin or config_file or seed is not None:
        fail(
            "--resume continues a run with its saved config: drop --plugin/--config/--seed "
            "(only --set train.iterations=…, train.time_limit=… and --device may change)"
        )
    if out is not None and out.resolve() != run_dir.resolve():
        fail(
            f"--resume {run_dir} continues that run in its own directory: drop --out {out} "
            f"(copy {run_dir} first to continue it elsewhere)"
        )
    check_unlocked(run_dir)
    if not RunDir(run_dir).checkpoint.is_file():
        fail(
            f"{run_dir} holds no {rundir.CHECKPOINT} to resume; pass a directory written "
            "by 'metaflow run'"
        )


def _new_config(
    host: PluginHost,
    plugin: str | None,
    config_file: Path | None,
    sets: list[str] | None,
    overrides: dict[str, tuple[Any, str]],
) -> ResolvedConfig:
    """The config of a new run: preset < file < ``--set`` < ``--seed``/``--device``."""
    if (
        plugin is None
        and config_file is None
        and not any(s.startswith("preset=") for s in sets or ())
    ):
        fail(
            "no preset chosen: pass --plugin NAME (one of: "
            f"{', '.join(host.names('preset'))}) or a --config file"
        )
    return resolve(host, preset=plugin, file=config_file, sets=sets or (), overrides=overrides)


def _prepare_launch(
    resolved: ResolvedConfig, run_dir: Path | None, nproc: int, *, resuming: bool
) -> Path:
    """The run directory every process is given, once everything that can fail here did."""
    # Fixed here, once: the default name has a timestamp, which the processes would each read
    # at a slightly different second.
    if run_dir is None:
        run_dir = _default_run_dir(resolved)
    if not resuming:
        check_unlocked(run_dir)
        _refuse_existing_run(run_dir)
    check_device(resolved.config.device, nproc)  # fails once, here, not in every process
    return run_dir


def _train_here(
    host: PluginHost, resolved: ResolvedConfig, run_dir: Path | None, *, resuming: bool
) -> None:
    """Train in this process (alone, or as one of torchrun's); rank 0 shows bar and summary."""
    dist = from_env(resolved.config.device)
    try:
        if run_dir is None:
            # Under torchrun without --out: rank 0 names the directory for everyone.
            name = str(_default_run_dir(resolved)) if dist.is_main else None
            run_dir = Path(dist.broadcast_object(name, "sharing the run directory"))
        if dist.is_main:
            # First: a directory being trained holds a run too, and its holder is the news.
            check_unlocked(run_dir)  # refuse before the bar shows; fit() takes the lock
        if not resuming:
            _refuse_existing_run(run_dir)
        # Build everything (device, model, plugins) before touching the run directory, so a bad
        # choice leaves no half-made run behind. The trainer writes config.json itself.
        trainer = Trainer(resolved, run_dir, host, resume=resuming, dist=dist)
        # No process may still be checking for an existing run when rank 0 starts this one.
        dist.barrier("starting the run")
        if not dist.is_main:
            with _graceful_interrupt(trainer, None):  # torchrun forwards Ctrl-C to every rank
                trainer.fit()
            # Leave the group together: a rank that tears gloo down while rank 0 still writes
            # its final checkpoint can abort in gloo's teardown (seen once in CI: SIGABRT).
            dist.barrier("finishing the run")
            return
        summary = _fit_with_progress(trainer, console)
        dist.barrier("finishing the run")
    finally:
        dist.shutdown()
    _print_summary(run_dir, summary)
    if summary.stopped_by == "terminated":
        raise SystemExit(TERMINATED_EXIT)


def _refuse_existing_run(run_dir: Path) -> None:
    if not RunDir(run_dir).is_free():
        fail(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} "
            "or choose another --out"
        )


def _fit_with_progress(trainer: Trainer, out: Console) -> TrainSummary:
    """``trainer.fit()`` under a live progress bar on ``out``, with a graceful first Ctrl-C.

    While the bar is shown, mamlflow's log lines (the kernel choice) print above it.
    """
    total = trainer.config.train.iterations
    with train_progress(out) as progress, logs_through(progress.console):
        bar = progress.add_task("meta-train", total=total, loss="meta-loss …", rate="…", val="")
        trainer.on_step = _bar_updater(progress, bar, total)
        progress.update(bar, completed=0)
        with _graceful_interrupt(trainer, progress.console):
            return trainer.fit()


def _bar_updater(
    progress: Progress, bar: TaskID, total: int
) -> Callable[[int, MetricsRecord | None], None]:
    """The trainer's ``on_step``: moves the bar, at most ten times a second (and at the end)."""
    last_refresh = [0.0]

    def on_step(iteration: int, record: MetricsRecord | None) -> None:
        now = time.monotonic()
        if now - last_refresh[0] < 0.1 and iteration < total:
            return  # keep the bar off the hot path
        last_refresh[0] = now
        fields = {} if record is None else record_fields(record)
        progress.update(bar, completed=iteration, **fields)

    return on_step


def _print_summary(run_dir: Path, summary: TrainSummary) -> None:
    from ._plots import plot_learning_curve

    files = RunDir(run_dir)
    if plot_learning_curve(files.metrics, files.learning_curve):
        console.print(f"learning curve: {files.learning_curve}")
    console.print(_summary_table(run_dir, summary, rundir.read_records(files.metrics)))


def _summary_table(
    run_dir: Path, summary: TrainSummary, records: Sequence[Mapping[str, Any]]
) -> Table:
    """The table that ends a run; ``records`` are its metrics records, oldest first."""
    table = Table(title=f"run {run_dir}", show_header=False)
    table.add_row("iterations", f"{summary.iteration:,} / {summary.iterations:,}")
    table.add_row("stopped by", summary.stopped_by)
    table.add_row(*_final_result(summary, records[-1] if records else {}))
    table.add_row("tasks/s (incl. compile)", rate(summary.tasks_per_s))
    table.add_row("kernel", f"{summary.strategy} ({summary.strategy_reason})")
    table.add_row("wall-clock", f"{summary.elapsed:.1f} s")
    table.add_row("next", f"metaflow eval {run_dir}")
    return table


def _final_result(summary: TrainSummary, last_record: Mapping[str, Any]) -> tuple[str, str]:
    """The run's last training number: its meta-loss, or the returns of a rollout run.

    A policy-gradient surrogate is ~0 at the collecting policy whatever the policy does, so a
    run whose records hold returns reports those (a resume with no step left: the last log's).
    """
    for numbers in (summary, last_record):
        before, after = numbers.get("return_before"), numbers.get("return_after")
        if before is not None and after is not None:
            return "final return", f"{before:.2f} → {after:.2f} (before → after adaptation)"
    return "final meta-loss", "—" if summary.meta_loss is None else f"{summary.meta_loss:.4f}"


@contextlib.contextmanager
def _graceful_interrupt(trainer: Trainer, out: Console | None) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: stop after this step with a checkpoint. A second: abort at once.

    SIGTERM is what schedulers, ``docker stop`` and preemption send; ``out`` is where to say
    what happens, ``None`` (ranks other than 0) stops silently.
    """
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}

    def handler(signum: int, frame: object) -> None:
        for other, before in previous.items():
            signal.signal(other, before)  # the next one aborts at once
        if out is not None:
            name = signal.Signals(signum).name
            out.print(f"[yellow]{name}: stopping after this step, with a checkpoint ({name} again "
                      "to abort)…[/]")  # fmt: skip
        trainer.request_stop(_STOP_SIGNALS[signum])

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


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
    if RunDir(run_dir).checkpoint.is_file():
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
    saved = load_saved(host, RunDir(run_dir).config)
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
