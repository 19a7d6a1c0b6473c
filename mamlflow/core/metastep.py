"""The meta-step contract: what every kernel computes for a shard of a meta-batch.

A meta-step maps ``(θ, φ, support, query, scale)`` to the shard's scaled meta-loss and its
gradients with respect to θ and the adapter's learnable tensors φ::

    loss  = scale * Σ_tasks L_query( adapt(θ, φ, support) )
    grads = ∂loss/∂θ, ∂loss/∂φ

``scale`` is 1 / the global meta-batch size, so summing shard results over processes gives the
mean over the whole meta-batch; a multi-step loss (MAML++) takes a vector of per-step weights
instead. The kernels (``mamlflow.kernels``) implement it in several strategies; an algorithm with
kernels of its own (Reptile) implements the same contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

from .adapter import Adapter
from .task import TaskObjective

__all__ = ["STRATEGIES", "Data", "MetaStep", "MetaStepFactory", "StepResult", "Strategy"]

Params = dict[str, Tensor]
Data = Mapping[str, Tensor]
Strategy = Literal["loop", "batched", "compiled", "compiled-loop", "compiled-split", "cudagraphs"]
"""How a meta-step is computed; ``loop`` is the per-task reference every other one matches."""
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


@dataclass(frozen=True)
class StepResult:
    """Scaled loss of the shard (detached) and its gradients w.r.t. θ and φ."""

    loss: Tensor
    grads: Params
    learnable_grads: Params


MetaStep = Callable[[Params, Params, Data, Data, "Tensor | float"], StepResult]
"""``(θ, φ, support, query, scale) -> StepResult``; ``scale`` is a vector for a multi-step loss."""


class MetaStepFactory(Protocol):
    """``mamlflow.make_meta_step``'s signature: how an algorithm supplies kernels of its own."""

    def __call__(
        self,
        objective: TaskObjective,
        adapter: Adapter,
        *,
        steps: int,
        first_order: bool,
        strategy: Strategy,
        autocast: torch.dtype | None = None,
        multi_step: bool = False,
    ) -> MetaStep: ...
