"""The inner loop, written once: every fast path adapts through ``adaptation``.

``adaptation`` is one task's inner loop as a pure ``torch.func`` function: it nests under
``vmap`` and ``grad`` and compiles. The MAML kernels run it with the same support data at every
step and differentiate through it; evaluation runs it without a meta-gradient and scores every
step; reinforcement learning's evaluation hands each step trajectories of its own. The reference
twins (the per-task ``torch.autograd`` loops of ``_maml``, ``_policy`` and ``_reptile``) keep
loops of their own on purpose: they are the readable oracle this one is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor
from torch.func import grad

from ..core import Adapter, Data, TaskObjective, apply_updates

__all__ = ["Adaptation", "adaptation", "inner_grad", "stop_gradient"]

Params = dict[str, Tensor]
Adaptation = Callable[[Params, Params, Sequence[Data]], list[Params]]
"""``(θ, φ, [data of step 0, data of step 1, …]) -> [θ after step 1, θ after step 2, …]``."""


def stop_gradient(tree: Params) -> Params:
    return {k: v.detach() for k, v in tree.items()}


def inner_grad(objective: TaskObjective, adapter: Adapter) -> Callable[[Params, Data], Params]:
    """``∇ L_support`` with respect to the parameters the adapter adapts (all, by default)."""
    full = grad(objective)

    def inner_grad(params: Params, data: Data) -> Params:
        keys = adapter.adapted(params)
        if keys is None:
            return full(params, data)
        fixed = {k: v for k, v in params.items() if k not in keys}

        def partial(sub: Params) -> Tensor:
            return objective({**fixed, **sub}, data)

        return grad(partial)({k: v for k, v in params.items() if k in keys})

    return inner_grad


def adaptation(
    objective: TaskObjective,
    adapter: Adapter,
    *,
    first_order: bool,
    later_scale: float = 1.0,
) -> Adaptation:
    """One task's inner loop: step ``k`` descends ``objective`` on ``datas[k]``.

    ``first_order`` treats each inner gradient as a constant of θ (FOMAML; and wherever only the
    adapted values are needed). Updates after the first step are multiplied by ``later_scale``
    (``eval.later_steps_lr_scale``). The loop is unrolled: ``len(datas)`` is a Python int.
    """
    gradient = inner_grad(objective, adapter)

    def adapt(params: Params, learnables: Params, datas: Sequence[Data]) -> list[Params]:
        state = adapter.init(params, learnables)
        path = []
        for step, data in enumerate(datas):
            g = gradient(params, data)
            if first_order:
                g = stop_gradient(g)
            updates, state = adapter.update(g, state, params, learnables, step)
            if step and later_scale != 1.0:
                updates = {k: u * later_scale for k, u in updates.items()}
            params = apply_updates(params, updates)
            path.append(params)
        return path

    return adapt
