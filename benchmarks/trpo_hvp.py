"""One TRPO Hessian-vector product of the KL through the inner step, by tasks per chunk.

Collects the first meta-batch of a rollout preset (navigation: 20 tasks × 20 trajectories × 100
steps; HalfCheetah: 40 × 20 × 200), builds its ``CollectedPolicyTerms`` and times ``hvp`` with the
meta-batch split into chunks of 1, 2, 4, … tasks and whole (median of ``--repeats`` after one
warm-up), beside the FLOPs one product takes (torch's FlopCounterMode) and what the CPU's
batched matmul reaches on the policy's hidden layer. Each chunked product is compared with the
whole one. ``auto`` is the chunking the engine picks (``HVP_CHUNK_ROWS`` time steps a chunk).

    python benchmarks/trpo_hvp.py --preset navigation --json docs/results/trpo_hvp_navigation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mamlflow.engine import CollectedPolicyTerms, PluginHost, Rollouts, build_components, resolve
from mamlflow.engine.rollouts import HVP_CHUNK_ROWS, tasks_per_chunk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--json")
    p.add_argument("--render", metavar="JSON", help="print a report's Markdown table and exit")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    host = PluginHost()
    c = build_components(resolve(host, preset=args.preset, sets=args.set).config, host)
    params, learnables = c.initial_params()
    rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)
    tasks = c.config.train.meta_batch_size
    batch = c.family.sample(c.config.seed, 0, torch.arange(tasks)).to(c.device, c.dtype)
    batch = rollouts.meta_batch(batch, params, learnables, seed=c.config.seed, iteration=0)
    gen = torch.Generator().manual_seed(0)
    vector = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in params.values()]
    auto = tasks_per_chunk(batch)
    sizes = sorted({1, 2, 4, 5, 10, 20, tasks, auto} & set(range(1, tasks + 1)))
    rows, whole = [], None
    for size in reversed(sizes):  # whole first: the reference
        terms = CollectedPolicyTerms(
            rollouts, (params, learnables), batch, meta_batch_size=tasks, first_order=False
        )
        terms.chunk_tasks = size
        start = time.perf_counter()
        product = terms.hvp(vector)  # builds the chunks' graphs
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            product = terms.hvp(vector)
            times.append(time.perf_counter() - start)
        if whole is None:
            whole = product
            with FlopCounterMode(display=False) as flops:
                terms.hvp(vector)
            gflop = flops.get_total_flops() / 1e9
        pairs = zip(product, whole, strict=True)
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in pairs)
        rows.append(
            {
                "tasks_per_chunk": size,
                "auto": size == auto,
                "first_s": first,
                "hvp_s": statistics.median(times),
                "rel_diff_vs_whole": diff,
            }
        )
        terms.release()
    report = {
        "table": f"trpo_hvp_{args.preset.replace('-', '_')}",
        "script": "benchmarks/trpo_hvp.py",
        "command": "python benchmarks/trpo_hvp.py " + " ".join(sys.argv[1:]),
        "preset": args.preset,
        "tasks": tasks,
        "time_steps_per_task": int(batch.query["mask"][0].numel()),
        "hvp_chunk_rows": HVP_CHUNK_ROWS,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gflop_per_hvp": gflop,
        "hidden_bmm_gflops": _hidden_bmm_gflops(batch, tasks, c.config.model),
        "rows": sorted(rows, key=lambda r: r["tasks_per_chunk"]),
    }
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _hidden_bmm_gflops(batch: Any, tasks: int, model: Any) -> float:
    """What one batched matmul of the hidden layer (every task's time steps) reaches."""
    width = model.hidden[-1]
    steps = int(batch.query["mask"][0].numel())
    a, w = torch.randn(tasks, steps, width), torch.randn(tasks, width, width)
    a @ w
    times = []
    for _ in range(10):
        start = time.perf_counter()
        a @ w
        times.append(time.perf_counter() - start)
    return 2 * tasks * steps * width * width / statistics.median(times) / 1e9


def render(report: dict[str, Any]) -> str:
    whole = max(report["rows"], key=lambda r: r["tasks_per_chunk"])["hvp_s"]
    lines = [
        "| tasks per chunk | s per product | vs whole | GFLOP/s | first (builds graphs) s | "
        "max rel. diff vs whole |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        label = f"{r['tasks_per_chunk']}{' (auto)' if r['auto'] else ''}"
        if r["tasks_per_chunk"] == report["tasks"]:
            label += " (whole)"
        lines.append(
            f"| {label} | {r['hvp_s']:.3f} | {whole / r['hvp_s']:.2f}× | "
            f"{report['gflop_per_hvp'] / r['hvp_s']:.0f} | {r['first_s']:.2f} | "
            f"{r['rel_diff_vs_whole']:.1e} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
