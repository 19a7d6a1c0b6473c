"""A meta-batch's policy meta-loss and KL through the inner step, batched and as a reference.

Trust-region (TRPO) and clipped (PPO) outer steps evaluate more than the meta-gradient the MAML
kernels return: the meta-loss again at trial parameters, and the KL between the collecting and
the new adapted policies, whose Hessian-vector products set the step. Both are sums over tasks
of ``outer(adapt(θ, support), query)``; ``batched`` vmaps that over tasks with ``torch.func``,
``loop`` is the plain per-task ``torch.autograd`` twin it is tested against. Either result is
differentiable by ``torch.autograd`` (twice, for Hessian-vector products).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.func import vmap

from ..core import Adapter, TaskObjective, apply_updates
from ._maml import _inner_loop

__all__ = ["PolicyTermsFn", "make_policy_terms"]

Params = dict[str, Tensor]
Data = Mapping[str, Tensor]
PolicyTermsFn = Callable[[Params, Params, Data, Data], tuple[Tensor, Tensor]]
"""``(θ, φ, support, query) -> (Σ_tasks meta-loss, Σ_tasks KL)``."""


def make_policy_terms(
    objective: TaskObjective,
    kl: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    first_order: bool,
    inner_objective: TaskObjective | None = None,
    strategy: Literal["batched", "loop"] = "batched",
) -> PolicyTermsFn:
    """Sums over tasks of ``objective`` and ``kl`` on the query data after adaptation.

    The inner loop adapts on ``inner_objective`` (default: ``objective``) of the support data.
    """
    inner = objective if inner_objective is None else inner_objective
    if strategy == "loop":
        return _loop_terms(objective, kl, inner, adapter, steps, first_order)
    adapt = _inner_loop(inner, adapter, steps, first_order)

    def task(params: Params, learnables: Params, support: Data, query: Data):
        adapted = adapt(params, learnables, support)
        return objective(adapted, query), kl(adapted, query)

    batched = vmap(task, in_dims=(None, None, 0, 0))

    def terms(params: Params, learnables: Params, support: Data, query: Data):
        losses, kls = batched(params, learnables, support, query)
        return losses.sum(), kls.sum()

    return terms


def _loop_terms(
    objective: TaskObjective,
    kl: TaskObjective,
    inner: TaskObjective,
    adapter: Adapter,
    steps: int,
    first_order: bool,
) -> PolicyTermsFn:
    """The reference: one task at a time, inner gradients by ``torch.autograd.grad``."""

    def terms(params: Params, learnables: Params, support: Data, query: Data):
        tasks = next(iter(support.values())).shape[0]
        total_loss: Tensor | float = 0.0
        total_kl: Tensor | float = 0.0
        for i in range(tasks):
            task_support = {k: v[i] for k, v in support.items()}
            task_query = {k: v[i] for k, v in query.items()}
            fast, state = params, adapter.init(params, learnables)
            keys = adapter.adapted(fast)
            for s in range(steps):
                adapted = {k: v for k, v in fast.items() if keys is None or k in keys}
                if torch.is_grad_enabled() and any(v.requires_grad for v in adapted.values()):
                    g = torch.autograd.grad(
                        inner(fast, task_support),
                        list(adapted.values()),
                        create_graph=not first_order,
                        allow_unused=True,
                    )
                else:  # values only (a line search): differentiate a detached copy
                    with torch.enable_grad():
                        probe = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
                        g = torch.autograd.grad(
                            inner(probe, task_support),
                            [probe[k] for k in adapted],
                            allow_unused=True,
                        )
                grads = {
                    k: torch.zeros_like(v) if gi is None else gi
                    for (k, v), gi in zip(adapted.items(), g, strict=True)
                }
                if first_order:
                    grads = {k: v.detach() for k, v in grads.items()}
                updates, state = adapter.update(grads, state, fast, learnables, s)
                fast = apply_updates(fast, updates)
            total_loss = total_loss + objective(fast, task_query)
            total_kl = total_kl + kl(fast, task_query)
        return torch.as_tensor(total_loss), torch.as_tensor(total_kl)

    return terms
