"""One second-order MAML meta-step of ResNet-12 on MiniImagenet-shaped episodes, per strategy.

Times ``loop`` and ``batched`` (or the ``--strategies`` named, compiled ones too) on one fixed
synthetic meta-batch of 84×84×3 images (N-way K-shot, Q query images per class, S inner SGD
steps, T tasks), checks each against the loop, and asks ``kernel.strategy=auto`` (a short run,
so no compile) what it picks on the same batch: it checks the batched kernel against the loop in
float64 and times both. Prints one line per strategy and writes JSON::

    python benchmarks/resnet12_step.py --out /tmp/resnet12_step.json
    python benchmarks/resnet12_step.py --channels 16,40,80,160 --repeats 3
    python benchmarks/resnet12_step.py --channels 4,8,8,16 --strategies "" --out auto.json

Defaults are the full network (64, 160, 320, 640), 5-way 1-shot, 15 query, 5 inner steps,
meta-batch 4, float32. Not a pytest benchmark: one full-width step takes minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mamlflow.core import Learner, ModelIO, StepResult, TaskBatch, TaskObjective, sgd
from mamlflow.kernels import make_meta_step, select_meta_step
from mamlflow.plugins.resnet12 import ResNet12, ResNet12Config


def _batch(args: argparse.Namespace) -> TaskBatch:
    g = torch.Generator().manual_seed(0)

    def part(per_class: int) -> dict[str, Tensor]:
        shape = (args.tasks, args.ways * per_class, 3, args.size, args.size)
        labels = torch.arange(args.ways).repeat(per_class).expand(args.tasks, -1).clone()
        return {"x": torch.randn(shape, generator=g), "y": labels}

    return TaskBatch(part(args.shots), part(args.query), torch.arange(args.tasks))


def _objective(learner: Learner) -> TaskObjective:
    def objective(params: Mapping[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(learner(dict(params), data["x"]), data["y"])

    return objective


def _discrepancy(result: StepResult, reference: StepResult) -> float:
    scale = max(v.abs().max().item() for v in reference.grads.values())
    diff = max((result.grads[k] - v).abs().max().item() for k, v in reference.grads.items())
    return diff / scale


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="64,160,320,640")
    parser.add_argument("--norm", default="batch", choices=["batch", "group", "layer", "none"])
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up")
    parser.add_argument(
        "--strategies",
        default="loop,batched",
        help="comma-separated strategies to time directly, the loop first (empty: none)",
    )
    parser.add_argument("--no-auto", action="store_true", help="skip asking auto")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


Probe = tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]


def _time_strategies(
    args: argparse.Namespace, objective: TaskObjective, probe: Probe
) -> dict[str, dict[str, object]]:
    """Seconds per step of each strategy (after a warm-up call), and its distance to the first."""
    rows: dict[str, dict[str, object]] = {}
    reference: StepResult | None = None
    for strategy in [s for s in args.strategies.split(",") if s]:
        step = make_meta_step(
            objective,
            sgd(args.inner_lr),
            steps=args.steps,
            first_order=args.first_order,
            strategy=strategy,  # type: ignore[arg-type]
        )
        start = time.perf_counter()
        result = step(*probe, 1.0 / args.tasks)  # warm-up (and compile)
        first = time.perf_counter() - start
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step(*probe, 1.0 / args.tasks)
            seconds.append(time.perf_counter() - start)
        reference = reference or result  # the first strategy listed, normally the loop
        rows[strategy] = {
            "first_call_s": first,
            "seconds": seconds,
            "median_s": statistics.median(seconds) if seconds else None,
            "discrepancy_vs_first_float32": _discrepancy(result, reference),
        }
        spread = (
            f"median {statistics.median(seconds):.3f} s, min {min(seconds):.3f}, "
            f"max {max(seconds):.3f} over {len(seconds)}"
            if seconds
            else "not repeated"
        )
        print(
            f"{strategy:>15}: {spread} (first call {first:.3f} s), "
            f"|Δ| {_discrepancy(result, reference):.1e} of the largest reference entry",
            flush=True,
        )
    return rows


def _auto(
    args: argparse.Namespace, objective: TaskObjective, probe: Probe, module: nn.Module
) -> dict[str, object]:
    """What ``kernel.strategy=auto`` picks on ``probe`` for a short run, and why."""
    start = time.perf_counter()
    selection = select_meta_step(
        "auto",
        objective,
        sgd(args.inner_lr),
        steps=args.steps,
        first_order=args.first_order,
        remaining_iterations=1,  # a short run: measures the eager kernels, compiles nothing
        probe=probe,
        module=module,
    )
    print(f"auto picks {selection.strategy}: {selection.reason}", flush=True)
    return {
        "strategy": selection.strategy,
        "reason": selection.reason,
        "timings_s": dict(selection.timings),
        "selection_s": time.perf_counter() - start,
    }


def main() -> None:
    args = _arguments()
    channels = tuple(int(c) for c in args.channels.split(","))
    config = ResNet12Config(name="resnet12", channels=channels, norm=args.norm)
    torch.manual_seed(0)
    module = ResNet12(config).build(ModelIO((3, args.size, args.size), args.ways))
    learner = Learner(module)
    params = learner.init_params()
    batch = _batch(args)
    probe: Probe = (params, {}, batch.support, batch.query)
    objective = _objective(learner)
    report = {
        "benchmark": "resnet12_step",
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"channels": channels},
        "parameters": sum(v.numel() for v in params.values()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "strategies": _time_strategies(args, objective, probe),
        "auto": None if args.no_auto else _auto(args, objective, probe, module),
    }
    text = json.dumps(_strict(report), indent=2, allow_nan=False)
    if args.out is not None:
        args.out.write_text(text + "\n")
    else:
        print(text)


def _strict(value: object) -> object:
    """``value`` with every non-finite float as null (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


if __name__ == "__main__":
    main()
