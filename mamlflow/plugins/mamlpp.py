"""MAML++ (Antoniou, Edwards and Storkey 2019, "How to train your MAML").

Four of the paper's fixes, each an option of ``algorithm``:

* **Multi-step loss** (MSL): the query loss after every inner step, weighted; the weights start
  uniform and anneal toward the last step over the first ``multi_step_fraction`` of the run
  (the authors' ``get_per_step_loss_importance_vector``: earlier steps decay to 0.03/N each),
  after which only the last step counts, as in MAML.
* **Per-step, per-layer learned inner learning rates** (LSLR): one learning rate per parameter
  tensor and inner step, starting at ``inner.lr`` and meta-learned with θ.
* **Derivative-order annealing** (DA): first-order meta-gradients for the first
  ``first_order_fraction`` of the run, second order after (the paper runs first order for its
  first 50 epochs).
* **Per-step batch-norm weights and biases** (BNWB, ``per_step_norm``): the normalisation
  layers' scale and shift get one learned copy per inner step instead of being adapted. Their
  running statistics (BNRS) have no counterpart here: mamlflow's conv-4 normalises with the
  current batch's statistics, at meta-test time too, as the MAML paper's code does.

The paper's cosine annealing of the outer learning rate is ``outer.schedule=cosine`` (any
algorithm can use it; the ``omniglot-mamlpp`` preset does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field

from mamlflow.core import (
    Adapter,
    AdapterState,
    Algorithm,
    AlgorithmConfig,
    InnerConfig,
    Params,
    Preset,
    hookimpl,
)
from mamlflow.plugins.omniglot import PRESETS as OMNIGLOT_PRESETS

__all__ = ["MAMLPlusPlus", "MAMLPlusPlusConfig", "PerStepSGD", "step_loss_weights"]

MIN_WEIGHT = 0.03
"""The authors' floor for a non-final step's weight, times the number of steps."""


class MAMLPlusPlusConfig(AlgorithmConfig):
    multi_step_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="fraction of train.iterations over which the multi-step loss anneals to the "
        "last step's; 0 turns the multi-step loss off",
    )
    first_order_fraction: float = Field(
        0.3,
        ge=0,
        le=1,
        description="fraction of train.iterations trained first order before switching to "
        "second order (derivative-order annealing); 1: first order throughout",
    )
    learn_lrs: bool = Field(
        True, description="learn an inner learning rate per parameter tensor and inner step"
    )
    per_step_norm: bool = Field(
        False,
        description="one learned copy of the normalisation layers' weights per inner step "
        "(they are then not adapted by the inner loop)",
    )
    norm: str = Field(
        "norm",
        min_length=1,
        description="a parameter whose dotted name has this component is a normalisation "
        "parameter (conv-4's are blocks.N.norm.scale and .shift)",
    )


def step_loss_weights(steps: int, progress: float) -> tuple[float, ...]:
    """The multi-step loss weights at ``progress`` ∈ [0, 1] of the annealing (sum to 1).

    Uniform at 0; every step but the last decays linearly to ``MIN_WEIGHT / steps`` and the last
    takes what they give up.
    """
    n = steps
    floor = MIN_WEIGHT / n
    early = [max(1.0 / n - progress / n, floor)] * (n - 1)
    last = min(1.0 / n + progress * (n - 1) / n, 1.0 - (n - 1) * floor)
    return (*early, last)


class PerStepSGD(Adapter):
    """SGD with a learned rate per parameter tensor and step, and optional per-step norm weights.

    Learnables: ``lr.<name>`` of shape ``(steps,)`` and, with ``norm_step_params``,
    ``step<s>.<name>`` for every normalisation parameter and s = 1..steps: the values those
    parameters take after inner step s (θ's own are step 0's). An evaluation with more inner
    steps than training reuses the last step's rate and norm weights.
    """

    def __init__(
        self,
        lr: float,
        steps: int,
        *,
        learn_lrs: bool = True,
        per_step_norm: bool = False,
        norm: str = "norm",
    ) -> None:
        self.lr = float(lr)
        self.steps = steps
        self.learn_lrs = learn_lrs
        self.per_step_norm = per_step_norm
        self.norm = norm

    def _norm_names(self, params: Params) -> list[str]:
        if not self.per_step_norm:
            return []
        return [k for k in params if self.norm in k.split(".")]

    def adapted(self, params: Params) -> frozenset[str] | None:
        norm = set(self._norm_names(params))
        return frozenset(k for k in params if k not in norm) if norm else None

    def learnables(self, params: Params) -> Params:
        out: Params = {}
        if self.learn_lrs:
            for k, v in params.items():
                if k not in self._norm_names(params):
                    out[f"lr.{k}"] = torch.full((self.steps,), self.lr, dtype=v.dtype)
        for s in range(1, self.steps + 1):
            for k in self._norm_names(params):
                out[f"step{s}.{k}"] = params[k].detach().clone()
        return out

    def update(
        self, grads: Params, state: AdapterState, params: Params, learnables: Params, step: int
    ) -> tuple[Params, AdapterState]:
        at = min(step, self.steps - 1)
        if self.learn_lrs:
            updates = {k: -learnables[f"lr.{k}"][at] * g for k, g in grads.items()}
        else:
            updates = {k: -self.lr * g for k, g in grads.items()}
        after = min(step + 1, self.steps)
        for k in self._norm_names(params):
            updates[k] = learnables[f"step{after}.{k}"] - params[k]
        return updates, state


class MAMLPlusPlus(Algorithm):
    """MAML with the multi-step loss, learned per-step rates and derivative-order annealing."""

    name: ClassVar[str] = "mamlpp"
    Config: ClassVar[type[AlgorithmConfig]] = MAMLPlusPlusConfig
    description: ClassVar[str] = (
        "MAML++: multi-step loss, per-step learned rates, order annealing (Antoniou 2019)"
    )
    config: MAMLPlusPlusConfig

    def adapter(self, inner: InnerConfig) -> Adapter:
        c = self.config
        return PerStepSGD(
            inner.lr,
            max(inner.steps, 1),
            learn_lrs=c.learn_lrs,
            per_step_norm=c.per_step_norm,
            norm=c.norm,
        )

    def evaluation_note(self, inner: InnerConfig, steps: int) -> str | None:
        if steps <= inner.steps or not (self.config.learn_lrs or self.config.per_step_norm):
            return None
        return (
            f"mamlpp learned a rate (and norm weights) per inner step for {inner.steps} step(s); "
            f"steps {inner.steps + 1} to {steps} reuse the last step's, which no later step was "
            f"trained with: evaluate with --steps {inner.steps}, or train with "
            f"inner.steps={steps}"
        )

    def first_order(
        self, inner: InnerConfig, iteration: int, iterations: int | None = None
    ) -> bool:
        if inner.first_order:
            return True
        if iterations is None:
            return False
        return iteration < self.config.first_order_fraction * iterations

    def step_weights(
        self, inner: InnerConfig, iteration: int, iterations: int
    ) -> tuple[float, ...] | None:
        span = self.config.multi_step_fraction * iterations
        if inner.steps < 2 or iteration >= span:
            return None
        return step_loss_weights(inner.steps, iteration / span)


@hookimpl
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    register(MAMLPlusPlus)


PRESETS = (
    OMNIGLOT_PRESETS[0].derive(
        "omniglot-mamlpp",
        "Omniglot 5-way 1-shot with MAML++: 5 steps, 8 tasks, cosine outer rate (paper: 99.47%)",
        {
            # Antoniou et al. 2019's Omniglot 5-way configuration: 8 tasks per meta-batch,
            # 5 inner steps from alpha = 0.1 (learned per step and layer), per-step batch-norm
            # weights, Adam at 0.001 cosine-annealed to 1e-5, 5 steps at test time.
            "algorithm": {"name": "mamlpp", "per_step_norm": True},
            "inner": {"steps": 5, "lr": 0.1},
            "outer": {"name": "adam", "lr": 1e-3, "schedule": "cosine", "min_lr": 1e-5},
            "train": {"iterations": 50_000, "meta_batch_size": 8},
            "eval": {"steps": 5},
        },
    ),
)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
