"""The paper's sinusoid and navigation tables of docs/results.md, over five seeds, from the CLI.

For each seed: ``metaflow run --plugin PRESET --seed S`` then ``metaflow eval RUN --json`` (the
paper's protocol as each preset states it), in fresh processes, exactly what a user types. The
five seeds' means are aggregated per adaptation step (mean across seeds, 95% interval across
seeds, and each seed's own value) and written as JSON to ``docs/results/<table>.json``, which
``tests/docs/test_results.py`` holds the tables of docs/results.md to. A finished seed's run
directory is reused, so an interrupted script picks up where it stopped::

    python benchmarks/paper_tables.py sinusoid --out runs/tables     # ~2 min a seed, 2 threads
    python benchmarks/paper_tables.py navigation --out runs/tables   # ~10 min a seed

Not a pytest benchmark: a seed takes minutes, and the numbers are losses and returns.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from mamlflow.core import rundir

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3, 4)
SHOWN_STEPS = {"sinusoid": (0, 1, 2, 5, 10), "navigation": (0, 1, 2, 3)}
"""The adaptation steps a docs table shows (the JSON holds every step)."""
WORDS = {"sinusoid": ("K={}", "tasks"), "navigation": ("{} trajectories a step", "goals")}
"""How a table names its number of shots and its test tasks."""
# table -> (preset, eval arguments, the paper's numbers by shots, for the JSON's record)
TABLES: dict[str, tuple[str, tuple[str, ...], dict[str, dict[str, float]]]] = {
    "sinusoid": (
        "sinusoid",
        ("--steps", "10"),  # eval.shots: 5 and 10, 1000 tasks, 100 query points (the preset)
        {"5": {"1": 0.67, "10": 0.35}},  # Finn et al. 2017, Figure 2 / §5.1, K=5
    ),
    "navigation": (
        "navigation",
        ("--steps", "3"),  # 40 trajectories a step, 4000 time steps a goal (the preset)
        {"40": {"0": -40.41, "1": -11.68, "2": -3.33, "3": -3.23}},  # Table 4, MAML
    ),
}


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mamlflow", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"metaflow {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _seed(table: str, seed: int, out: Path) -> dict[str, Any]:
    """One seed's evaluation (training it first unless its run finished before)."""
    preset, eval_args, _ = TABLES[table]
    run = out / f"{table}-seed{seed}"
    checkpoint = run / "checkpoint.pt"
    if not checkpoint.is_file():
        _cli("run", "--plugin", preset, "--seed", str(seed), "--out", str(run))
    elif not torch.load(checkpoint, weights_only=True)["finished"]:
        _cli("run", "--resume", str(run))
    # The run's own clock (its last metrics record), whichever process of this script trained it.
    trained = rundir.read_records(run / rundir.METRICS)[-1]["elapsed"]
    result = json.loads(_cli("eval", str(run), *eval_args, "--json", "--no-plots"))
    results = result.get("results", [result])
    return {"seed": seed, "train_seconds": trained, "results": results}


def _aggregate(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per number of shots and step: the mean over seeds of each seed's mean (``None`` where a
    seed's mean is not finite: tasks diverged) and of each seed's median, with 95% CIs."""
    by_shots: dict[str, Any] = {}
    for shots in sorted({r["shots"] for s in seeds for r in s["results"]}):
        rows = [next(r for r in s["results"] if r["shots"] == shots) for s in seeds]
        steps = rows[0]["steps"]
        means = [[row["mean"][i] for row in rows] for i in range(len(steps))]
        medians = [[row["median"][i] for row in rows] for i in range(len(steps))]
        mean, ci95 = zip(*(_across_seeds(v) for v in means), strict=True)
        median, median_ci95 = zip(*(_across_seeds(v) for v in medians), strict=True)
        by_shots[str(shots)] = {
            "steps": steps,
            "tasks": rows[0]["tasks"],
            "mean": list(mean),
            "ci95": list(ci95),
            "median": list(median),
            "median_ci95": list(median_ci95),
            "per_seed": means,
            "per_seed_median": medians,
            "nonfinite_seeds": [sum(m is None or not math.isfinite(m) for m in v) for v in means],
            "diverged": [[row["diverged"][i] for row in rows] for i in range(len(steps))],
        }
    return by_shots


def _across_seeds(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and 95% CI of one number over seeds; ``None`` when a seed's is not finite."""
    if any(v is None or not math.isfinite(v) for v in values):
        return None, None
    finite = [float(v) for v in values if v is not None]
    return statistics.fmean(finite), 1.96 * statistics.stdev(finite) / math.sqrt(len(finite))


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    steps = SHOWN_STEPS[report["table"]]
    seeds = len(report["seeds"])
    lines = [
        "| adaptation steps | " + " | ".join(str(s) for s in steps) + " |",
        "| --- |" + " --- |" * len(steps),
    ]
    shots_word, tasks_word = WORDS[report["table"]]
    for shots, paper in report["paper"].items():
        # As the paper prints them (0.67, not 0.670).
        cells = [f"{paper[str(s)]:g}".replace("-", "−") if str(s) in paper else "" for s in steps]
        lines.append(f"| paper ({shots_word.format(shots)}) | " + " | ".join(cells) + " |")
    for shots, row in report["by_shots"].items():
        label = f"mamlflow ({shots_word.format(shots)}), {seeds} seeds × {row['tasks']}"
        for stat, ci in (("mean", "ci95"), ("median", "median_ci95")):
            cells = [_cell(row, stat, ci, s) for s in steps]
            lines.append(f"| {label} {tasks_word}: {stat} | " + " | ".join(cells) + " |")
        diverged = [sum(row["diverged"][s]) for s in steps]
        if any(diverged):
            cells = [str(d) for d in diverged]
            what = f"{shots_word.format(shots)}: {tasks_word} that diverged"
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], stat: str, ci: str, step: int) -> str:
    if row[stat][step] is None:
        return f"not finite in {row['nonfinite_seeds'][step]} of {len(row['per_seed'][step])} seeds"
    value = row[stat][step]
    return f"{_number(value)} ± {_number(row[ci][step], like=value)}"


def _number(value: float, like: float | None = None) -> str:
    """Three decimals below 10, two below 10⁴, then powers of ten (chosen by ``like``, the value
    an interval belongs to, when given); minus signs as the docs write them."""
    size = abs(value if like is None else like)
    if size < 10:
        text = f"{value:.3f}"
    elif size < 1e4:
        text = f"{value:.2f}"
    else:
        text = f"{value:.1e}"
    return text.replace("-", "−")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--out", type=Path, default=Path("runs/tables"))
    parser.add_argument("--json", type=Path, default=None, help="default: docs/results/")
    parser.add_argument(
        "--render", action="store_true", help="print the Markdown table of the saved JSON only"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train and evaluate only these seeds and write no JSON (to run seeds in parallel "
        "processes; a last run without --seeds reuses them and writes the table)",
    )
    args = parser.parse_args()
    path = args.json or ROOT / "docs" / "results" / f"{args.table}.json"
    if args.render:
        print(render(json.loads(path.read_text())), end="")
        return
    seeds = []
    for seed in args.seeds or SEEDS:
        seeds.append(_seed(args.table, seed, args.out))
        print(f"{args.table} seed {seed}: {seeds[-1]['train_seconds']:.0f} s", flush=True)
    if args.seeds:
        return
    preset, eval_args, paper = TABLES[args.table]
    report = {
        "table": args.table,
        "script": "benchmarks/paper_tables.py",
        "commands": [
            f"metaflow run --plugin {preset} --seed S --out RUN",
            f"metaflow eval RUN {' '.join(eval_args)} --json",
        ],
        "seeds": list(SEEDS),
        "paper": paper,
        "by_shots": _aggregate(seeds),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "train_seconds": [s["train_seconds"] for s in seeds],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path}; its table for docs/results.md:\n")
    print(render(report), end="")


if __name__ == "__main__":
    main()
