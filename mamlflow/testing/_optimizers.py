"""``check_optimizer``: an outer optimizer builds, schedules, descends and resumes bitwise."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mamlflow.core import (
    InnerConfig,
    Learner,
    OuterConfig,
    OuterOptimizer,
    OuterStepReport,
    Params,
    PolicyOuterOptimizer,
    TaskBatch,
    TaskFamily,
    sgd,
)
from mamlflow.engine import (
    BatchSource,
    batch_source,
)
from mamlflow.kernels import StepResult, make_meta_step

from ._common import (
    _answer,
    _call,
    _clone,
    _equal,
    _fail,
    _family,
    _instance,
    _one_thread,
    _SmallModel,
)

# -- outer optimizers ----------------------------------------------------------------------------


def check_optimizer(
    optimizer: OuterOptimizer | type[OuterOptimizer],
    *,
    seed: int = 0,
    steps: int = 4,
    tasks: int = 4,
) -> None:
    """Check that an outer optimizer builds, schedules, descends and resumes as the trainer needs.

    A class is built with its ``Config``'s defaults; pass an instance for other settings.
    Checked: ``name`` and a frozen ``Config``; ``check_task_family`` answers None or one line
    for sinusoid (supervised) and navigation (rollouts) and accepts one of them, and a
    ``PolicyOuterOptimizer`` refuses sinusoid and accepts navigation; ``build`` returns a
    ``torch.optim.Optimizer`` over exactly the leaves it is given; ``prepare_step`` sets every
    param group's rate to ``lr_at(iteration, total)`` (checked with a linear schedule). Then, on
    one fixed meta-batch of ``tasks`` tasks of the first family it accepts (sinusoid with a
    small MLP; navigation with a small Gaussian policy, whose ``PolicyTerms`` come from the
    engine), stepped as the trainer steps (meta-gradient in each leaf's ``.grad``,
    ``prepare_step``, ``step(optimizer, terms)``): ``steps`` steps return ``OuterStepReport``s,
    keep the leaves finite and lower the meta-loss; and a new instance that builds a new
    optimizer and loads the ``state_dict`` saved half-way (through ``torch.save`` and
    ``torch.load(weights_only=True)``, as checkpoints are) continues bitwise as the optimizer
    that never stopped: what ``--resume`` promises.
    """
    outer = _instance(optimizer, OuterOptimizer, OuterConfig, "outer optimizer")
    who = f"outer optimizer '{outer.name}'"
    if steps < 2:
        raise ValueError(f"steps must be at least 2 to resume half-way, got {steps}")
    problem = _FixedMetaBatch.of(_accepted_family(who, outer), seed=seed, tasks=tasks)
    _check_optimizer_build(who, outer, problem.leaves())
    _check_schedule(who, outer, problem.leaves())
    with _one_thread():
        _check_descent_and_resume(who, outer, problem, steps)


def _accepted_family(who: str, outer: OuterOptimizer) -> TaskFamily:
    """Sinusoid, or navigation where sinusoid is refused, with the answers checked."""
    families = (
        _family("sinusoid", shots=10, query=10),
        _family("navigation", shots=4, query=4, horizon=20),
    )
    answers: dict[str, str | None] = {}
    for fam in families:
        answers[fam.name] = _answer(
            who,
            f"check_task_family({fam.name!r} family)",
            lambda f=fam: outer.check_task_family(f),
        )
    if isinstance(outer, PolicyOuterOptimizer) and answers["sinusoid"] is None:
        _fail(
            who,
            "check_task_family accepts the supervised family 'sinusoid', for which a policy "
            "step gets no PolicyTerms",
            "keep PolicyOuterOptimizer.check_task_family, which refuses every family that is "
            "not a rollout family",
        )
    if isinstance(outer, PolicyOuterOptimizer) and answers["navigation"] is not None:
        _fail(
            who,
            f"check_task_family refuses the rollout family 'navigation' ({answers['navigation']})",
            "a PolicyOuterOptimizer trains rollout families: return None for them",
        )
    accepted = [fam for fam in families if answers[fam.name] is None]
    if not accepted:
        _fail(
            who,
            "check_task_family refuses both sinusoid and navigation",
            "return None for the families it can train",
        )
    return accepted[0]


@dataclass(frozen=True)
class _FixedMetaBatch:
    """One meta-batch, collected once, and the meta-step through it: a meta-loss to lower."""

    family: TaskFamily
    source: BatchSource
    params: Params
    learnables: Params
    batch: TaskBatch
    step: Callable[..., StepResult]

    @classmethod
    def of(cls, family: TaskFamily, *, seed: int, tasks: int) -> _FixedMetaBatch:
        plugin = family.batch_source(_SmallModel())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            learner = Learner(plugin.build(family.io))
        inner = InnerConfig()
        adapter = sgd(inner.lr)
        objective = family.objective(learner)
        source = batch_source(family, learner, objective, adapter, inner)
        params = learner.init_params()
        sampled = family.sample(seed, 0, torch.arange(tasks)).to("cpu", torch.float32)
        batch = source.meta_batch(sampled, params, {}, seed=seed, iteration=0)
        step = make_meta_step(objective, adapter, steps=1, first_order=False, strategy="batched")
        return cls(family, source, params, adapter.learnables(params), batch, step)

    def leaves(self) -> tuple[Params, Params]:
        """Fresh copies of θ₀ and the adapter's tensors: the leaves a run starts from."""
        return _clone(self.params), _clone(self.learnables)

    def result(self, params: Params, learnables: Params) -> StepResult:
        b = self.batch
        return self.step(params, learnables, b.support, b.query, 1.0 / b.num_tasks)


def _check_optimizer_build(who: str, outer: OuterOptimizer, leaves: tuple[Params, Params]) -> None:
    tensors = [*leaves[0].values(), *leaves[1].values()]
    built = _call(
        who,
        f"build(leaves) with {len(tensors)} leaves",
        lambda: outer.build(tensors),
        "return a torch.optim.Optimizer over the tensors it is given",
    )
    if not isinstance(built, torch.optim.Optimizer):
        _fail(who, f"build() returned {type(built).__name__}", "return a torch.optim.Optimizer")
    got = [p for group in built.param_groups for p in group["params"]]
    if len(got) != len(tensors) or {id(p) for p in got} != {id(t) for t in tensors}:
        _fail(
            who,
            f"build(leaves) returned an optimizer over {len(got)} tensors that are not the "
            f"{len(tensors)} leaves it was given",
            "pass the params argument on to the torch.optim.Optimizer: the trainer sets those "
            "leaves' .grad and restores them from checkpoints",
        )


def _check_schedule(who: str, outer: OuterOptimizer, leaves: tuple[Params, Params]) -> None:
    """``prepare_step`` sets every param group's rate to ``lr_at``, here of a linear schedule."""
    c = outer.config
    scheduled = type(outer)(c.model_copy(update={"schedule": "linear", "min_lr": c.lr / 10}))
    tensors = [*leaves[0].values(), *leaves[1].values()]
    built = scheduled.build(tensors)
    for iteration in (5, 9):
        _call(
            who,
            f"prepare_step(optimizer, leaves, {iteration}, 10)",
            lambda i=iteration: scheduled.prepare_step(built, tensors, i, 10),
            "prepare_step runs before every step, with or without gradients in the leaves",
        )
        expected = scheduled.lr_at(iteration, 10)
        rates = [float(group["lr"]) for group in built.param_groups]
        wrong = [rate for rate in rates if rate != expected]
        if wrong:
            _fail(
                who,
                f"with schedule=linear, prepare_step(optimizer, leaves, {iteration}, 10) leaves "
                f"the learning rate at {wrong[0]:.6g}, but lr_at({iteration}, 10) is "
                f"{expected:.6g}",
                "call super().prepare_step(...) where you override it: it sets every param "
                "group's lr to lr_at(iteration, total), how schedules (and a resumed run's "
                "rate) reach the optimizer",
            )


def _check_descent_and_resume(
    who: str, outer: OuterOptimizer, problem: _FixedMetaBatch, steps: int
) -> None:
    """``steps`` steps lower the meta-loss; a restart half-way from the saved state ends in
    bitwise the same leaves."""
    params, learnables = problem.leaves()
    optimizer = outer.build([*params.values(), *learnables.values()])
    before = float(problem.result(params, learnables).loss)
    half = steps // 2
    _outer_steps(who, outer, optimizer, problem, (params, learnables), range(half), steps)
    saved = _saved(who, (params, learnables), optimizer)
    _outer_steps(who, outer, optimizer, problem, (params, learnables), range(half, steps), steps)
    after = float(problem.result(params, learnables).loss)
    name = problem.family.name
    if not all(bool(torch.isfinite(v).all()) for v in [*params.values(), *learnables.values()]):
        _fail(
            who,
            f"the parameters are not finite after {steps} steps on a {name} meta-batch",
            "keep the step finite: check divisions and the learning rate's scale",
        )
    if not after < before:
        _fail(
            who,
            f"does not lower the meta-loss of a fixed {name} meta-batch: {before:.6g} before "
            f"{steps} steps, {after:.6g} after",
            "move the leaves down the meta-gradient the trainer puts in their .grad (mind the "
            "sign), by a step that shrinks with the learning rate",
        )
    resumed = _resumed(who, outer, problem, saved, range(half, steps), steps)
    for label, ran, again in (("θ", params, resumed[0]), ("φ", learnables, resumed[1])):
        for key, value in ran.items():
            if not _equal(value, again[key]):
                diff = (value - again[key]).abs().max().item()
                _fail(
                    who,
                    f"continuing from a state_dict saved after {half} of {steps} steps differs "
                    f"from not stopping (by {diff:.1e} at {label}['{key}'])",
                    "keep all of the optimizer's state in optimizer.state and param_groups, "
                    "which state_dict saves and load_state_dict restores, not in attributes "
                    "of your own: a resumed run must continue exactly",
                )


def _outer_steps(
    who: str,
    outer: OuterOptimizer,
    optimizer: torch.optim.Optimizer,
    problem: _FixedMetaBatch,
    leaves: tuple[Params, Params],
    iterations: range,
    total: int,
) -> None:
    """Outer steps as the trainer takes them: meta-gradient into each leaf's ``.grad``,
    ``prepare_step``, then ``step`` with the batch source's ``PolicyTerms`` (or None)."""
    params, learnables = leaves
    tensors = [*params.values(), *learnables.values()]
    for iteration in iterations:
        result = problem.result(params, learnables)
        for k, p in params.items():
            p.grad = result.grads[k]
        for k, p in learnables.items():
            p.grad = result.learnable_grads[k]
        _call(
            who,
            f"prepare_step(optimizer, leaves, {iteration}, {total})",
            lambda i=iteration: outer.prepare_step(optimizer, tensors, i, total),
            "prepare_step sets the learning rate and clips the gradients in the leaves",
        )
        terms = problem.source.policy_terms(
            (params, learnables),
            problem.batch,
            meta_batch_size=problem.batch.num_tasks,
            first_order=False,
            reduce=lambda t: t,
        )
        report = _call(
            who,
            f"step(optimizer, {type(terms).__name__}) at iteration {iteration}",
            lambda t=terms: outer.step(optimizer, t),
            "step applies the meta-gradient in the leaves' .grad through the optimizer build "
            "returned",
        )
        if not isinstance(report, OuterStepReport):
            _fail(
                who,
                f"step() returned {type(report).__name__}",
                "return an OuterStepReport (OuterStepReport() when there is nothing to report)",
            )


_Saved = tuple[Params, Params, dict[str, Any]]


def _saved(who: str, leaves: tuple[Params, Params], optimizer: torch.optim.Optimizer) -> _Saved:
    """The leaves and the optimizer's state_dict, through a file as a checkpoint keeps them."""
    buffer = io.BytesIO()
    fix = (
        "keep state_dict to tensors, numbers, strings and containers of them: checkpoints are "
        "written with torch.save and read with torch.load(weights_only=True)"
    )
    _call(
        who,
        "torch.save(optimizer.state_dict())",
        lambda: torch.save(optimizer.state_dict(), buffer),
        fix,
    )
    buffer.seek(0)
    state = _call(
        who,
        "torch.load(its state_dict, weights_only=True)",
        lambda: torch.load(buffer, weights_only=True),
        fix,
    )
    return _clone(leaves[0]), _clone(leaves[1]), state


def _resumed(
    who: str,
    outer: OuterOptimizer,
    problem: _FixedMetaBatch,
    saved: _Saved,
    iterations: range,
    total: int,
) -> tuple[Params, Params]:
    """The leaves after ``iterations`` more steps from ``saved``, as a resumed run takes them:
    a new outer optimizer instance, a new ``torch.optim.Optimizer``, the saved state loaded."""
    params, learnables, state = saved
    fresh = type(outer)(outer.config)
    optimizer = fresh.build([*params.values(), *learnables.values()])
    _call(
        who,
        "load_state_dict(a saved state_dict) on a newly built optimizer",
        lambda: optimizer.load_state_dict(state),
        "a resumed run builds the optimizer anew and loads the checkpoint's state_dict into it",
    )
    _outer_steps(who, fresh, optimizer, problem, (params, learnables), iterations, total)
    return params, learnables
