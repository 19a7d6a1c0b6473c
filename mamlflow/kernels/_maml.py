"""The MAML meta-step: a batched ``torch.func`` kernel, its compiled twin, and the reference loop.

Every strategy computes the same thing for a shard of a meta-batch::

    loss = scale * Σ_tasks  L_query( adapt(θ, support) )
    grads = ∂loss/∂θ, ∂loss/∂φ           (φ: the adapter's learnable tensors)

``scale`` is 1 / global meta-batch size, so summing shard results over processes gives the mean
over the whole meta-batch. With ``multi_step=True`` (MAML++'s multi-step loss) the query loss is
taken after every inner step and ``scale`` is a vector of one weight per step (already divided by
the meta-batch size)::

    loss = Σ_tasks Σ_s  scale[s] * L_query( θ_s ),   θ_s: the parameters after inner step s+1

The reference loop uses plain ``torch.autograd`` one task at a time and is the oracle every
fast path is tested against.

The strategies (``STRATEGIES``):

* ``loop``: the reference, eager autograd, one task at a time.
* ``batched``: every task through one ``vmap``-ed ``torch.func`` graph; wins where per-op
  overhead dominates (small MLPs on a CPU, anything on a GPU).
* ``compiled``: ``batched`` through ``torch.compile``.
* ``compiled-loop``: one task's meta-gradient as a compiled graph, called once per task, with
  4-D weights in channels-last layout. On a CPU, vmapped convolutions with per-task weights become
  grouped convolutions that oneDNN runs slower than separate ones, so for conv nets the fast path
  keeps the per-task structure and removes everything else: the elementwise work of batch norm and
  its double backward is fused by inductor and oneDNN gets the layout it is fastest in.
  Only one task's graph is alive at a time, so it also needs less memory than the loop.
* ``compiled-split``: the adaptation of all tasks at once (vmapped and compiled: in the first
  inner step every task's support pass runs through the shared θ, one large convolution), then
  each task's query loss as a compiled graph of its own with its adapted weights in channels-last
  layout, glued by autograd. The query pass, the large one, keeps the loop's separate
  convolutions; the small support passes lose their per-call overhead. Memory is the loop's:
  every task's query graph lives until the backward.
* ``cudagraphs``: ``compiled`` with ``mode="reduce-overhead"`` (CUDA graphs), CUDA only: a
  meta-step of a small model on a GPU is launch-bound, and a replayed graph launches nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..core import (
    STRATEGIES,
    Adapter,
    ConfigError,
    Data,
    MetaStep,
    StagedObjective,
    StepResult,
    Strategy,
    TaskObjective,
    apply_updates,
)
from ._inner import adaptation, stop_gradient

__all__ = [
    "STRATEGIES",
    "AdaptFn",
    "MetaStep",
    "StepResult",
    "Strategy",
    "exact_float32",
    "make_adapt",
    "make_adapt_curve",
    "make_meta_step",
]

Params = dict[str, Tensor]
AdaptFn = Callable[[Params, Params, Data], Params]


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """IEEE float32 on CUDA inside the block: no TF32 in cuDNN convolutions or cuBLAS matmuls.

    PyTorch lets cuDNN convolutions round to TF32 (10-bit mantissa) by default on Ampere and later
    GPUs. Two correct kernels that pick different convolution algorithms then differ by up to
    ~7e-2 of the largest conv-4 meta-gradient entry after a second-order step (measured on an
    H100), which would hide a real bug. Parity is therefore checked in IEEE float32; speed is
    measured, and training runs, with the user's settings. A no-op on other devices.
    """
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def _trajectory(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool
) -> Callable[[Params, Params, Data], tuple[Params, ...]]:
    """One task's adaptation: the parameters after each inner step (θ itself when steps is 0)."""
    adapt = adaptation(objective, adapter, first_order=first_order)

    def trajectory(params: Params, learnables: Params, support: Data) -> tuple[Params, ...]:
        return tuple(adapt(params, learnables, [support] * steps)) if steps else (params,)

    return trajectory


def _inner_loop(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool
) -> Callable[[Params, Params, Data], Params]:
    """One task's adaptation to its final parameters."""
    trajectory = _trajectory(objective, adapter, steps, first_order)

    def adapt(params: Params, learnables: Params, support: Data) -> Params:
        return trajectory(params, learnables, support)[-1]

    return adapt


def _task_loss(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool, multi_step: bool
) -> Callable[[Params, Params, Data, Data], Tensor]:
    """One task's query loss after adaptation: a scalar, or a vector of one per inner step.

    A ``StagedObjective`` computes its features once, before the inner loop, which then runs on
    its head alone: valid only if the adapter adapts nothing the features read, which is checked.
    """
    if isinstance(objective, StagedObjective):
        staged = objective
        on_head = _task_loss(staged.head, adapter, steps, first_order, multi_step)

        def staged_loss(params: Params, learnables: Params, support: Data, query: Data) -> Tensor:
            keys = adapter.adapted(params)
            if keys is None or not keys <= staged.head_params:
                raise ValueError(
                    "a StagedObjective's features are computed once per task, so the adapter "
                    f"may adapt only {sorted(staged.head_params)}, not {sorted(keys or params)}"
                )
            return on_head(
                params,
                learnables,
                staged.features(params, support),
                staged.features(params, query),
            )

        return staged_loss
    if multi_step:
        trajectory = _trajectory(objective, adapter, steps, first_order)

        def step_losses(params: Params, learnables: Params, support: Data, query: Data) -> Tensor:
            path = trajectory(params, learnables, support)
            return torch.stack([objective(p, query) for p in path])

        return step_losses
    adapt = _inner_loop(objective, adapter, steps, first_order)

    def task_loss(params: Params, learnables: Params, support: Data, query: Data) -> Tensor:
        return objective(adapt(params, learnables, support), query)

    return task_loss


def _weighted(losses: Tensor, scale: Tensor | float) -> Tensor:
    """``Σ scale ⊙ losses`` over the last axis (per-step weights) or ``losses * scale``."""
    if isinstance(scale, Tensor) and scale.dim() == 1:
        return (losses * scale).sum(-1)
    return losses * scale


def _batched_step(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool, multi_step: bool
) -> Callable[[Params, Params, Data, Data, Tensor], tuple[tuple[Params, Params], Tensor]]:
    batched = vmap(
        _task_loss(objective, adapter, steps, first_order, multi_step), in_dims=(None, None, 0, 0)
    )

    def meta_loss(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> Tensor:
        losses = batched(params, learnables, support, query)
        if multi_step:
            return _weighted(losses, scale).sum()
        return losses.sum() * scale

    return grad_and_value(meta_loss, argnums=(0, 1))


def _requiring_grad(tree: Params) -> Params:
    """Fresh autograd leaves with ``tree``'s values: what an eager meta-step differentiates."""
    return {k: v.detach().requires_grad_(True) for k, v in tree.items()}


def _autograd_result(total: Tensor, theta: Params, phi: Params) -> StepResult:
    """``total`` and its gradients w.r.t. the leaves θ, φ (zeros where it does not reach them)."""
    leaves = [*theta.values(), *phi.values()]
    if total.requires_grad:
        g = list(torch.autograd.grad(total, leaves, allow_unused=True))
    else:  # an empty shard: nothing depends on the leaves
        g = [None] * len(leaves)
    g = [
        torch.zeros_like(v) if gi is None else gi.contiguous()
        for v, gi in zip(leaves, g, strict=True)
    ]
    n = len(theta)
    return StepResult(
        total.detach(), dict(zip(theta, g[:n], strict=True)), dict(zip(phi, g[n:], strict=True))
    )


def _loop_step(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool, multi_step: bool
) -> MetaStep:
    """The reference: one task at a time, ``torch.autograd.grad`` with ``create_graph``."""

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        theta, phi = _requiring_grad(params), _requiring_grad(learnables)
        num_tasks = next(iter(support.values())).shape[0]
        total = torch.zeros(
            (), dtype=next(iter(theta.values())).dtype, device=next(iter(theta.values())).device
        )
        for i in range(num_tasks):
            task_support = {k: v[i] for k, v in support.items()}
            task_query = {k: v[i] for k, v in query.items()}
            fast = theta
            state = adapter.init(fast, phi)
            keys = adapter.adapted(fast)
            for s in range(steps):
                inner_loss = objective(fast, task_support)
                adapted = {k: v for k, v in fast.items() if keys is None or k in keys}
                g = torch.autograd.grad(
                    inner_loss,
                    list(adapted.values()),
                    create_graph=not first_order,
                    allow_unused=True,
                )
                grads = {
                    k: torch.zeros_like(v) if gi is None else gi
                    for (k, v), gi in zip(adapted.items(), g, strict=True)
                }
                updates, state = adapter.update(grads, state, fast, phi, s)
                fast = apply_updates(fast, updates)
                if multi_step:
                    total = total + scale[s] * objective(fast, task_query)
            if not multi_step:
                total = total + objective(fast, task_query)
        return _autograd_result(total if multi_step else total * scale, theta, phi)

    return step


def _channels_last(tree: Params) -> Params:
    """4-D tensors (conv weights, image batches) in the layout oneDNN and cuDNN are fastest in."""
    return _channels_last_view(stop_gradient(tree))


def _compiled_loop_step(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool, multi_step: bool
) -> Callable[[Params, Params, Data, Data, Tensor], tuple[tuple[Params, Params], Tensor]]:
    task_loss = _task_loss(objective, adapter, steps, first_order, multi_step)

    def scaled(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor
    ) -> Tensor:
        return _weighted(task_loss(params, learnables, support, query), scale)

    one_task = torch.compile(_own_code(grad_and_value(scaled, argnums=(0, 1))), dynamic=False)

    def run(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor
    ) -> tuple[tuple[Params, Params], Tensor]:
        params = _channels_last(params)
        num_tasks = next(iter(support.values())).shape[0]
        g_params: Params = {}
        g_learnables: Params = {}
        loss = torch.zeros((), dtype=scale.dtype, device=scale.device)
        for i in range(num_tasks):  # task order fixed: the sum is bitwise reproducible
            task_support = _channels_last({k: v[i] for k, v in support.items()})
            task_query = _channels_last({k: v[i] for k, v in query.items()})
            (gp, gl), task_loss_value = one_task(
                params, learnables, task_support, task_query, scale
            )
            for total, g in ((g_params, gp), (g_learnables, gl)):
                for k, v in g.items():
                    if k in total:
                        total[k] += v
                    else:
                        total[k] = v.clone()
            loss = loss + task_loss_value
        if num_tasks == 0:
            g_params = {k: torch.zeros_like(v) for k, v in params.items()}
            g_learnables = {k: torch.zeros_like(v) for k, v in learnables.items()}
        contiguous = {k: v.contiguous() for k, v in g_params.items()}
        return (contiguous, g_learnables), loss

    return run


def _channels_last_view(tree: Params) -> Params:
    """Like ``_channels_last`` but differentiable: the copy stays in the autograd graph."""
    return {
        k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
        for k, v in tree.items()
    }


def _split_step(
    objective: TaskObjective, adapter: Adapter, steps: int, first_order: bool, multi_step: bool
) -> MetaStep:
    # The multi-step loss needs the parameters after every step, MAML's only the last ones.
    adapt = (_trajectory if multi_step else _inner_loop)(objective, adapter, steps, first_order)
    adapt_all = torch.compile(_own_code(vmap(adapt, in_dims=(None, None, 0))), dynamic=False)
    query_loss = torch.compile(_own_code(objective), dynamic=False)

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        theta, phi = _requiring_grad(params), _requiring_grad(learnables)
        adapted = adapt_all(_channels_last_view(theta), phi, support)
        path = adapted if multi_step else (adapted,)
        num_tasks = next(iter(support.values())).shape[0]
        ref = next(iter(theta.values()))
        total = torch.zeros((), dtype=ref.dtype, device=ref.device)
        # unbind, not v[i]: each v[i]'s backward would write a zero-filled copy of all of v
        per_step = [{k: v.unbind(0) for k, v in p.items()} for p in path]
        for i in range(num_tasks):  # task order fixed: the sum is bitwise reproducible
            task_query = {k: v[i] for k, v in query.items()}
            for s, per_task in enumerate(per_step):
                task_params = _channels_last_view({k: v[i] for k, v in per_task.items()})
                loss = query_loss(task_params, task_query)
                total = total + (scale[s] * loss if multi_step else loss)
        return _autograd_result(total if multi_step else total * scale, theta, phi)

    return step


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper with a code object of its own.

    Dynamo caches compiled graphs per code object, and every ``grad_and_value`` wrapper shares
    one: without this, all meta-steps built in a process compete for the same 8 cache entries
    and later ones silently run eagerly.
    """

    def run(*args: Any) -> Any:
        return fn(*args)

    run.__code__ = run.__code__.replace()
    return run


def make_meta_step(
    objective: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    first_order: bool,
    strategy: Strategy,
    autocast: torch.dtype | None = None,
    multi_step: bool = False,
) -> MetaStep:
    """Build the meta-step for one (objective, adapter, steps, order) and a strategy.

    See the module docstring for what each strategy does. The compiled ones compile on their
    first call (tens of seconds on a small CPU), not here. ``autocast`` (e.g. ``torch.bfloat16``)
    runs the step under ``torch.autocast``: convolutions and matmuls in that dtype, parameters and
    meta-gradients in theirs. It changes the numerics, so it is opt-in and parity with float32
    holds only to its precision. ``multi_step`` takes the query loss after every inner step,
    weighted by the step's ``scale`` vector (``steps`` weights) instead of a scalar ``scale``.
    """
    if multi_step and steps < 1:
        raise ValueError("a multi-step loss needs at least one inner step (inner.steps >= 1)")
    if autocast is not None:
        inner = make_meta_step(
            objective,
            adapter,
            steps=steps,
            first_order=first_order,
            strategy=strategy,
            multi_step=multi_step,
        )
        return _autocast_step(inner, autocast)
    if strategy == "loop":
        return _checked_scale(
            _loop_step(objective, adapter, steps, first_order, multi_step), steps, multi_step
        )
    if strategy == "compiled-split":
        return _checked_scale(
            _split_step(objective, adapter, steps, first_order, multi_step), steps, multi_step
        )
    if strategy == "compiled-loop":
        fn = _compiled_loop_step(objective, adapter, steps, first_order, multi_step)
    else:
        fn = _batched_step(objective, adapter, steps, first_order, multi_step)
        if strategy == "compiled":
            fn = torch.compile(_own_code(fn), dynamic=False)
        elif strategy == "cudagraphs":
            fn = _cloned(torch.compile(_own_code(fn), dynamic=False, mode="reduce-overhead"))
        elif strategy != "batched":
            raise ValueError(
                f"unknown kernel strategy {strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
    as_tensor = ScaleTensors()

    def step(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        ref = next(iter(params.values()))
        if strategy == "cudagraphs" and ref.device.type != "cuda":
            raise ConfigError(
                [
                    f"kernel.strategy: cudagraphs needs a CUDA device, the parameters are on "
                    f"{ref.device}; use kernel.strategy=auto, compiled or batched"
                ]
            )
        weight = as_tensor(scale, ref)
        (g_params, g_learnables), loss = fn(params, learnables, support, query, weight)
        return StepResult(loss.detach(), g_params, g_learnables)

    return _checked_scale(step, steps, multi_step)


class ScaleTensors:
    """``scale`` as a tensor on the parameters' device, cached per value.

    A Python float would be baked into a compiled graph (one recompile per value); a 0-d tensor
    is an input like any other, and caching it spares a host-to-device copy per step.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}

    def __call__(self, scale: Tensor | float, like: Tensor) -> Tensor:
        if isinstance(scale, Tensor):
            return scale.to(like.device, like.dtype)
        key = (float(scale), like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(scale, dtype=like.dtype, device=like.device)
        return self._cache[key]


def _checked_scale(step: MetaStep, steps: int, multi_step: bool) -> MetaStep:
    """Reject a ``scale`` that does not match the step kind with a message, not a shape error."""

    def run(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        shape = tuple(scale.shape) if isinstance(scale, Tensor) else ()
        if multi_step and shape != (steps,):
            raise ValueError(f"a multi-step loss needs a vector of {steps} step weights as scale")
        if not multi_step and shape != ():
            raise ValueError("scale must be a number: this meta-step takes the final loss only")
        return step(params, learnables, support, query, scale)

    return run


def _autocast_step(step: MetaStep, dtype: torch.dtype) -> MetaStep:
    def run(
        params: Params, learnables: Params, support: Data, query: Data, scale: Tensor | float
    ) -> StepResult:
        device_type = next(iter(params.values())).device.type
        with torch.autocast(device_type, dtype=dtype):
            result = step(params, learnables, support, query, scale)
        return StepResult(result.loss.float(), result.grads, result.learnable_grads)

    return run


def _cloned(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Copies of a CUDA-graph step's outputs: the next replay overwrites the graph's own."""

    def run(*args: Any) -> Any:
        return torch.utils._pytree.tree_map(
            lambda x: x.clone() if isinstance(x, Tensor) else x, fn(*args)
        )

    return run


def make_adapt(objective: TaskObjective, adapter: Adapter, *, steps: int) -> AdaptFn:
    """Adapt every task of a batch (no meta-gradient): ``(θ, φ, support) -> θ'`` per task.

    Used where adapted parameters are needed as values, e.g. to collect post-update rollouts in
    reinforcement learning, or to plot adapted predictions.
    """
    adapt = vmap(_inner_loop(objective, adapter, steps, True), in_dims=(None, None, 0))

    def run(params: Params, learnables: Params, support: Data) -> Params:
        return stop_gradient(adapt(stop_gradient(params), stop_gradient(learnables), support))

    return run


def make_adapt_curve(
    objective: TaskObjective,
    score: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    later_scale: float = 1.0,
) -> Callable[[Params, Params, Data, Data], tuple[Tensor, Params]]:
    """Score on the query set after 0..steps adaptation steps, for every task at once.

    Returns ``(scores, adapted)`` with ``scores`` of shape ``(tasks, steps + 1)`` and the
    parameters after the last step (leading task dimension). Updates after the first step are
    multiplied by ``later_scale`` (``eval.later_steps_lr_scale``).
    """
    adapt = adaptation(objective, adapter, first_order=True, later_scale=later_scale)

    def curve(params: Params, learnables: Params, support: Data, query: Data):
        path = adapt(params, learnables, [support] * steps)
        scores = [score(p, query) for p in [params, *path]]
        return torch.stack(scores), path[-1] if path else params

    batched = vmap(curve, in_dims=(None, None, 0, 0))

    def run(params: Params, learnables: Params, support: Data, query: Data):
        scores, adapted = batched(stop_gradient(params), stop_gradient(learnables), support, query)
        return scores.detach(), stop_gradient(adapted)

    return run


def make_adapt_on_each(
    objective: TaskObjective, adapter: Adapter, *, later_scale: float = 1.0
) -> Callable[[Params, Params, list[Data]], Params]:
    """Adapt every task where inner step ``k`` uses its own data ``datas[k]`` (no meta-gradient).

    Reinforcement learning's evaluation collects fresh trajectories with the policy after every
    step, as the paper does. Returns the parameters after the last step (leading task dim).
    """
    adapt = adaptation(objective, adapter, first_order=True, later_scale=later_scale)

    def last(params: Params, learnables: Params, datas: list[Data]) -> Params:
        return adapt(params, learnables, datas)[-1]

    batched = vmap(last, in_dims=(None, None, 0))

    def run(params: Params, learnables: Params, datas: list[Data]) -> Params:
        with torch.no_grad():
            adapted = batched(stop_gradient(params), stop_gradient(learnables), datas)
        return stop_gradient(adapted)

    return run
