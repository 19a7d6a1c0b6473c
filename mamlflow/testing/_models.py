"""``check_model``: a model builds for a family and its batched meta-step matches the loop."""

from __future__ import annotations

import torch
from torch import Tensor

from mamlflow.core import (
    InnerConfig,
    Learner,
    ModelConfig,
    ModelIO,
    ModelPlugin,
    Params,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    sgd,
)
from mamlflow.kernels import StepResult, make_meta_step

from ._common import _PARITY_RTOL, _built, _call, _fail, _instance
from ._families import _meta_batch, _source

# -- models ----------------------------------------------------------------------------------


def check_model(
    model: ModelPlugin | type[ModelPlugin],
    family: TaskFamily | type[TaskFamily],
    *,
    seed: int = 0,
    tasks: int = 4,
    steps: int = 2,
    inner_lr: float = 0.01,
) -> None:
    """Check that a model builds for ``family``'s ``io`` and is safe under the batched kernel.

    A class is built with its ``Config``'s defaults; pass an instance for other settings.
    Checked: ``name`` and a frozen ``Config``; ``build`` returns an ``nn.Module`` with
    parameters, initialised from torch's seeded RNG only; on ``tasks`` tasks of the meta-batch
    the engine trains on (sampled tasks, or trajectories the model collects as a policy in a
    rollout family's tasks, with one SGD step of ``inner_lr`` between support and query) its
    output is (..., ``io.output_dim``) for inputs (..., ``*io.input_shape``) and depends on
    the parameters it is called with; and the meta-loss and meta-gradient with ``steps`` SGD
    inner steps, second and first order, agree between ``make_meta_step(strategy="batched")``
    and the per-task ``loop`` reference in float64.
    """
    plugin = _instance(model, ModelPlugin, ModelConfig, "model")
    fam = _instance(family, TaskFamily, TaskConfig, "task family")
    who = f"model '{plugin.name}'"
    learner = _check_build(who, plugin, fam.io, seed)
    params = learner.init_params()
    source = _source(who, fam, learner, InnerConfig(lr=inner_lr))
    batch = _meta_batch(
        who,
        fam,
        source,
        params,
        torch.arange(tasks),
        seed=seed,
        iteration=0,
        fix=f"run check_task_family on '{fam.name}'; where it passes, the model must accept "
        "(..., *io.input_shape) inputs and return (..., io.output_dim)",
    )
    _check_forward(who, learner, params, batch, fam.io)
    objective = fam.objective(learner)
    for first_order in (False, True):
        _check_kernel_parity(who, objective, params, batch, steps, inner_lr, first_order)


def _check_build(who: str, plugin: ModelPlugin, io: ModelIO, seed: int) -> Learner:
    """A float64 learner of the built module, which has parameters and builds reproducibly."""
    learner = Learner(_built(who, plugin, io, seed)).to("cpu", torch.float64)
    params = learner.init_params()
    if not params:
        _fail(
            who,
            "the module has no parameters",
            "register weights as nn.Parameter (or use nn layers), so the learner can adapt them",
        )
    twin = Learner(_built(who, plugin, io, seed)).to("cpu", torch.float64).init_params()
    if twin.keys() != params.keys() or any(not torch.equal(twin[k], params[k]) for k in params):
        _fail(
            who,
            "two builds under the same torch.manual_seed differ",
            "initialise from torch's global RNG (nn.init, torch.randn), which the trainer seeds, "
            "not from numpy, random or a generator of your own",
        )
    return learner


def _check_forward(
    who: str, learner: Learner, params: Params, batch: TaskBatch, io: ModelIO
) -> None:
    """Task 0's inputs give (..., io.output_dim), and the output depends on ``params``."""
    if io.input_key not in batch.support:
        return  # check_task_family says what the family's meta-batch lacks
    x = batch.support[io.input_key][0]
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = _call(
        who,
        f"forward on task 0's {io.input_key} of shape {tuple(x.shape)}",
        lambda: learner(leaves, x),
        "accept (examples, *io.input_shape) inputs",
    )
    expected = (*x.shape[: x.ndim - len(io.input_shape)], io.output_dim)
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        _fail(
            who,
            f"forward on {tuple(x.shape)} inputs returned {shape}, expected {expected}",
            "return (examples, io.output_dim) for inputs (examples, *io.input_shape)",
        )
    grads = (
        torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
        if out.requires_grad
        else ()
    )
    if all(g is None or not g.any() for g in grads):
        _fail(
            who,
            "its output does not depend on the parameters it is called with",
            "keep weights in nn.Parameter attributes (not plain tensors or closures) and do "
            "not detach them: the learner swaps them in with functional_call",
        )


def _check_kernel_parity(
    who: str,
    objective: TaskObjective,
    params: Params,
    batch: TaskBatch,
    steps: int,
    inner_lr: float,
    first_order: bool,
) -> None:
    """The batched meta-step of ``steps`` SGD steps agrees with the per-task loop (float64)."""
    order = "first" if first_order else "second"
    results: dict[str, StepResult] = {}
    for strategy in ("loop", "batched"):
        step = make_meta_step(
            objective, sgd(inner_lr), steps=steps, first_order=first_order, strategy=strategy
        )
        fix = (
            "the per-task reference fails, so the model itself is broken"
            if strategy == "loop"
            else "under vmap every op sees one task; avoid .item(), in-place updates of "
            "parameters or buffers and Python branching on tensor values"
        )
        results[strategy] = _call(
            who,
            f"the {strategy} meta-step ({order} order, {steps} inner steps)",
            lambda s=step: s(params, {}, batch.support, batch.query, 1.0 / batch.num_tasks),
            fix,
        )
    _same_step(who, f"{order} order", params, results["loop"], results["batched"])


def _same_step(who: str, label: str, params: Params, loop: StepResult, batched: StepResult) -> None:
    if not torch.isfinite(loop.loss):
        _fail(who, f"the meta-loss ({label}) is {loop.loss.item()}", "check the forward pass")
    for name, reference, fast in (
        ("meta-gradient", loop.grads, batched.grads),
        ("adapter meta-gradient", loop.learnable_grads, batched.learnable_grads),
    ):
        if fast.keys() != reference.keys():
            _fail(
                who,
                f"the batched {name} ({label}) has keys {sorted(fast)}, "
                f"the loop {sorted(reference)}",
                "report a mamlflow bug",
            )
        if not all(torch.isfinite(g).all() for g in reference.values()):
            _fail(who, f"the {name} ({label}) is not finite", "check the forward pass")
        largest = max((g.abs().max().item() for g in reference.values()), default=0.0)
        for key, g in reference.items():
            diff = (fast[key] - g).abs().max().item()
            if not diff <= _PARITY_RTOL * max(1.0, largest):
                _fail(
                    who,
                    f"the batched kernel's {name} ({label}) differs from the loop reference by "
                    f"{diff:.1e} at '{key}' (largest entry {largest:.1e}, float64)",
                    "the model is not safe under vmap of a second-order step: replace torch's "
                    "affine normalisation layers with mamlflow.nn.LayerNorm/BatchNorm/GroupNorm "
                    "(mamlflow.nn.vmap_unsafe_layers(module) lists them; functorch #534), or "
                    "compute it with plain tensor ops",
                )
    if params and all(g.abs().max() == 0 for g in loop.grads.values()):
        _fail(
            who,
            f"the meta-gradient ({label}) is zero for every parameter",
            "the output must depend on the parameters passed to functional_call: keep weights "
            "in nn.Parameter attributes (not plain tensors or closures) and do not detach them",
        )
