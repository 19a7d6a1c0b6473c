"""``metaflow eval``: adapt the final checkpoint to held-out tasks; JSON, table and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mamlflow.core._io import atomic_write
from mamlflow.core.checkpoint import BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, load_checkpoint
from mamlflow.core.components import build_components
from mamlflow.core.config import load_saved
from mamlflow.core.errors import CheckpointError
from mamlflow.core.evaluate import EvalResult, evaluate
from mamlflow.core.host import get_host

from ._common import console, err_console
from ._run import CONFIG_NAME

__all__ = ["eval_command"]

EVAL_NAME = "eval.json"


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
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG plots")] = True,
) -> None:
    """Evaluate a run's final (or best) checkpoint: the metric after 0..S adaptation steps."""
    host = get_host()
    config = load_saved(host, run_dir / CONFIG_NAME).config
    if device is not None:
        config = config.model_copy(update={"device": device})
    if best and not (run_dir / BEST_CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"no {BEST_CHECKPOINT_NAME} in {run_dir}: a run keeps one only when it validates; "
            "train with --set train.val_every=N, or evaluate the final checkpoint without --best"
        )
    ckpt = load_checkpoint(run_dir, BEST_CHECKPOINT_NAME if best else CHECKPOINT_NAME)
    components = build_components(config, host)
    ev = config.eval
    shot_list = [shots] if shots is not None else list(ev.shots or (config.task.shots,))
    results: list[EvalResult] = []
    for k in shot_list:
        result, examples = evaluate(
            components,
            ckpt.params,
            ckpt.learnables,
            shots=k,
            steps=ev.steps if steps is None else steps,
            tasks=ev.tasks if tasks is None else tasks,
            query=ev.query,
            batch_size=ev.batch_size,
            split=ev.split,
        )
        results.append(result)
        if plots:
            components.family.plot_examples(
                components.learner,
                examples.before,
                examples.after,
                examples.batch,
                str(run_dir / f"examples_k{k}.png"),
            )
    _save(run_dir, results, ckpt.iteration, "best" if best else "final")
    if plots:
        from ._plots import plot_adaptation

        plot_adaptation(results, run_dir / "eval_curve.png")

    if as_json:
        if len(results) == 1:
            print(json.dumps(results[0].as_json()))
        else:
            print(
                json.dumps({"metric": results[0].metric, "results": [r.as_json() for r in results]})
            )
        return
    table = Table(
        title=f"{run_dir}: {results[0].metric} after adaptation "
        f"({'best ' if best else ''}checkpoint at iteration {ckpt.iteration:,}, "
        f"{results[0].tasks} tasks)"
    )
    table.add_column("steps", justify="right")
    for r in results:
        table.add_column(f"K={r.shots}", justify="right")
    for i, s in enumerate(results[0].steps):
        table.add_row(str(s), *(f"{r.mean[i]:.4f} ± {r.ci95[i]:.4f}" for r in results))
    console.print(table)
    if not ckpt.finished:
        err_console.print(
            "note: this checkpoint is from a run that stopped early (time limit or interruption)"
        )


def _save(run_dir: Path, results: list[EvalResult], iteration: int, checkpoint: str) -> None:
    """Merge into eval.json: results for other (checkpoint, shots, steps) stay; these replace
    their twins."""
    path = run_dir / EVAL_NAME
    existing: list[dict[str, Any]] = []
    if path.is_file():
        try:
            existing = list(json.loads(path.read_text())["results"])
        except (ValueError, KeyError, TypeError):
            existing = []  # a damaged file is replaced, since it would be rewritten anyway

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r.get("checkpoint", "final"), r.get("shots"), len(r.get("steps", [])))

    new = [{**r.as_json(), "iteration": iteration, "checkpoint": checkpoint} for r in results]
    keys = {key(r) for r in new}
    merged = [r for r in existing if key(r) not in keys] + new
    data = json.dumps({"results": merged}, indent=2).encode() + b"\n"
    atomic_write(path, data)
