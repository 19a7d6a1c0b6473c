"""Algorithm: which inner-loop rule, derivative order, loss and kernels a meta-learner uses.

``maml`` and ``fomaml`` differ only in the derivative order; Meta-SGD's learned learning rates
and MAML++'s per-step rates are adapters with learnable tensors; MAML++'s multi-step loss is
``step_weights``; Reptile, whose outer update is not a gradient of a query loss, brings kernels
of its own through ``make_meta_step``. The trainer asks the algorithm at every iteration, between
steps, so each of these may change over a run (derivative-order and multi-step-loss annealing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from .adapter import Adapter
from .config import AlgorithmConfig, InnerConfig
from .metastep import MetaStep, MetaStepFactory, Strategy
from .task import TaskFamily, TaskObjective

if TYPE_CHECKING:
    from .learner import Learner

__all__ = ["Algorithm", "AlgorithmConfig"]


class Algorithm(ABC):
    """A meta-learning algorithm of the MAML family."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    description: ClassVar[str] = ""

    def __init__(self, config: AlgorithmConfig) -> None:
        self.config = config

    @abstractmethod
    def adapter(self, inner: InnerConfig) -> Adapter:
        """The inner-loop update rule for the run's ``inner`` settings."""

    strategies: ClassVar[tuple[Strategy, ...] | None] = None
    """The kernel strategies ``make_meta_step`` implements; None: all of them (``STRATEGIES``)."""

    def objective(self, family: TaskFamily, learner: Learner) -> TaskObjective:
        """The per-task training loss the kernels differentiate: the family's, by default.

        ANIL returns a ``StagedObjective`` here, so the kernels can compute the body's features
        once per task instead of once per inner step.
        """
        return family.objective(learner)

    def first_order(
        self, inner: InnerConfig, iteration: int, iterations: int | None = None
    ) -> bool:
        """Whether the meta-gradient at ``iteration`` (of ``iterations``) drops second derivatives.

        ``iterations`` is the run's length, for schedules given as a fraction of it (MAML++'s
        derivative-order annealing); None where there is no run (a benchmark).
        """
        return inner.first_order

    def evaluation_note(self, inner: InnerConfig, steps: int) -> str | None:
        """What evaluating ``steps`` adaptation steps means for a run trained with ``inner``.

        None by default. An algorithm whose learned tensors only have a meaning for the steps
        they were trained for (Meta-SGD's rates, MAML++'s per-step rates) says what the extra
        steps reuse, and ``metaflow eval`` prints it as a warning.
        """
        return None

    def step_weights(
        self, inner: InnerConfig, iteration: int, iterations: int
    ) -> tuple[float, ...] | None:
        """Weights of the query loss after each inner step at ``iteration`` of ``iterations``.

        None (the default): the loss after the last step only, MAML's meta-objective. A tuple of
        ``inner.steps`` weights turns on the multi-step loss of MAML++.
        """
        return None

    def make_meta_step(
        self,
        objective: TaskObjective,
        adapter: Adapter,
        *,
        steps: int,
        first_order: bool,
        strategy: Strategy,
        maml: MetaStepFactory,
        autocast: torch.dtype | None = None,
        multi_step: bool = False,
    ) -> MetaStep:
        """Build this algorithm's meta-step; the default is the MAML kernels' (``maml``).

        ``maml`` is ``mamlflow.make_meta_step``, handed in by the caller so that the contract
        does not depend on the kernels. An override must return a step with the same contract
        (``mamlflow.core.metastep``): scaled loss and gradients for θ and the adapter's
        learnables, summed over the shard's tasks, and implement every strategy listed in
        ``strategies`` with ``loop`` as the reference the others match.
        """
        return maml(
            objective,
            adapter,
            steps=steps,
            first_order=first_order,
            strategy=strategy,
            autocast=autocast,
            multi_step=multi_step,
        )
