"""Seconds per meta-RL training iteration, by phase, for variants of one preset in one run.

Trains ``--iterations`` iterations of a rollout preset through the engine once per variant (a
variant is a label and ``--set`` overrides, e.g. ``workers1:task.workers=1``), with the same
seed, so every variant collects the same trajectories and takes the same steps. Per iteration it
records the wall-clock time and three phases: *collect* (support trajectories, the inner step,
query trajectories), *trpo* (the outer step: conjugate gradient on the KL's Hessian-vector
products and the line search) and *rest* (mostly the meta-gradient). The first iteration is
reported apart (it builds environments and worker processes); the table gives the median of
the others.

``--baseline REV`` first runs the same variants (or ``--baseline-variant``s, for options REV
did not have) with mamlflow as it was at git revision REV
(a temporary worktree on ``PYTHONPATH``, in a fresh interpreter), so "before" and "after" are
measured in one run on one machine. The report compares every run's first collected
trajectories (bitwise) and final parameters (largest difference relative to the largest entry)
with the first run's.

    python benchmarks/rl_iteration.py --preset halfcheetah-vel --iterations 3 --baseline b7ee67f \
        --baseline-variant "before:" --variant "one process:task.workers=1" \
        --variant "workers:task.workers=auto" \
        --json docs/results/rl_iteration_halfcheetah.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mamlflow.core import PolicyOuterOptimizer
from mamlflow.engine import PluginHost, Rollouts, Trainer, load_checkpoint, resolve


class _Phases:
    """Wall-clock seconds spent in collection and in the outer step, per iteration."""

    def __init__(self) -> None:
        self.collect = 0.0
        self.outer = 0.0
        self.rows: list[dict[str, float]] = []
        self.first_batch: dict[str, torch.Tensor] | None = None
        self._last = time.perf_counter()

    def wrap(self, owner: type, name: str, phase: str) -> Any:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                setattr(self, phase, getattr(self, phase) + time.perf_counter() - start)
            if phase == "collect" and self.first_batch is None:
                self.first_batch = {
                    f"{part}.{k}": v.detach().clone()
                    for part in ("support", "query")
                    for k, v in getattr(result, part).items()
                }
            return result

        setattr(owner, name, timed)
        return original

    def step_done(self, iteration: int, _record: object) -> None:
        now = time.perf_counter()
        total = now - self._last
        self.rows.append(
            {
                "iteration": iteration,
                "total_s": total,
                "collect_s": self.collect,
                "trpo_s": self.outer,
                "rest_s": total - self.collect - self.outer,
            }
        )
        self.collect = self.outer = 0.0
        self._last = now


def run_variant(preset: str, iterations: int, sets: list[str], out: Path) -> dict[str, Any]:
    host = PluginHost()
    config = resolve(host, preset=preset, sets=(f"train.iterations={iterations}", *sets)).config
    phases = _Phases()
    originals = [
        (Rollouts, "meta_batch", phases.wrap(Rollouts, "meta_batch", "collect")),
        (
            PolicyOuterOptimizer,
            "step",
            phases.wrap(PolicyOuterOptimizer, "step", "outer"),
        ),
    ]
    try:
        trainer = Trainer(config, out, host, on_step=phases.step_done)
        phases._last = time.perf_counter()
        trainer.fit()
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    steady = phases.rows[1:] or phases.rows
    return {
        "first_batch": phases.first_batch,
        "sets": sets,
        "threads": torch.get_num_threads(),
        "first": phases.rows[0],
        "iterations": phases.rows,
        "median": {
            k: statistics.median(r[k] for r in steady)
            for k in ("total_s", "collect_s", "trpo_s", "rest_s")
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--variant", action="append", help="LABEL:KEY=V[,KEY=V...] (default: one)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    p.add_argument("--baseline", help="a git revision to measure first, for comparison")
    p.add_argument(
        "--baseline-variant",
        action="append",
        help="the baseline's variants, where --variant's keys did not exist yet (default: those)",
    )
    p.add_argument("--json", help="write the report here")
    p.add_argument("--raw", help=argparse.SUPPRESS)  # a baseline child's output file
    p.add_argument("--render", metavar="JSON", help="print a report's Markdown table and exit")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    if args.preset is None:
        p.error("--preset is required")
    variants = args.variant or ["this:"]
    runs: dict[str, Any] = {}
    if args.baseline:
        runs.update(_baseline(args, args.baseline_variant or variants))
    with tempfile.TemporaryDirectory() as tmp:
        for i, variant in enumerate(variants):
            label, _, sets = variant.partition(":")
            overrides = [*args.set, *filter(None, sets.split(","))]
            out = Path(tmp) / f"v{i}"
            runs[label] = run_variant(args.preset, args.iterations, overrides, out)
            runs[label]["params"] = load_checkpoint(out).params
    if args.raw:  # a baseline child: hand the runs (tensors included) to the parent
        torch.save(runs, args.raw)
        return 0
    report = _compare(args, runs)
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _baseline(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    """The variants run by mamlflow at ``args.baseline``, in a fresh interpreter."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree, raw = Path(tmp) / "tree", Path(tmp) / "runs.pt"
        git = ["git", "-C", str(root)]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), args.baseline], check=True)
        try:
            command = [sys.executable, __file__, "--preset", args.preset, "--raw", str(raw)]
            command += ["--iterations", str(args.iterations)]
            command += [f"--set={x}" for x in args.set] + [f"--variant={v}" for v in variants]
            env = {**os.environ, "PYTHONPATH": str(tree)}
            subprocess.run(command, check=True, env=env)
            runs = torch.load(raw, weights_only=False)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)
    return {f"{label} @ {args.baseline}": run for label, run in runs.items()}


def _compare(args: argparse.Namespace, runs: dict[str, Any]) -> dict[str, Any]:
    labels = list(runs)
    first = runs[labels[0]]
    for run in runs.values():
        params, batch = run.pop("params"), run.pop("first_batch")
        if run is first:
            reference, reference_batch = params, batch
        run["first_trajectories_bitwise_equal"] = batch.keys() == reference_batch.keys() and all(
            torch.equal(batch[k], reference_batch[k]) for k in batch
        )
        run["params_max_rel_diff_vs_first"] = max(
            float((params[k] - v).abs().max() / v.abs().max().clamp_min(1e-30))
            for k, v in reference.items()
        )
        run["speedup_vs_first"] = first["median"]["total_s"] / run["median"]["total_s"]
    return {
        "table": f"rl_iteration_{args.preset.replace('-', '_')}",
        "script": "benchmarks/rl_iteration.py",
        "command": "python benchmarks/rl_iteration.py " + " ".join(sys.argv[1:]),
        "preset": args.preset,
        "iterations": args.iterations,
        "torch": torch.__version__,
        "cores": len(os.sched_getaffinity(0)),
        "baseline": args.baseline,
        "runs": runs,
    }


def render(report: dict[str, Any]) -> str:
    """The report as docs/results.md's Markdown table."""
    lines = [
        "| run | s per iteration | collect | TRPO | rest | speed-up | first iteration's "
        f"trajectories | θ after {report['iterations']} iterations: max diff / max entry |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in report["runs"].items():
        m = r["median"]
        same = "bitwise equal" if r["first_trajectories_bitwise_equal"] else "differ"
        lines.append(
            f"| {label} | {m['total_s']:.2f} | {m['collect_s']:.2f} | {m['trpo_s']:.2f} | "
            f"{m['rest_s']:.2f} | {r['speedup_vs_first']:.2f}× | {same} | "
            f"{r['params_max_rel_diff_vs_first']:.1e} |"
        )
    return "\n".join(lines)


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['preset']}: median seconds per iteration after the first "
        f"({report['iterations']} iterations per run)"
    )
    print(
        f"{'run':<28} {'total':>7} {'collect':>8} {'trpo':>7} {'rest':>7} {'first':>7} "
        f"{'speed-up':>9} {'θ diff':>8}"
    )
    for label, r in report["runs"].items():
        m = r["median"]
        print(
            f"{label:<28} {m['total_s']:7.2f} {m['collect_s']:8.2f} {m['trpo_s']:7.2f} "
            f"{m['rest_s']:7.2f} {r['first']['total_s']:7.2f} {r['speedup_vs_first']:8.2f}x "
            f"{r['params_max_rel_diff_vs_first']:8.1e} {r['first_trajectories_bitwise_equal']!s:>9}"
        )


if __name__ == "__main__":
    sys.exit(main())
