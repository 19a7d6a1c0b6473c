"""Evaluation: adapt to held-out tasks and report the metric after 0..S inner steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Params, Split, TaskBatch
from .components import Components

__all__ = ["DIVERGED", "EvalExamples", "EvalResult", "evaluate"]


DIVERGED = 10.0
"""A task's loss (``mse``) that grows past this many times its value before adaptation has
diverged: adapting made it an order of magnitude worse than not adapting at all."""


@dataclass(frozen=True)
class EvalResult:
    """The metric per number of adaptation steps: mean, 95% interval, median, failures.

    A few tasks whose inner loop diverges can dominate a mean while the median falls steadily;
    ``diverged`` counts them per step (a non-finite score, or an ``mse`` more than ``DIVERGED``
    times its value before adaptation) and ``nonfinite`` those whose score is NaN or inf, which
    make the mean NaN (``null`` in JSON).
    """

    metric: str
    shots: int
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    tasks: int
    median: list[float]
    nonfinite: list[int]
    diverged: list[int]

    def as_json(self) -> dict[str, Any]:
        """The JSON object ``metaflow eval --json`` prints; pass it through ``strict_json``."""
        return {
            "metric": self.metric,
            "shots": self.shots,
            "steps": self.steps,
            "mean": self.mean,
            "ci95": self.ci95,
            "tasks": self.tasks,
            "median": self.median,
            "nonfinite": self.nonfinite,
            "diverged": self.diverged,
        }

    def warnings(self) -> list[str]:
        """One line per problem worth saying: diverged tasks, where they first appear."""
        first = next((s for s, n in zip(self.steps, self.diverged, strict=True) if n), None)
        if first is None:
            return []
        worst = max(self.diverged)
        return [
            f"K={self.shots}: {worst} of {self.tasks} tasks diverged from step {first} on (their "
            f"{self.metric} is not finite or grew more than {DIVERGED:g}x); the mean is "
            f"dominated by them, the median after {self.steps[-1]} steps is "
            f"{self.median[-1]:.4g}"
        ]


@dataclass(frozen=True)
class EvalExamples:
    """The first evaluation batch with parameters before and after adaptation (for plots)."""

    batch: TaskBatch
    before: Params
    after: Params


def evaluate(
    components: Components,
    params: Params,
    learnables: Params,
    *,
    shots: int,
    steps: int,
    tasks: int,
    query: int | None = None,
    batch_size: int = 100,
    split: Split = "test",
    seed: int | None = None,
) -> tuple[EvalResult, EvalExamples]:
    """Adapt θ to ``tasks`` held-out tasks with ``shots`` support examples each.

    Task ``i`` of the evaluation set is sample ``i`` of iteration 0 of ``split``: the same
    tasks for every checkpoint of a run, and disjoint in random stream from training.
    """
    c = components
    seed = c.config.seed if seed is None else seed
    params = {k: v.to(c.device, c.dtype) for k, v in params.items()}
    learnables = {k: v.to(c.device, c.dtype) for k, v in learnables.items()}
    adapt_and_score = c.source.evaluator(
        params,
        learnables,
        steps=steps,
        shots=shots,
        seed=seed,
        split=split,
        later_scale=c.config.eval.later_steps_lr_scale,
        transductive=c.config.eval.transductive,
    )
    scores: list[Tensor] = []
    examples: EvalExamples | None = None
    for start in range(0, tasks, batch_size):
        index = torch.arange(start, min(start + batch_size, tasks))
        raw = c.family.sample_raw(seed, 0, index, split=split, shots=shots, query=query)
        batch = c.family.prepare(raw.to(c.device, c.dtype), c.dtype)
        score, adapted = adapt_and_score(batch)
        scores.append(score.double().cpu())
        if examples is None:
            examples = EvalExamples(batch, params, adapted)
    return _summary(c.family.metric, shots, steps, torch.cat(scores), examples)


def _summary(
    metric: str, shots: int, steps: int, all_scores: Tensor, examples: EvalExamples | None
) -> tuple[EvalResult, EvalExamples]:
    """Mean, 95% interval, median and failures over tasks of ``all_scores`` ``(tasks, S+1)``."""
    tasks = all_scores.shape[0]
    mean = all_scores.mean(0)
    ci95 = 1.96 * all_scores.std(0, unbiased=True) / math.sqrt(all_scores.shape[0])
    finite = torch.isfinite(all_scores)
    diverged = ~finite
    if metric == "mse":
        diverged |= all_scores > DIVERGED * all_scores[:, :1]
    median = all_scores.nanmedian(0).values
    assert examples is not None
    result = EvalResult(
        metric,
        shots,
        list(range(steps + 1)),
        mean.tolist(),
        ci95.tolist(),
        tasks,
        median=median.tolist(),
        nonfinite=(~finite).sum(0).tolist(),
        diverged=diverged.sum(0).tolist(),
    )
    return result, examples
