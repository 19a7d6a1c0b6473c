"""Where a run's meta-batches come from: sampled tasks, or trajectories collected in them.

The engine treats every task family alike once its data exist, but getting them differs: a
supervised family's ``sample`` returns support and query examples, while a rollout family's tasks
are environments whose data are trajectories of the current policy (before adaptation for the
support set, after it for the query set). A ``BatchSource`` hides the difference behind one
interface, chosen once per run by the family itself (``TaskFamily.batch_source``): the trainer,
evaluation and the benchmark never ask what kind of family they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from ..core import (
    Adapter,
    ConfigError,
    InnerConfig,
    Learner,
    PolicyTerms,
    RolloutTaskFamily,
    RunConfig,
    Split,
    TaskBatch,
    TaskFamily,
    TaskObjective,
    batch_statistics_layers,
    statistics_from_first,
)
from ..kernels import make_adapt_curve
from .rollouts import CollectedPolicyTerms, Rollouts

__all__ = ["BatchSource", "CollectedRollouts", "SampledTasks", "batch_source", "support_first"]

Params = dict[str, Tensor]
Evaluator = Callable[[TaskBatch], tuple[Tensor, Params]]
AdaptCurve = Callable[[Params, Params, dict[str, Tensor], dict[str, Tensor]], tuple[Tensor, Params]]
"""``batch -> (scores (tasks, steps + 1), parameters after the last step)``."""


class BatchSource(ABC):
    """Turns a family's sampled tasks into what the kernels differentiate and evaluation scores."""

    def check_training(self, config: RunConfig) -> None:  # noqa: B027 - optional, like a hook
        """Raise ``ConfigError`` if a run with ``config`` cannot train on this source."""

    def meta_batch(
        self, batch: TaskBatch, params: Params, learnables: Params, *, seed: int, iteration: int
    ) -> TaskBatch:
        """The meta-batch a step differentiates, from the sampled ``batch`` (on the device)."""
        return batch

    def logged(
        self, batch: TaskBatch | None, scale: float, dtype: torch.dtype, device: torch.device
    ) -> Tensor | None:
        """Numbers this source adds to every metrics record, summed over a shard and scaled.

        ``None``: nothing. A shard without tasks (``batch`` None) gives zeros of the same size
        (in ``dtype`` on ``device``), so that processes can sum them.
        """
        return None

    def record(self, means: list[float]) -> dict[str, float]:
        """The metrics-record fields for the mean over steps of what ``logged`` returned."""
        return {}

    def policy_terms(
        self,
        leaves: tuple[Params, Params],
        batch: TaskBatch,
        *,
        meta_batch_size: int,
        first_order: bool,
        reduce: Callable[[Tensor], Tensor],
    ) -> PolicyTerms | None:
        """The step's ``PolicyTerms`` for an outer step that re-evaluates it, or None."""
        return None

    @abstractmethod
    def evaluator(
        self,
        params: Params,
        learnables: Params,
        *,
        steps: int,
        shots: int,
        seed: int,
        split: Split,
        later_scale: float,
        transductive: bool = True,
    ) -> Evaluator:
        """Adapt θ to a batch of held-out tasks and score it after 0..steps steps.

        ``transductive`` False: batch-statistics layers normalise queries by the support set's
        statistics (``eval.transductive``)."""


class SampledTasks(BatchSource):
    """Support and query examples as the family samples them (few-shot supervised learning)."""

    def __init__(self, family: TaskFamily, learner: Learner, adapter: Adapter) -> None:
        self.family, self.learner, self.adapter = family, learner, adapter

    def evaluator(
        self,
        params: Params,
        learnables: Params,
        *,
        steps: int,
        shots: int,
        seed: int,
        split: Split,
        later_scale: float,
        transductive: bool = True,
    ) -> Evaluator:
        def curve_for(model: Callable[[Params, Tensor], Tensor]) -> AdaptCurve:
            return make_adapt_curve(
                self.family.objective(self.learner),
                self.family.score(model),
                self.adapter,
                steps=steps,
                later_scale=later_scale,
            )

        curve = curve_for(self.learner)
        if transductive or not batch_statistics_layers(self.learner.module):
            # Without batch statistics the two modes are one: each example is on its own.

            def adapt_and_score(batch: TaskBatch) -> tuple[Tensor, Params]:
                with torch.no_grad():
                    return curve(params, learnables, batch.support, batch.query)

            return adapt_and_score

        key = self.family.io.input_key

        def adapt_and_score_inductively(batch: TaskBatch) -> tuple[Tensor, Params]:
            # The queries follow the support set in one batch, normalised by its statistics.
            rows = batch.support[key].shape[1]
            joined = torch.cat([batch.support[key], batch.query[key]], dim=1)
            scored = curve_for(support_first(self.learner, rows))
            with torch.no_grad():
                return scored(params, learnables, batch.support, {**batch.query, key: joined})

        return adapt_and_score_inductively


def support_first(learner: Learner, rows: int) -> Callable[[Params, Tensor], Tensor]:
    """``learner`` on inputs whose first ``rows`` examples are the support set: the outputs of
    the rest, each normalised by the support set's statistics (``statistics_from_first``)."""

    def model(params: Params, inputs: Tensor) -> Tensor:
        with statistics_from_first(learner.module, rows):
            return learner(params, inputs)[rows:]

    return model


class CollectedRollouts(BatchSource):
    """Trajectories collected in every task: with θ (support), then each task's θ′ (query)."""

    def __init__(self, rollouts: Rollouts) -> None:
        self.rollouts = rollouts

    def check_training(self, config: RunConfig) -> None:
        if config.inner.steps != 1:
            raise ConfigError(
                [
                    f"inner.steps: {config.inner.steps}, but rollout families train with one "
                    "inner policy-gradient step, as the paper does (each further step would need "
                    "trajectories of the policy it adapts); set inner.steps=1 and evaluate more "
                    "steps with eval.steps"
                ]
            )

    def meta_batch(
        self, batch: TaskBatch, params: Params, learnables: Params, *, seed: int, iteration: int
    ) -> TaskBatch:
        return self.rollouts.meta_batch(batch, params, learnables, seed=seed, iteration=iteration)

    def logged(
        self, batch: TaskBatch | None, scale: float, dtype: torch.dtype, device: torch.device
    ) -> Tensor | None:
        # The mean returns before and after adaptation: what an RL run is judged by (its
        # surrogate loss is ~0 at the collecting parameters whatever the policy does).
        if batch is None:
            return torch.zeros(2, dtype=dtype, device=device)
        returns = [_mean_return(batch.support), _mean_return(batch.query)]
        return torch.stack(returns) * (batch.num_tasks * scale)

    def record(self, means: list[float]) -> dict[str, float]:
        before, after = means
        return {"return_before": before, "return_after": after}

    def policy_terms(
        self,
        leaves: tuple[Params, Params],
        batch: TaskBatch,
        *,
        meta_batch_size: int,
        first_order: bool,
        reduce: Callable[[Tensor], Tensor],
    ) -> PolicyTerms | None:
        return CollectedPolicyTerms(
            self.rollouts,
            leaves,
            batch,
            meta_batch_size=meta_batch_size,
            first_order=first_order,
            reduce=reduce,
        )

    def evaluator(
        self,
        params: Params,
        learnables: Params,
        *,
        steps: int,
        shots: int,
        seed: int,
        split: Split,
        later_scale: float,
        transductive: bool = True,
    ) -> Evaluator:
        # Every step adapts on fresh trajectories of the policy it adapts, as the paper does.
        def adapt_and_score(batch: TaskBatch) -> tuple[Tensor, Params]:
            curve = self.rollouts.curve(
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

        return adapt_and_score


class _Sources:
    """The engine's answer to ``TaskFamily.batch_source``: one ``BatchSource`` per kind."""

    def __init__(
        self, learner: Learner, objective: TaskObjective, adapter: Adapter, inner: InnerConfig
    ) -> None:
        self.learner, self.objective, self.adapter, self.inner = learner, objective, adapter, inner

    def sampled(self, family: TaskFamily) -> BatchSource:
        return SampledTasks(family, self.learner, self.adapter)

    def rollouts(self, family: RolloutTaskFamily) -> BatchSource:
        rollouts = Rollouts(family, self.learner, self.objective, self.adapter, self.inner)
        return CollectedRollouts(rollouts)


def batch_source(
    family: TaskFamily,
    learner: Learner,
    objective: TaskObjective,
    adapter: Adapter,
    inner: InnerConfig,
) -> BatchSource:
    """The source of ``family``'s meta-batches; ``objective`` is the loss a run trains on."""
    return family.batch_source(_Sources(learner, objective, adapter, inner))


def _mean_return(trajectories: dict[str, Tensor]) -> Tensor:
    """The mean undiscounted return over a shard's tasks and trajectories."""
    return (trajectories["rewards"] * trajectories["mask"]).sum(-1).mean()
