"""Outer steps for policies: TRPO (the paper's meta-optimizer for RL) and a clipped PPO option.

Both re-evaluate the meta-objective of the step's meta-batch through the inner adaptation, so the
trainer hands them a ``PolicyTerms`` (``optimizer.step(terms)``); they need a rollout task
family. TRPO (Schulman et al. 2015, as in the MAML paper and rllab): the natural-gradient
direction by conjugate gradient on Hessian-vector products of the mean KL between the collecting
and the new adapted policies, scaled to the KL bound, then a backtracking line search that accepts
the first step that lowers the meta-loss and keeps the KL within the bound. PPO: a few epochs of
Adam on the clipped surrogate, first order or not as the run is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mamlflow.core.hookspecs import hookimpl
from mamlflow.core.optim import OuterConfig, OuterOptimizer
from mamlflow.core.rl import PolicyTerms

__all__ = ["PPO", "TRPO", "PPOConfig", "TRPOConfig", "TRPOOptimizer", "conjugate_gradient"]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def conjugate_gradient(
    matvec: Callable[[list[Tensor]], list[Tensor]],
    b: Sequence[Tensor],
    iterations: int,
    tolerance: float = 1e-10,
) -> list[Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = _dot(r, r)
    for _ in range(iterations):
        if float(rr) < tolerance:
            break
        ap = matvec(p)
        alpha = rr / _dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * api for ri, api in zip(r, ap, strict=True)]
        rr_new = _dot(r, r)
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
        rr = rr_new
    return x


class TRPOConfig(OuterConfig):
    lr: float = Field(
        1.0, gt=0, le=1, description="fraction of the trust-region step the line search starts at"
    )
    max_kl: float = Field(0.01, gt=0, description="bound on the mean KL of the adapted policies")
    cg_iterations: int = Field(10, ge=1, description="conjugate-gradient iterations")
    cg_damping: float = Field(1e-5, ge=0, description="added to the KL Hessian's diagonal")
    line_search_steps: int = Field(15, ge=1, description="backtracking tries before giving up")
    backtrack_ratio: float = Field(0.8, gt=0, lt=1, description="step shrink per failed try")


class TRPOOptimizer(torch.optim.Optimizer):
    """TRPO over the parameters' ``.grad`` (the meta-gradient), given the step's ``PolicyTerms``.

    ``last`` holds what the latest step did: the KL and loss it ended at, and how many line
    search tries it took (0: the step was rejected and the parameters left unchanged).
    """

    def __init__(self, params: Iterable[Tensor], config: TRPOConfig) -> None:
        super().__init__(params, {"lr": config.lr})
        self.config = config
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def step(self, terms: PolicyTerms | None = None) -> None:  # type: ignore[override]
        if not isinstance(terms, PolicyTerms):
            raise TypeError("TRPO's step needs the meta-batch's PolicyTerms: step(terms)")
        c = self.config
        leaves = [p for group in self.param_groups for p in group["params"]]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in leaves]
        damping = c.cg_damping

        def fisher(v: list[Tensor]) -> list[Tensor]:
            with torch.enable_grad():
                hv = terms.hvp(v)
            return [h + damping * vi for h, vi in zip(hv, v, strict=True)]

        try:
            direction = conjugate_gradient(fisher, grads, c.cg_iterations)
            curvature = float(_dot(direction, fisher(direction)))
            old_loss, _ = terms.loss_kl()
            self.last = {"kl": 0.0, "loss": old_loss, "line_search": 0.0}
            if not math.isfinite(curvature) or curvature <= 0:
                return  # a flat or broken trust region: leave θ as it is this step
            scale = math.sqrt(2 * c.max_kl / curvature)
            start = [p.detach().clone() for p in leaves]
            fraction = self.param_groups[0]["lr"]
            for tries in range(1, c.line_search_steps + 1):
                for p, p0, d in zip(leaves, start, direction, strict=True):
                    p.copy_(p0 - fraction * scale * d)
                loss, kl = terms.loss_kl()
                if math.isfinite(loss) and loss < old_loss and kl <= c.max_kl:
                    self.last = {"kl": kl, "loss": loss, "line_search": float(tries)}
                    return
                fraction *= c.backtrack_ratio
            for p, p0 in zip(leaves, start, strict=True):
                p.copy_(p0)
        finally:
            terms.release()


class TRPO(OuterOptimizer):
    name: ClassVar[str] = "trpo"
    Config: ClassVar[type[OuterConfig]] = TRPOConfig
    description: ClassVar[str] = "trust-region policy optimisation (the paper's RL outer loop)"
    uses_policy_terms: ClassVar[bool] = True
    config: TRPOConfig

    def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return TRPOOptimizer(params, self.config)


class PPOConfig(OuterConfig):
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate for every epoch")
    epochs: int = Field(5, ge=1, description="Adam steps on the clipped surrogate per meta-batch")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO's ratio clip ε")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's β1, β2")


class PPOOptimizer(torch.optim.Adam):
    """Adam steps on PPO's clipped surrogate, recomputing the adaptation at every epoch."""

    def __init__(self, params: Iterable[Tensor], config: PPOConfig) -> None:
        super().__init__(params, lr=config.lr, betas=config.betas, foreach=True)
        self.config = config
        self.last: dict[str, float] = {}

    def step(self, terms: Any = None) -> None:  # type: ignore[override]
        if not isinstance(terms, PolicyTerms):
            raise TypeError("PPO's step needs the meta-batch's PolicyTerms: step(terms)")
        leaves = [p for group in self.param_groups for p in group["params"]]
        try:
            for epoch in range(self.config.epochs):
                if epoch:  # the first epoch's gradient is the trainer's (ratio 1: no clipping)
                    loss, kl, grads = terms.grad(self.config.clip)
                    for p, g in zip(leaves, grads, strict=True):
                        p.grad = g
                    self.last = {"kl": kl, "loss": loss}
                super().step()
        finally:
            terms.release()


class PPO(OuterOptimizer):
    name: ClassVar[str] = "ppo"
    Config: ClassVar[type[OuterConfig]] = PPOConfig
    description: ClassVar[str] = "epochs of Adam on PPO's clipped surrogate (a first-order option)"
    uses_policy_terms: ClassVar[bool] = True
    config: PPOConfig

    def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return PPOOptimizer(params, self.config)


@hookimpl
def register_optimizers(register: Callable[[type[OuterOptimizer]], None]) -> None:
    register(TRPO)
    register(PPO)
