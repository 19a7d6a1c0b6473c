"""Reptile's meta-step (Nichol, Achiam and Schulman 2018, "On first-order meta-learning").

Reptile adapts each task with a few plain optimiser steps and moves θ toward the result; there
is no query-loss gradient. For a shard of the meta-batch the step returns the pseudo-gradient::

    grads = scale * Σ_tasks (θ − θ'_task)          θ'_task: ``steps`` inner updates from θ

so the outer optimiser's SGD at learning rate ε is the paper's batched update
θ ← θ + ε · mean(θ' − θ), and Adam on the pseudo-gradient is its usual practical variant. The
loss it reports is ``scale * Σ L_query(θ'_task)``, a monitor only. Reptile needs no split of a
task into train and test examples: with ``inner_data="union"`` (the default) the inner loop
trains on support and query together, as the paper trains on all of a task's examples.

Strategies (``REPTILE_STRATEGIES``): ``loop`` (the reference: eager autograd one task at a
time), ``batched`` (every task's inner loop in one ``vmap``-ed ``torch.func`` graph) and
``compiled`` (``batched`` through ``torch.compile``). Nothing is differentiated through the inner
loop, so the per-task compiled kernels of MAML have nothing to win here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.func import vmap

from ..core import Adapter, Data, MetaStep, StepResult, Strategy, TaskObjective, apply_updates
from ._maml import Params, ScaleTensors, _autocast_step, _inner_loop, _own_code

__all__ = ["REPTILE_STRATEGIES", "InnerData", "make_reptile_step"]

REPTILE_STRATEGIES: tuple[Strategy, ...] = ("loop", "batched", "compiled")
InnerData = Literal["union", "support"]


def _training_data(support: Data, query: Data, inner_data: InnerData, dim: int) -> Data:
    """What the inner loop trains on: the support set, or support and query concatenated."""
    if inner_data == "support":
        return support
    if support.keys() != query.keys():
        raise ValueError(
            f"algorithm.inner_data=union needs the same keys in support and query, got "
            f"{sorted(support)} and {sorted(query)}; use algorithm.inner_data=support"
        )
    return {k: torch.cat([support[k], query[k]], dim=dim) for k in support}


def _loop(objective: TaskObjective, adapter: Adapter, steps: int, inner_data: InnerData):
    """The reference: one task at a time, each inner step an eager ``torch.autograd.grad``."""

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor
    ) -> tuple[tuple[Params, Params], Tensor]:
        theta = {k: v.detach() for k, v in params.items()}
        phi = {k: v.detach() for k, v in learnables.items()}
        num_tasks = next(iter(support.values())).shape[0]
        delta = {k: torch.zeros_like(v) for k, v in theta.items()}
        loss = torch.zeros((), dtype=scale.dtype, device=scale.device)
        for i in range(num_tasks):
            data = _training_data(
                {k: v[i] for k, v in support.items()},
                {k: v[i] for k, v in query.items()},
                inner_data,
                dim=0,
            )
            fast, state = theta, adapter.init(theta, phi)
            keys = adapter.adapted(fast)
            for s in range(steps):
                leaves = {
                    k: v.detach().requires_grad_(True)
                    for k, v in fast.items()
                    if keys is None or k in keys
                }
                with torch.enable_grad():
                    inner_loss = objective({**fast, **leaves}, data)
                    g = torch.autograd.grad(inner_loss, list(leaves.values()), allow_unused=True)
                grads = {
                    k: torch.zeros_like(v) if gi is None else gi
                    for (k, v), gi in zip(leaves.items(), g, strict=True)
                }
                updates, state = adapter.update(grads, state, fast, phi, s)
                fast = {k: v.detach() for k, v in apply_updates(fast, updates).items()}
            for k in delta:
                delta[k] += theta[k] - fast[k]
            with torch.no_grad():
                loss = loss + objective(fast, {k: v[i] for k, v in query.items()})
        grads = {k: v * scale for k, v in delta.items()}
        return (grads, {k: torch.zeros_like(v) for k, v in phi.items()}), loss * scale

    return step


def _batched(objective: TaskObjective, adapter: Adapter, steps: int, inner_data: InnerData):
    """Every task's inner loop at once: ``vmap`` over ``torch.func`` inner steps."""
    adapt = vmap(_inner_loop(objective, adapter, steps, True), in_dims=(None, None, 0))
    score = vmap(objective, in_dims=(0, 0))

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor
    ) -> tuple[tuple[Params, Params], Tensor]:
        theta = {k: v.detach() for k, v in params.items()}
        phi = {k: v.detach() for k, v in learnables.items()}
        adapted = adapt(theta, phi, _training_data(support, query, inner_data, dim=1))
        # Σ(θ − θ'_i) rather than B·θ − Σθ'_i: the differences are small, their sum exact-er.
        grads = {k: (theta[k].unsqueeze(0) - v).sum(0) * scale for k, v in adapted.items()}
        loss = score(adapted, query).sum() * scale
        return (grads, {k: torch.zeros_like(v) for k, v in phi.items()}), loss

    return step


def make_reptile_step(
    objective: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    strategy: Strategy,
    autocast: torch.dtype | None = None,
    inner_data: InnerData = "union",
) -> MetaStep:
    """Reptile's meta-step for one (objective, inner rule, steps) and a strategy."""
    if strategy not in REPTILE_STRATEGIES:
        raise ValueError(
            f"Reptile has no {strategy!r} kernel; use one of {', '.join(REPTILE_STRATEGIES)}"
        )
    if autocast is not None:
        inner = make_reptile_step(
            objective, adapter, steps=steps, strategy=strategy, inner_data=inner_data
        )
        return _autocast_step(inner, autocast)
    fn: Callable[..., tuple[tuple[Params, Params], Tensor]]
    if strategy == "loop":
        fn = _loop(objective, adapter, steps, inner_data)
    else:
        fn = _batched(objective, adapter, steps, inner_data)
        if strategy == "compiled":
            fn = torch.compile(_own_code(fn), dynamic=False)
    as_tensor = ScaleTensors()

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        if isinstance(scale, Tensor) and scale.dim() != 0:
            raise ValueError("Reptile has no multi-step loss: scale must be a number")
        ref = next(iter(params.values()))
        with torch.no_grad():  # torch.func.grad inside still differentiates the inner loss
            (g_params, g_learnables), loss = fn(
                params, learnables, support, query, as_tensor(scale, ref)
            )
        return StepResult(loss.detach(), g_params, g_learnables)

    return step
