"""Why K=5 after ten steps sits above the paper: the same models under two test protocols.

Evaluates trained sinusoid runs (``paper_tables.py sinusoid`` writes five) at K=5 under

- mamlflow's ``sinusoid`` preset: 1,000 test tasks, 100 query points each, the run's α at
  every step (what ``metaflow eval`` reports and docs/results.md shows), and
- the authors' test script (``cbfinn/maml`` ``main.py``, ``test()``): 600 tasks, one per
  ``sess.run``, whose query set is K points (``DataGenerator(update_batch_size * 2)`` split in
  half), the run's α at every step,

and writes mean, median and diverged tasks after 1 and 10 steps, per run, to
``docs/results/sinusoid_protocols.json``, whose table docs/results.md shows (``--render``).
With ``--train-alpha A`` it first trains the same seeds at inner rate A (``--set inner.lr=A``;
the authors' README command leaves ``--update_lr`` at its default, 0.001, where the paper says
0.01) into ``OUT/sinusoid-alpha{A}-seed{S}`` and evaluates those::

    python benchmarks/sinusoid_protocols.py runs/tables/sinusoid-seed*
    python benchmarks/sinusoid_protocols.py --train-alpha 0.001 --seeds 0 1 2 --out runs/tables
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from mamlflow.core import strict_json
from mamlflow.engine import build_components, evaluate, get_host, load_checkpoint, load_saved

ROOT = Path(__file__).resolve().parents[1]
TABLE = "sinusoid_protocols"

PROTOCOLS = {"mamlflow preset": (1000, 100), "authors' test()": (600, 5)}
"""name -> (test tasks, query points per task)."""
SHOTS, STEPS = 5, 10


def _evaluate(run: Path) -> dict[str, dict[str, float]]:
    host = get_host()
    config = load_saved(host, run / "config.json").config
    ckpt = load_checkpoint(run)
    components = build_components(config, host)
    out: dict[str, dict[str, float]] = {}
    for name, (tasks, query) in PROTOCOLS.items():
        result, _ = evaluate(
            components,
            ckpt.params,
            ckpt.learnables,
            shots=SHOTS,
            steps=STEPS,
            tasks=tasks,
            query=query,
            batch_size=config.eval.batch_size,
        )
        for step in (1, STEPS):
            out[f"{name}, step {step}"] = {
                "mean": result.mean[step],
                "median": result.median[step],
                "diverged": result.diverged[step],
            }
    return out


def _train(seed: int, alpha: float, out: Path) -> Path:
    run = out / f"sinusoid-alpha{alpha:g}-seed{seed}"
    if not (run / "checkpoint.pt").is_file():
        args = ["run", "--plugin", "sinusoid", "--seed", str(seed), "--out", str(run)]
        args += ["--set", f"inner.lr={alpha}"]
        subprocess.run([sys.executable, "-m", "mamlflow", *args], check=True)
    return run


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    columns = list(next(iter(report["rows"].values())))
    lines = [
        "| run (inner rate α) | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name, row in report["rows"].items():
        cells = [_cell(row[c]) for c in columns]
        lines.append(f"| {name} (α {report['alpha'][name]:g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: dict[str, Any]) -> str:
    mean = value["mean"]
    shown = "not finite" if mean is None or not math.isfinite(mean) else _number(mean)
    return f"{shown} / {_number(value['median'])} ({value['diverged']})"


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--train-alpha", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/tables"))
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / f"{TABLE}.json")
    parser.add_argument("--render", action="store_true", help="print the saved JSON's table")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.json.read_text())), end="")
        return
    runs = list(args.runs)
    if args.train_alpha is not None:
        runs += [_train(seed, args.train_alpha, args.out) for seed in args.seeds]
    if not runs:
        parser.error("name run directories, or --train-alpha to train some")
    host = get_host()
    report = {
        "table": TABLE,
        "script": "benchmarks/sinusoid_protocols.py",
        "shots": SHOTS,
        "protocols": {name: {"tasks": t, "query": q} for name, (t, q) in PROTOCOLS.items()},
        "cells": "mean / median over tasks (tasks that diverged)",
        "alpha": {run.name: load_saved(host, run / "config.json").config.inner.lr for run in runs},
        "rows": {run.name: _evaluate(run) for run in runs},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(strict_json(report, indent=1) + "\n")
    print(f"wrote {args.json}:\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
