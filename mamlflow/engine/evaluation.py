"""Evaluation: adapt to held-out tasks and report the metric after 0..S inner steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Params, Split, TaskBatch
from .components import Components

__all__ = ["EvalExamples", "EvalResult", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    """Mean and 95% interval of the metric per number of adaptation steps."""

    metric: str
    shots: int
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    tasks: int

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "shots": self.shots,
            "steps": self.steps,
            "mean": self.mean,
            "ci95": self.ci95,
            "tasks": self.tasks,
        }


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
    )
    scores: list[Tensor] = []
    examples: EvalExamples | None = None
    for start in range(0, tasks, batch_size):
        index = torch.arange(start, min(start + batch_size, tasks))
        batch = c.family.sample(seed, 0, index, split=split, shots=shots, query=query)
        batch = batch.to(c.device, c.dtype)
        score, adapted = adapt_and_score(batch)
        scores.append(score.double().cpu())
        if examples is None:
            examples = EvalExamples(batch, params, adapted)
    return _summary(c.family.metric, shots, steps, torch.cat(scores), examples)


def _summary(
    metric: str, shots: int, steps: int, all_scores: Tensor, examples: EvalExamples | None
) -> tuple[EvalResult, EvalExamples]:
    """Mean and 95% interval over tasks of ``all_scores`` ``(tasks, steps + 1)``."""
    tasks = all_scores.shape[0]
    mean = all_scores.mean(0)
    ci95 = 1.96 * all_scores.std(0, unbiased=True) / math.sqrt(all_scores.shape[0])
    assert examples is not None
    return (
        EvalResult(metric, shots, list(range(steps + 1)), mean.tolist(), ci95.tolist(), tasks),
        examples,
    )
