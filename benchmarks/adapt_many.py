"""Serving throughput: ``MetaModel.adapt_many`` against a loop of ``adapt``, on Omniglot tasks.

Adapts the same ``--tasks`` held-out Omniglot tasks (5-way 1-shot by default) both ways in one
process, checks that the two give the same weights, and reports tasks/s and the ratio. The
throughput does not depend on how well the run was trained, so without ``--run`` a one-iteration
run of the ``omniglot`` preset is made in a temporary folder::

    python benchmarks/adapt_many.py --tasks 1000 --out docs/results/adapt_many.json
    python benchmarks/adapt_many.py --run runs/omniglot
    python benchmarks/adapt_many.py --render docs/results/adapt_many.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import mamlflow

TABLE = "adapt_many"


def _run(path: Path | None, tmp: Path) -> Path:
    if path is not None:
        return path
    host = mamlflow.get_host()
    sets = ("train.iterations=1", "kernel.strategy=loop", "device=cpu")
    run_dir = tmp / "omniglot"
    mamlflow.Trainer(mamlflow.resolve(host, preset="omniglot", sets=sets), run_dir, host).fit()
    return run_dir


def _largest_difference(a: list[Any], b: list[Any]) -> float:
    return max(
        float((p - q).abs().max())
        for m, n in zip(a, b, strict=True)
        for p, q in zip(m.module.parameters(), n.module.parameters(), strict=True)
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adapt-many-") as tmp:
        run_dir = _run(args.run, Path(tmp))
        meta = mamlflow.load_run(run_dir, device="cpu")
        c = meta.components
        batch = c.family.sample(c.config.seed, 0, torch.arange(args.tasks), split="test")
        tasks = [(batch.support["x"][i], batch.support["y"][i]) for i in range(args.tasks)]
        steps = c.config.eval.steps if args.steps is None else args.steps
        meta.adapt(*tasks[0], steps=steps)  # warm-up: first calls allocate
        meta.adapt_many(tasks[:8], steps=steps)
        start = time.perf_counter()
        one_by_one = [meta.adapt(x, y, steps=steps) for x, y in tasks]
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        together = meta.adapt_many(tasks, steps=steps)
        many_s = time.perf_counter() - start
        worst = _largest_difference(one_by_one, together)
        # float32 rounding differs between the batched and per-task convolutions, and a few
        # tasks amplify it; in float64 the two ways agree to rounding.
        exact = mamlflow.load_run(run_dir, device="cpu", dtype="float64")
        few = [(x.double(), y) for x, y in tasks[: args.check_tasks]]
        worst64 = _largest_difference(
            [exact.adapt(x, y, steps=steps) for x, y in few], exact.adapt_many(few, steps=steps)
        )
    cfg = c.config
    return {
        "table": TABLE,
        "script": "benchmarks/adapt_many.py",
        "run": str(args.run)
        if args.run
        else "omniglot preset, 1 iteration (weights do not matter)",
        "task": {"ways": cfg.task.ways, "shots": cfg.task.shots, "model": cfg.model.name},
        "tasks": args.tasks,
        "steps": steps,
        "loop_s": loop_s,
        "many_s": many_s,
        "loop_tasks_per_s": args.tasks / loop_s,
        "many_tasks_per_s": args.tasks / many_s,
        "ratio": loop_s / many_s,
        "max_abs_weight_difference": worst,
        "float64_check_tasks": args.check_tasks,
        "float64_max_abs_weight_difference": worst64,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_start": list(load_at_start),
            "load_average_end": list(os.getloadavg()),
        },
    }


def render(report: dict[str, Any]) -> str:
    """The Markdown table docs/results.md shows for ``report`` (tests/docs holds them equal)."""
    task, machine = report["task"], report["machine"]
    what = (
        f"{report['tasks']:,} Omniglot tasks, {task['ways']}-way {task['shots']}-shot, "
        f"{task['model']}, {report['steps']} steps"
    )
    rows = [
        ("tasks adapted", what),
        (
            "loop of `meta.adapt`",
            f"{report['loop_tasks_per_s']:,.0f} tasks/s ({report['loop_s']:.2f} s)",
        ),
        (
            "`meta.adapt_many` (one vmapped call)",
            f"{report['many_tasks_per_s']:,.0f} tasks/s ({report['many_s']:.2f} s)",
        ),
        ("`adapt_many` ÷ loop", f"{report['ratio']:.1f}×"),
        (
            "largest weight difference, the two ways (float32)",
            f"{report['max_abs_weight_difference']:.1e}",
        ),
        (
            f"the same in float64 ({report['float64_check_tasks']} tasks)",
            f"{report['float64_max_abs_weight_difference']:.1e}",
        ),
        (
            "machine",
            f"{machine['cpus']} CPUs, torch threads: {machine['torch_threads']}, load "
            f"{machine['load_average_start'][0]:.1f} at start, torch {machine['torch']}",
        ),
    ]
    lines = ["| quantity | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="an Omniglot run directory (default: make one)")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--steps", type=int, help="adaptation steps (default: eval.steps)")
    parser.add_argument("--check-tasks", type=int, default=50, help="tasks checked in float64")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--render", type=Path, help="print the table of a JSON report and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())), end="")
        return
    report = measure(args)
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(render(report), end="")


if __name__ == "__main__":
    main()
