"""Outer optimizers: factories over ``torch.optim`` chosen by name, with a schedule and clipping.

Every outer optimizer shares the base options: the meta learning rate, its schedule (a pure
function of the iteration, so a resumed run continues it exactly with no scheduler state) and
clipping of the meta-gradient by global norm or by value.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field

from .plugin_config import PluginConfig

__all__ = ["OuterConfig", "OuterOptimizer"]


class OuterConfig(PluginConfig):
    """Options every outer optimizer has; a plugin's own ``Config`` subclasses this."""

    lr: float = Field(1e-3, gt=0, description="meta learning rate (β in the paper)")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant",
        description="constant: lr throughout; cosine: from lr down to min_lr over "
        "train.iterations (cosine annealing, as MAML++ does); linear: from lr down to min_lr "
        "in a straight line (Reptile's annealed outer step size). A --resume that raises "
        "train.iterations stretches the rest of the curve",
    )
    min_lr: float = Field(0.0, ge=0, description="the final learning rate of a decaying schedule")
    clip_norm: float | None = Field(
        None, gt=0, description="scale the meta-gradient down to this global L2 norm if above"
    )
    clip_value: float | None = Field(
        None, gt=0, description="clamp every meta-gradient entry to [-clip_value, clip_value]"
    )


class OuterOptimizer(ABC):
    """Builds the ``torch.optim.Optimizer`` that applies meta-gradients to θ."""

    name: ClassVar[str]
    Config: ClassVar[type[OuterConfig]] = OuterConfig
    description: ClassVar[str] = ""
    uses_policy_terms: ClassVar[bool] = False
    """True for outer steps that re-evaluate the meta-objective (TRPO, PPO): the trainer then
    calls ``optimizer.step(terms)`` with a ``mamlflow.core.rl.PolicyTerms`` of the step's
    meta-batch, which only rollout task families provide."""

    def __init__(self, config: OuterConfig) -> None:
        self.config = config

    @abstractmethod
    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        """An optimizer over ``params`` (leaf tensors whose ``.grad`` the trainer sets)."""

    def lr_at(self, iteration: int, total: int) -> float:
        """The learning rate of the step that starts at ``iteration`` (0-based) of ``total``."""
        c = self.config
        if c.schedule == "constant" or total <= 0:
            return c.lr
        progress = min(iteration / total, 1.0)
        if c.schedule == "linear":
            return c.lr + (c.min_lr - c.lr) * progress
        return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + math.cos(math.pi * progress))

    def prepare_step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[torch.Tensor],
        iteration: int,
        total: int,
    ) -> None:
        """Before ``optimizer.step()``: set this iteration's learning rate, clip the gradients."""
        lr = self.lr_at(iteration, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        grads = [p for p in params if p.grad is not None]
        if self.config.clip_value is not None:
            torch.nn.utils.clip_grad_value_(grads, self.config.clip_value)
        if self.config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(grads, self.config.clip_norm, foreach=True)
