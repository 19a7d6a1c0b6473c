"""Outer steps for policies: TRPO (the paper's meta-optimizer for RL) and a clipped PPO option.

Both re-evaluate the meta-objective of the step's meta-batch through the inner adaptation: they
are ``PolicyOuterOptimizer``s, to which the trainer hands the batch's ``PolicyTerms``; they need
a rollout task family. TRPO (Schulman et al. 2015, as in the MAML paper and rllab): the natural
gradient direction by conjugate gradient on Hessian-vector products of the mean KL between the
collecting and the new adapted policies, scaled to the KL bound, then a backtracking line search
that accepts the first step that lowers the meta-loss and keeps the KL within the bound. PPO: a
few epochs of Adam on the clipped surrogate, first order or not as the run is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mamlflow.core import (
    OuterConfig,
    OuterOptimizer,
    OuterStepReport,
    PolicyOuterOptimizer,
    PolicyTerms,
    hookimpl,
)
from mamlflow.plugins.optimizers import Beta

__all__ = [
    "PPO",
    "TRPO",
    "PPOConfig",
    "TRPOConfig",
    "conjugate_gradient",
    "conjugate_gradient_and_product",
]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def conjugate_gradient(
    matvec: Callable[[list[Tensor]], list[Tensor]],
    b: Sequence[Tensor],
    iterations: int,
    tolerance: float = 1e-10,
) -> list[Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``."""
    return conjugate_gradient_and_product(matvec, b, iterations, tolerance)[0]


def conjugate_gradient_and_product(
    matvec: Callable[[list[Tensor]], list[Tensor]],
    b: Sequence[Tensor],
    iterations: int,
    tolerance: float = 1e-10,
) -> tuple[list[Tensor], list[Tensor]]:
    """``conjugate_gradient``'s ``x`` and ``A x``, without another product.

    ``x = Σ αᵢ pᵢ``, so ``A x = Σ αᵢ (A pᵢ)`` from the products the iterations made anyway:
    linear in them, whatever the search directions' loss of conjugacy, so it equals
    ``matvec(x)`` up to the rounding of the sum. TRPO needs ``xᵀ A x`` for its step size; this
    saves one of its eleven Hessian-vector products.
    """
    x = [torch.zeros_like(t) for t in b]
    ax = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = _dot(r, r)
    for _ in range(iterations):
        if float(rr) < tolerance:
            break
        ap = matvec(p)
        alpha = rr / _dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        ax = [axi + alpha * api for axi, api in zip(ax, ap, strict=True)]
        r = [ri - alpha * api for ri, api in zip(r, ap, strict=True)]
        rr_new = _dot(r, r)
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
        rr = rr_new
    return x, ax


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
    """The leaves TRPO moves, as a ``torch.optim.Optimizer``: param groups and a state_dict.

    TRPO keeps no state between steps; its step is ``TRPO.policy_step``, which needs the step's
    ``PolicyTerms``, so this optimizer's own ``step`` only says so.
    """

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        super().__init__(params, {"lr": lr})

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        raise TypeError("TRPO steps through TRPO.policy_step(optimizer, terms), not step()")


class TRPO(PolicyOuterOptimizer):
    """TRPO over the meta-gradient, given the step's ``PolicyTerms``.

    The optimizer's learning rate is the fraction of the trust-region step the line search
    starts at. The report says where the step ended: its KL and loss, and how many line-search
    tries it took (0: rejected, the parameters left unchanged).
    """

    name: ClassVar[str] = "trpo"
    Config: ClassVar[type[OuterConfig]] = TRPOConfig
    description: ClassVar[str] = "trust-region policy optimisation (the paper's RL outer loop)"
    config: TRPOConfig

    def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return TRPOOptimizer(params, self.config.lr)

    @torch.no_grad()
    def policy_step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms) -> OuterStepReport:
        leaves = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in leaves]
        damping = self.config.cg_damping

        def fisher(v: list[Tensor]) -> list[Tensor]:
            with torch.enable_grad():
                hv = terms.hvp(v)
            return [h + damping * vi for h, vi in zip(hv, v, strict=True)]

        try:
            direction, product = conjugate_gradient_and_product(
                fisher, grads, self.config.cg_iterations
            )
            curvature = float(_dot(direction, product))
            old_loss = terms.loss_kl().loss
            if not math.isfinite(curvature) or curvature <= 0:
                # A flat or broken trust region: leave θ as it is this step.
                return OuterStepReport(kl=0.0, loss=old_loss, line_search=0.0)
            scale = math.sqrt(2 * self.config.max_kl / curvature)
            fraction = optimizer.param_groups[0]["lr"]
            return self._line_search(leaves, direction, scale, fraction, old_loss, terms)
        finally:
            terms.release()

    def _line_search(
        self,
        leaves: list[Tensor],
        direction: list[Tensor],
        scale: float,
        fraction: float,
        old_loss: float,
        terms: PolicyTerms,
    ) -> OuterStepReport:
        """Try ``fraction`` of the trust-region step ``scale · direction``, shrinking it until
        the loss falls within the KL bound; if no try does, restore θ."""
        c = self.config
        start = [p.detach().clone() for p in leaves]
        for tries in range(1, c.line_search_steps + 1):
            for p, p0, d in zip(leaves, start, direction, strict=True):
                p.copy_(p0 - fraction * scale * d)
            loss, kl = terms.loss_kl()
            if math.isfinite(loss) and loss < old_loss and kl <= c.max_kl:
                return OuterStepReport(kl=kl, loss=loss, line_search=float(tries))
            fraction *= c.backtrack_ratio
        for p, p0 in zip(leaves, start, strict=True):
            p.copy_(p0)
        return OuterStepReport(kl=0.0, loss=old_loss, line_search=0.0)


class PPOConfig(OuterConfig):
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate for every epoch")
    epochs: int = Field(5, ge=1, description="Adam steps on the clipped surrogate per meta-batch")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO's ratio clip ε")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam's β1, β2, each in [0, 1)")


class PPO(PolicyOuterOptimizer):
    """Adam steps on PPO's clipped surrogate, recomputing the adaptation at every epoch."""

    name: ClassVar[str] = "ppo"
    Config: ClassVar[type[OuterConfig]] = PPOConfig
    description: ClassVar[str] = "epochs of Adam on PPO's clipped surrogate (a first-order option)"
    config: PPOConfig

    def build(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.config.lr, betas=self.config.betas, foreach=True)

    def policy_step(self, optimizer: torch.optim.Optimizer, terms: PolicyTerms) -> OuterStepReport:
        leaves = [p for group in optimizer.param_groups for p in group["params"]]
        report = OuterStepReport()
        try:
            for epoch in range(self.config.epochs):
                if epoch:  # the first epoch's gradient is the trainer's (ratio 1: no clipping)
                    loss, kl, grads = terms.grad(self.config.clip)
                    for p, g in zip(leaves, grads, strict=True):
                        p.grad = g
                    report = OuterStepReport(kl=kl, loss=loss)
                optimizer.step()
        finally:
            terms.release()
        return report


@hookimpl
def register_optimizers(register: Callable[[type[OuterOptimizer]], None]) -> None:
    register(TRPO)
    register(PPO)
