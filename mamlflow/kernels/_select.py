"""Choosing a meta-step strategy, with a probe that really runs the fast path.

``auto`` prefers the compiled kernel for long runs, where its cold compile (tens of seconds on a
2-core CPU) pays for itself many times over, and the eager batched kernel for short ones. Either
way the chosen path must reproduce the batched kernel on the run's first real batch, or the
selection falls back and says why. Per-device timing lands with ``metaflow bench``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from ..core.adapter import Adapter
from ..core.task import TaskObjective
from ._maml import MetaStep, Strategy, make_meta_step

__all__ = ["AUTO_COMPILE_MIN_ITERATIONS", "Selection", "select_meta_step"]

log = logging.getLogger("mamlflow.kernels")

AUTO_COMPILE_MIN_ITERATIONS = 2_000
"""Below this many remaining iterations ``auto`` skips torch.compile: it would not pay back."""


@dataclass(frozen=True)
class Selection:
    strategy: Strategy
    step: MetaStep
    reason: str


def _close(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    for k, x in a.items():
        y = b[k]
        tol = 1e-9 if x.dtype == torch.float64 else 1e-4
        if not torch.allclose(x, y, rtol=tol, atol=tol * max(1.0, y.abs().max().item())):
            return False
    return True


def select_meta_step(
    requested: str,
    objective: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    first_order: bool,
    remaining_iterations: int,
    probe: tuple[dict[str, Tensor], dict[str, Tensor], Mapping[str, Tensor], Mapping[str, Tensor]],
) -> Selection:
    """Resolve ``kernel.strategy`` to a working meta-step.

    ``probe`` is ``(params, learnables, support, query)`` of the run's first shard: an explicit
    strategy is only built; ``auto`` runs its candidate on the probe and checks it against the
    batched kernel.
    """

    def build(strategy: Strategy) -> MetaStep:
        return make_meta_step(
            objective, adapter, steps=steps, first_order=first_order, strategy=strategy
        )

    if requested in get_args(Strategy):
        strategy: Strategy = requested  # type: ignore[assignment]  # narrowed just above
        return Selection(strategy, build(strategy), "requested")
    if requested != "auto":
        raise ValueError(
            f"unknown kernel strategy {requested!r}; use auto, batched, compiled or loop"
        )
    batched = build("batched")
    if remaining_iterations < AUTO_COMPILE_MIN_ITERATIONS:
        return Selection(
            "batched", batched, f"{remaining_iterations} iterations: too few to repay a compile"
        )
    compiled = build("compiled")
    try:
        fast = compiled(*probe, 1.0)
    except Exception as exc:  # any compiler failure means: run eagerly instead
        first_line = (str(exc).splitlines() or [""])[0]
        reason = f"torch.compile failed ({type(exc).__name__}: {first_line}); using batched"
        log.warning(reason)
        return Selection("batched", batched, reason)
    slow = batched(*probe, 1.0)
    if not (_close(fast.grads, slow.grads) and _close(fast.learnable_grads, slow.learnable_grads)):
        reason = "compiled meta-gradient disagrees with the batched kernel; using batched"
        log.warning(reason)
        return Selection("batched", batched, reason)
    return Selection("compiled", compiled, "compiled; matches batched on the first batch")
