"""Reptile (Nichol, Achiam and Schulman 2018): move θ toward each task's adapted weights.

The inner loop is plain SGD (``inner.lr``) or Adam with its moments reset per task, for
``inner.steps`` steps on the task's examples; the meta-step returns the pseudo-gradient
``mean(θ − θ')`` (see ``mamlflow.kernels._reptile``), which the outer optimiser applies: SGD at
rate ε is the paper's update θ ← θ + ε·mean(θ' − θ), and ``outer.schedule=linear`` its linear
annealing of ε. Nothing is differentiated through the inner loop, so ``inner.first_order`` does
not apply and the meta-step costs about what the inner loop does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field

from mamlflow.core import (
    Adapter,
    Algorithm,
    AlgorithmConfig,
    InnerConfig,
    MetaStepFactory,
    Preset,
    TaskObjective,
    adam,
    hookimpl,
    sgd,
)
from mamlflow.kernels import REPTILE_STRATEGIES, MetaStep, Strategy, make_reptile_step
from mamlflow.plugins.omniglot import PRESETS as OMNIGLOT_PRESETS
from mamlflow.plugins.sinusoid import SINUSOID_PRESET

__all__ = ["Reptile", "ReptileConfig"]


class ReptileConfig(AlgorithmConfig):
    inner_optimizer: Literal["sgd", "adam"] = Field(
        "sgd",
        description="the inner loop's rule at rate inner.lr: sgd, or adam with moments reset "
        "for every task (the paper's few-shot classification runs use Adam with beta1 = 0)",
    )
    beta1: float = Field(0.0, ge=0, lt=1, description="adam's first-moment decay")
    beta2: float = Field(0.999, ge=0, lt=1, description="adam's second-moment decay")
    inner_data: Literal["union", "support"] = Field(
        "union",
        description="what the inner loop trains on: union, a task's support and query examples "
        "together (Reptile needs no train/test split within a task), or support only",
    )


class Reptile(Algorithm):
    """First-order meta-learning by moving θ toward the adapted weights."""

    name: ClassVar[str] = "reptile"
    Config: ClassVar[type[AlgorithmConfig]] = ReptileConfig
    description: ClassVar[str] = "Reptile: θ moves toward each task's adapted weights (Nichol 2018)"
    strategies: ClassVar[tuple[Strategy, ...] | None] = REPTILE_STRATEGIES
    config: ReptileConfig

    def adapter(self, inner: InnerConfig) -> Adapter:
        if self.config.inner_optimizer == "adam":
            return adam(inner.lr, (self.config.beta1, self.config.beta2))
        return sgd(inner.lr)

    def first_order(
        self, inner: InnerConfig, iteration: int, iterations: int | None = None
    ) -> bool:
        return True  # no derivative flows through Reptile's inner loop

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
        # Reptile's update is not a gradient of a query loss: its own kernels, not ``maml``.
        if multi_step:
            raise ValueError("Reptile has no multi-step loss")
        return make_reptile_step(
            objective,
            adapter,
            steps=steps,
            strategy=strategy,
            autocast=autocast,
            inner_data=self.config.inner_data,
        )


@hookimpl
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    register(Reptile)


PRESETS = (
    SINUSOID_PRESET.derive(
        "sinusoid-reptile",
        "Sinusoid regression with Reptile: 5 inner SGD steps, outer SGD at 1.0 annealed to 0",
        {
            "algorithm": {"name": "reptile"},
            "inner": {"steps": 5, "lr": 0.02},
            "outer": {"name": "sgd", "lr": 1.0, "schedule": "linear"},
        },
    ),
    OMNIGLOT_PRESETS[0].derive(
        "omniglot-reptile",
        "Omniglot 5-way 1-shot with Reptile, the paper's schedule (97.68% transductive)",
        {
            # Nichol et al. 2018, Omniglot: inner Adam (beta1 = 0) at 0.001 for 5 steps on 10
            # examples per class, 5 tasks per meta-batch, outer step 1.0 annealed linearly to
            # 0 over 100k iterations, 50 inner steps at test time.
            "task": {"query": 9},
            "algorithm": {"name": "reptile", "inner_optimizer": "adam"},
            "inner": {"steps": 5, "lr": 0.001},
            "outer": {"name": "sgd", "lr": 1.0, "schedule": "linear"},
            "train": {"iterations": 100_000, "meta_batch_size": 5},
            "eval": {"steps": 50, "query": 1},
        },
    ),
)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
