"""Evaluation: adapt to held-out tasks and report the metric after 0..S inner steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..kernels import make_adapt_curve
from .components import Components
from .learner import Params
from .rl import Rollouts, RolloutTaskFamily
from .task import Split, TaskBatch

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
    later_scale = c.config.eval.later_steps_lr_scale
    adapt_and_score: Callable[[TaskBatch], tuple[Tensor, Params]]
    if isinstance(c.family, RolloutTaskFamily):
        # RL: collect with the current policy, score, adapt on what was collected, repeat;
        # every step adapts on fresh trajectories of the policy it adapts, as the paper does.
        rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)

        def adapt_and_score(batch: TaskBatch) -> tuple[Tensor, Params]:
            curve = rollouts.curve(
                batch,
                params,
                learnables,
                steps=steps,
                trajectories=shots,
                seed=seed,
                split=split,
                later_scale=later_scale,
            )
            return curve.returns, curve.adapted

    else:
        curve = make_adapt_curve(
            c.family.objective(c.learner),
            c.family.score(c.learner),
            c.adapter,
            steps=steps,
            later_scale=later_scale,
        )

        def adapt_and_score(batch: TaskBatch) -> tuple[Tensor, Params]:
            with torch.no_grad():
                return curve(params, learnables, batch.support, batch.query)

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
