"""Outer optimizers: the meta-update, by name, with a schedule and clipping.

Every outer optimizer shares the base options: the meta learning rate, its schedule (a pure
function of the iteration, so a resumed run continues it exactly with no scheduler state) and
clipping of the meta-gradient by global norm or by value.

There are two kinds, and the engine runs both the same way (``prepare_step`` then ``step``):

* an ``OuterOptimizer`` applies the meta-gradient the trainer put in every leaf's ``.grad``
  (Adam, SGD, …);
* a ``PolicyOuterOptimizer`` (TRPO, PPO) re-evaluates the meta-objective of the step's collected
  trajectories through the inner adaptation: the engine hands it the batch's ``PolicyTerms``.
  It needs a rollout task family, which ``check_task_family`` says before a run starts.

Both return an ``OuterStepReport``, which the trainer logs as ``outer_<field>``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .config import OuterConfig
from .errors import ConfigError
from .rl import RolloutTaskFamily
from .task import TaskFamily

__all__ = [
    "LossAndKL",
    "OuterConfig",
    "OuterOptimizer",
    "OuterStepReport",
    "PolicyGradient",
    "PolicyOuterOptimizer",
    "PolicyTerms",
]


class LossAndKL(NamedTuple):
    """The meta-loss and the mean KL of the adapted policies, averaged over the meta-batch."""

    loss: float
    kl: float


class PolicyGradient(NamedTuple):
    """``LossAndKL`` and the meta-gradient of the (clipped) surrogate, one tensor per leaf."""

    loss: float
    kl: float
    grads: list[Tensor]


class PolicyTerms(ABC):
    """One collected meta-batch's meta-objective and KL as functions of the leaves θ (and φ).

    What a trust-region or clipped outer step re-evaluates, always at the leaves' current values
    (a line search moves them in place): both terms run through the inner adaptation from the
    support trajectories, and are averaged over the whole meta-batch (summed over processes).
    The engine implements it; an outer optimizer only calls it.
    """

    @abstractmethod
    def loss_kl(self) -> LossAndKL:
        """The meta-loss and mean KL at the leaves' current values (no gradient)."""

    @abstractmethod
    def hvp(self, vector: Sequence[Tensor]) -> list[Tensor]:
        """``∇²KL · v`` at the leaves' values when first called (the trust region's metric)."""

    @abstractmethod
    def grad(self, clip: float | None = None) -> PolicyGradient:
        """Meta-loss, mean KL and the meta-gradient of the surrogate (PPO-clipped if ``clip``)."""

    @abstractmethod
    def release(self) -> None:
        """Drop what ``hvp`` keeps; call once the step has moved the leaves."""


@dataclass(frozen=True)
class OuterStepReport:
    """What one outer step did; ``None`` fields are not logged (logged as ``outer_<field>``)."""

    kl: float | None = None
    """The mean KL of the adapted policies where the step ended."""
    loss: float | None = None
    """The meta-loss where the step ended."""
    line_search: float | None = None
    """The backtracking tries the step took (0: rejected, the leaves left as they were)."""

    def as_dict(self) -> dict[str, float]:
        """The fields that are set, by name, in this order: kl, loss, line_search."""
        fields = {"kl": self.kl, "loss": self.loss, "line_search": self.line_search}
        return {k: v for k, v in fields.items() if v is not None}


class OuterOptimizer(ABC):
    """Builds the ``torch.optim.Optimizer`` that applies meta-gradients to θ, and steps it.

    Subclasses set ``name`` and ``Config`` and implement ``build``; the trainer then calls
    ``prepare_step`` and ``step`` once per iteration, after setting every leaf's ``.grad``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[OuterConfig]] = OuterConfig
    description: ClassVar[str] = ""

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

    def check_task_family(self, family: TaskFamily) -> str | None:
        """Why this optimizer cannot train ``family``, as one line naming the fix; else None.

        Called before a run starts (the trainer raises it as a ``ConfigError`` on
        ``outer.name``). Every family, by default.
        """
        return None

    def step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms | None) -> OuterStepReport:
        """Apply the meta-gradient in the leaves' ``.grad``: ``optimizer.step()``.

        ``terms`` is the step's ``PolicyTerms`` for a rollout task family, else None; a
        gradient optimizer does not need it.
        """
        optimizer.step()
        return OuterStepReport()


class PolicyOuterOptimizer(OuterOptimizer):
    """An outer step that re-evaluates a policy's meta-objective (TRPO, PPO).

    Subclasses implement ``build`` and ``policy_step``; they train rollout task families only.
    """

    def check_task_family(self, family: TaskFamily) -> str | None:
        if isinstance(family, RolloutTaskFamily):
            return None
        return (
            f"{self.name} re-evaluates a policy's meta-objective and needs a rollout task "
            f"family (metric return), not {family.name!r}; use adam"
        )

    def step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms | None) -> OuterStepReport:
        if terms is None:  # check_task_family refuses such a run before it starts
            raise ConfigError(
                [f"outer.name: {self.name} needs a rollout task family's PolicyTerms; use adam"]
            )
        return self.policy_step(optimizer, terms)

    @abstractmethod
    def policy_step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms) -> OuterStepReport:
        """One outer step on the meta-batch ``terms`` describes, moving the leaves in place.

        The leaves' ``.grad`` holds the meta-gradient at their current values (as for any
        outer optimizer); ``optimizer`` is what ``build`` returned.
        """
