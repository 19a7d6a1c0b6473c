"""``metaflow eval``: adapt the final checkpoint to held-out tasks; JSON, table and plots."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mamlflow.core import CheckpointError, RunConfig, RunDir, atomic_write, rundir, strict_json
from mamlflow.engine import (
    EVAL_FILES,
    EVAL_LOCK,
    Checkpoint,
    EvalResult,
    PluginHost,
    build_components,
    evaluate,
    get_host,
    load_checkpoint,
    load_saved,
    plugin_code,
    remove_stale_temporaries,
    run_lock,
    writing,
)

from ._common import console, err_console

__all__ = ["eval_command"]


def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by 'metaflow run'")],
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots", "-k", min=1, help="support examples per task (default: eval.shots)"
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=0, help="adaptation steps (default: eval.steps)")
    ] = None,
    tasks: Annotated[
        int | None, typer.Option("--tasks", min=2, help="held-out tasks (default: eval.tasks)")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    ] = None,
    best: Annotated[
        bool,
        typer.Option(
            "--best",
            help="evaluate checkpoint_best.pt (the best validation score; needs "
            "train.val_every) instead of the final checkpoint.pt",
        ),
    ] = False,
    transductive: Annotated[
        bool | None,
        typer.Option(
            "--transductive/--no-transductive",
            help="batch norm over the query set (the paper's protocol) or by the support set's "
            "statistics, each query as if alone (default: eval.transductive)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG plots")] = True,
) -> None:
    """Evaluate a run's final (or best) checkpoint: the metric after 0..S adaptation steps."""
    host = get_host()
    files = RunDir(run_dir)
    config = load_saved(host, files.config).config
    if device is not None:
        config = config.model_copy(update={"device": device})
    if transductive is not None:
        config = config.model_copy(
            update={"eval": config.eval.model_copy(update={"transductive": transductive})}
        )
    if best and not files.best_checkpoint.is_file():
        raise CheckpointError(
            f"no {rundir.BEST_CHECKPOINT} in {run_dir}: a run keeps one only when it validates; "
            "train with --set train.val_every=N, or evaluate the final checkpoint without --best"
        )
    ckpt = load_checkpoint(run_dir, rundir.BEST_CHECKPOINT if best else rundir.CHECKPOINT)
    ev = config.eval
    results = _evaluate_each_shots(
        config,
        host,
        ckpt,
        [shots] if shots is not None else list(ev.shots or (config.task.shots,)),
        steps=ev.steps if steps is None else steps,
        tasks=ev.tasks if tasks is None else tasks,
        examples_of=files.examples if plots else None,
    )
    with run_lock(run_dir, "eval", EVAL_LOCK), writing(rundir.EVAL, run_dir):
        remove_stale_temporaries(run_dir, EVAL_FILES)  # a killed evaluation's
        _save(
            run_dir, results, ckpt.iteration, "best" if best else "final", config.eval.transductive
        )
        if plots:
            from ._plots import plot_adaptation

            plot_adaptation(results, files.eval_curve)
    _warn(config, host, results)
    if as_json:
        print(strict_json(_as_json(results)))
        return
    console.print(_results_table(run_dir, results, ckpt.iteration, best=best))
    if not ckpt.finished:
        err_console.print(
            "note: this checkpoint is from a run that stopped early (time limit or interruption)"
        )


def _evaluate_each_shots(
    config: RunConfig,
    host: PluginHost,
    ckpt: Checkpoint,
    shot_list: list[int],
    *,
    steps: int,
    tasks: int,
    examples_of: Callable[[int], Path] | None,
) -> list[EvalResult]:
    """One evaluation per number of shots; ``examples_of(shots)``: where to plot a few tasks."""
    components = build_components(config, host)
    ev = config.eval
    results: list[EvalResult] = []
    for k in shot_list:
        result, examples = evaluate(
            components,
            ckpt.params,
            ckpt.learnables,
            shots=k,
            steps=steps,
            tasks=tasks,
            query=ev.query,
            batch_size=ev.batch_size,
            split=ev.split,
        )
        results.append(result)
        if examples_of is not None:
            with plugin_code(f"task family '{config.task.name}'", "plot_examples()"):
                components.family.plot_examples(
                    components.learner,
                    examples.before,
                    examples.after,
                    examples.batch,
                    str(examples_of(k)),
                )
    return results


def _warn(config: RunConfig, host: PluginHost, results: list[EvalResult]) -> None:
    """On stderr: what the extra steps of a learned-rate algorithm reuse; diverged tasks."""
    algorithm = host.algorithm(config.algorithm.name)(config.algorithm)
    note = algorithm.evaluation_note(config.inner, results[0].steps[-1])
    lines = ([note] if note else []) + [w for r in results for w in r.warnings()]
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _as_json(results: list[EvalResult]) -> dict[str, Any]:
    """``--json``: one result as it is; several under ``results``, with their common metric."""
    if len(results) == 1:
        return results[0].as_json()
    return {"metric": results[0].metric, "results": [r.as_json() for r in results]}


def _results_table(
    run_dir: Path, results: list[EvalResult], iteration: int, *, best: bool
) -> Table:
    """The metric after each adaptation step (rows) for each number of shots (columns)."""
    table = Table(
        title=f"{run_dir}: {results[0].metric} after adaptation "
        f"({'best ' if best else ''}checkpoint at iteration {iteration:,}, "
        f"{results[0].tasks} tasks)"
    )
    table.add_column("steps", justify="right")
    for r in results:
        table.add_column(f"K={r.shots}", justify="right")
    for i, s in enumerate(results[0].steps):
        table.add_row(str(s), *(f"{r.mean[i]:.4f} ± {r.ci95[i]:.4f}" for r in results))
    return table


def _save(
    run_dir: Path, results: list[EvalResult], iteration: int, checkpoint: str, transductive: bool
) -> None:
    """Merge into eval.json: results for other (checkpoint, shots, steps) stay; these replace
    their twins."""
    path = RunDir(run_dir).eval
    existing: list[dict[str, Any]] = []
    if path.is_file():
        try:
            existing = list(json.loads(path.read_bytes())["results"])
        except (ValueError, KeyError, TypeError):
            existing = []  # a damaged file is replaced, since it would be rewritten anyway

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        mode = r.get("transductive", True)
        return (r.get("checkpoint", "final"), r.get("shots"), len(r.get("steps", [])), mode)

    new = [
        {
            **r.as_json(),
            "iteration": iteration,
            "checkpoint": checkpoint,
            "transductive": transductive,
        }
        for r in results
    ]
    keys = {key(r) for r in new}
    merged = [r for r in existing if key(r) not in keys] + new
    data = strict_json({"results": merged}, indent=2).encode() + b"\n"
    atomic_write(path, data)
