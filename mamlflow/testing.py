"""Conformance checks for mamlflow plugins, and pytest fixtures to run them in a plugin's own CI.

The same checks run over mamlflow's built-in components (``tests/test_testing.py``). Each one
raises ``AssertionError`` with one line that names the component, what failed and how to fix it::

    from mamlflow.testing import check_algorithm, check_model, check_preset, check_task_family

    check_task_family(Linear)              # shapes, determinism, sharding, splits, objective
    check_model(MyNet, Linear)             # builds for the family; batched kernel == loop
    check_algorithm(MyAlgorithm)           # lowers the sinusoid loss after adaptation
    check_preset(host, "linear")           # resolves, trains a few steps, evaluates

In a plugin package, load the fixtures from ``tests/conftest.py`` and name the plugin under test::

    import pytest

    import my_package.plugin

    pytest_plugins = ["mamlflow.testing"]


    @pytest.fixture
    def mamlflow_plugin() -> object:
        return my_package.plugin

A test that asks for ``mamlflow_host`` then gets a ``PluginHost`` with the built-ins and that
plugin (no installed entry points), checked to have registered without a problem, and removed
again afterwards.

pytest is optional here, on purpose: the checks need only torch and raise plain
``AssertionError``, which every test runner reports, so they can be called from unittest, a
script or a notebook without pytest installed. The fixtures are defined only when pytest can be
imported, which it always can when pytest itself loads this module through ``pytest_plugins``.
Importing this module loads no plugin, and ``import mamlflow`` does not import it.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar, get_args

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn
from torch.func import grad, vmap

from .core.adapter import Adapter, sgd
from .core.algorithm import Algorithm, AlgorithmConfig
from .core.checkpoint import load_checkpoint
from .core.components import build_components
from .core.config import InnerConfig, resolve
from .core.errors import ConfigError, MamlflowError
from .core.evaluate import evaluate
from .core.host import PluginHost
from .core.learner import Learner, ModelConfig, ModelPlugin, Params
from .core.task import Metric, ModelIO, TaskBatch, TaskConfig, TaskFamily, TaskObjective
from .core.trainer import Trainer
from .kernels import STRATEGIES, StepResult, make_adapt_curve, make_meta_step
from .plugins.mlp import MLP, MLPConfig
from .plugins.sinusoid import Sinusoid, SinusoidConfig

__all__ = ["check_algorithm", "check_model", "check_preset", "check_task_family"]

_C = TypeVar("_C")

# The algorithm check's bar, measured on sinusoid (K=10, one inner step, 500 iterations of 25
# tasks, Adam 0.01, seeds 0-3): maml, fomaml, metasgd and anil bring the held-out loss after
# adaptation to 0.14-0.35x its value before training; an algorithm whose inner loop does not
# adapt only learns the mean function and stays at 0.66-0.74x.
_LEARNING_RATIO = 0.5
# float64 meta-gradients of a correct batched kernel agree with the loop to ~1e-13 of the
# largest entry; a model that is not vmap-safe (F.batch_norm with affine weights, functorch
# #534) is off by ~1e-2.
_PARITY_RTOL = 1e-8


# -- task families -------------------------------------------------------------------------------


def check_task_family(
    family: TaskFamily | type[TaskFamily],
    *,
    model: ModelPlugin | type[ModelPlugin] | None = None,
    seed: int = 0,
    tasks: int = 8,
) -> None:
    """Check that a task family keeps the ``TaskFamily`` contract.

    A class is built with its ``Config``'s defaults; pass an instance to check other settings.
    Checked: ``name``, ``metric`` and a frozen ``Config``; ``io``; ``sample`` returns a
    ``TaskBatch`` of the requested tasks with ``x`` (and ``y``) shaped as ``io`` says, honours
    ``shots``/``query``, is deterministic, gives task ``i`` the same data however the indices are
    split, leaves torch's global RNG alone, and differs across seeds, iterations and splits;
    ``objective`` and ``score`` return finite scalars, are differentiable, and give the same
    values under ``vmap`` as task by task. ``model`` (default: a small MLP) runs the objective.
    """
    fam = _instance(family, TaskFamily, TaskConfig, "task family")
    who = f"task family '{fam.name}'"
    metrics = get_args(Metric)
    if getattr(fam, "metric", None) not in metrics:
        _fail(who, f"metric is {getattr(fam, 'metric', None)!r}", f"set metric to one of {metrics}")
    if tasks < 4:
        raise ValueError(f"tasks must be at least 4 to split the batch, got {tasks}")
    io = _call(who, "io", lambda: fam.io, "return a ModelIO")
    if not isinstance(io, ModelIO):
        _fail(who, f"io is {io!r}", "return ModelIO(input_shape=..., output_dim=...)")
    if not (
        isinstance(io.input_shape, tuple)
        and all(isinstance(d, int) and d > 0 for d in io.input_shape)
        and isinstance(io.output_dim, int)
        and io.output_dim > 0
    ):
        _fail(who, f"io is {io}", "input_shape must be a tuple of positive ints, output_dim >= 1")

    index = torch.arange(tasks)
    iteration = 3

    def sample(indices: Tensor, **kwargs: Any) -> TaskBatch:
        args = {"seed": seed, "iteration": iteration, **kwargs}
        call = ", ".join(f"{k}={v}" for k, v in args.items())
        what = f"sample({call}, task_indices={indices.tolist()})"
        batch = _call(
            who,
            what,
            lambda: fam.sample(args.pop("seed"), args.pop("iteration"), indices, **args),
            "sample must work for any seed, iteration, split and set of task indices",
        )
        if not isinstance(batch, TaskBatch):
            _fail(who, f"{what} returned {type(batch).__name__}", "return a TaskBatch")
        if not torch.equal(batch.task_index.cpu(), indices):
            _fail(
                who,
                f"{what} returned task_index {batch.task_index.tolist()}",
                "set task_index=task_indices.clone(): it must hold the requested global indices",
            )
        return batch

    batch = sample(index)
    _check_shapes(who, fam, batch, io, sample)

    state = torch.get_rng_state()
    again = sample(index)
    if not torch.equal(state, torch.get_rng_state()):
        _fail(
            who,
            "sample() changed torch's global RNG state",
            "draw from mamlflow.core.rng.uniform(derive_key(seed, split, iteration, ...), "
            "task_indices, n) instead of torch.rand or torch.manual_seed",
        )
    _same_batches(
        who,
        batch,
        again,
        "sample() is not deterministic: two calls with the same arguments differ",
        "make every random number a function of (seed, split, iteration, task index), "
        "e.g. mamlflow.core.rng.uniform, never of global or stateful generators",
    )
    cut = tasks // 2 - 1
    shards = [sample(index[:cut]), sample(index[cut:])]
    _same_batches(
        who,
        batch,
        _concat(shards),
        f"sampling tasks {_span(index)} differs from sampling {_span(index[:cut])} and "
        f"{_span(index[cut:])} and concatenating",
        "task i must not depend on which other indices are asked for: key each task's random "
        "numbers by its global index (mamlflow.core.rng.uniform does), not by its position",
    )
    picked = torch.tensor([tasks - 1, 1])
    _same_batches(
        who,
        TaskBatch(
            {k: v[picked] for k, v in batch.support.items()},
            {k: v[picked] for k, v in batch.query.items()},
            picked,
            {k: v[picked] for k, v in batch.info.items()},
        ),
        sample(picked),
        f"sampling tasks {picked.tolist()} differs from those tasks of {_span(index)}",
        "task i must not depend on its position in task_indices: key it by its global index",
    )
    for kwargs, label in (
        ({"seed": seed + 1}, "seeds"),
        ({"iteration": iteration + 1}, "iterations"),
    ):
        if _data_equal(batch, sample(index, **kwargs)):
            _fail(
                who,
                f"sample() returns the same tasks for different {label}",
                "fold seed and iteration into every random key, e.g. derive_key(seed, split, "
                "iteration, stream)",
            )
    splits = {
        "train": batch,
        "val": sample(index, split="val"),
        "test": sample(index, split="test"),
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if _data_equal(splits[a], splits[b]):
            _fail(
                who,
                f"splits '{a}' and '{b}' sample the same tasks",
                "give each split its own random stream (or its own classes), so no held-out "
                "task is ever trained on",
            )
    if batch.support and batch.query:
        _check_objectives(who, fam, batch, model, seed)


def _check_shapes(
    who: str,
    fam: TaskFamily,
    batch: TaskBatch,
    io: ModelIO,
    sample: Callable[..., TaskBatch],
) -> None:
    """The supervised convention: ``x`` is (tasks, examples, *io.input_shape), ``y`` matches."""
    if "x" not in batch.support or "x" not in batch.query:
        return
    counts: dict[str, int] = {}
    for part, data in (("support", batch.support), ("query", batch.query)):
        x = data["x"]
        if tuple(x.shape[2:]) != io.input_shape or x.ndim != 2 + len(io.input_shape):
            _fail(
                who,
                f"{part}['x'] has shape {tuple(x.shape)} but io.input_shape is {io.input_shape}",
                "x must be (tasks, examples, *io.input_shape)",
            )
        counts[part] = int(x.shape[1])
        y = data.get("y")
        if y is None:
            continue
        if fam.metric == "mse":
            expected = (*x.shape[:2], io.output_dim)
            fix = (
                "the model returns (examples, io.output_dim) per task; a y of another shape "
                "broadcasts silently in (prediction - y)**2"
            )
        elif fam.metric == "accuracy":
            expected = tuple(x.shape[:2])
            fix = "labels are (tasks, examples) class indices"
        else:
            continue
        if tuple(y.shape) != expected:
            _fail(who, f"{part}['y'] has shape {tuple(y.shape)}, expected {expected}", fix)
    # Evaluation samples at other sizes; the example count must follow shots and query.
    per_shot = counts["support"] // max(fam.config.shots, 1)
    resized = sample(torch.arange(4), shots=2, query=3)
    got = (int(resized.support["x"].shape[1]), int(resized.query["x"].shape[1]))
    if per_shot < 1 or got != (2 * per_shot, 3 * per_shot):
        _fail(
            who,
            f"sample(shots=2, query=3) returned {got[0]} support and {got[1]} query examples "
            f"per task (with the config's shots={fam.config.shots}: {counts['support']})",
            "use the shots and query arguments when given (evaluation tests at other K) and "
            "the config's values otherwise",
        )


def _check_objectives(
    who: str,
    fam: TaskFamily,
    batch: TaskBatch,
    model: ModelPlugin | type[ModelPlugin] | None,
    seed: int,
) -> None:
    """``objective`` and ``score`` are pure scalar functions that vmap like a per-task loop."""
    plugin = MLP(MLPConfig(name="mlp", hidden=(16,))) if model is None else model
    plugin = _instance(plugin, ModelPlugin, ModelConfig, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = plugin.build(fam.io)
    learner = Learner(module).to("cpu", torch.float64)
    params = learner.init_params()
    batch = batch.to("cpu", torch.float64)
    fix = (
        "return a pure function (params, data) -> 0-d tensor built from tensor ops only: no "
        ".item(), Python branching on tensor values or in-place updates (it runs under vmap, "
        "grad and torch.compile)"
    )
    for name, data in (("objective", batch.support), ("score", batch.query)):
        fn = _call(who, f"{name}(learner)", lambda n=name: getattr(fam, n)(learner), fix)
        one = {k: v[0] for k, v in data.items()}
        value = _call(
            who, f"{name}(learner)(params, task 0)", lambda f=fn, d=one: f(params, d), fix
        )
        if not isinstance(value, Tensor) or value.shape != () or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            _fail(who, f"{name} returned {shape}, not a 0-d floating tensor", fix)
        if not torch.isfinite(value):
            _fail(who, f"{name} returned {value.item()} on task 0 with a fresh model", fix)
        per_task = torch.stack(
            [fn(params, {k: v[i] for k, v in data.items()}) for i in range(batch.num_tasks)]
        )
        batched = _call(
            who, f"vmap({name})", lambda f=fn, d=data: vmap(f, in_dims=(None, 0))(params, d), fix
        )
        if batched.shape != per_task.shape or not torch.allclose(batched, per_task, atol=1e-10):
            _fail(who, f"{name} gives other values under vmap than task by task", fix)
        if name == "objective":
            grads = _call(who, "grad(objective)", lambda f=fn, d=one: grad(f)(params, d), fix)
            if not all(torch.isfinite(g).all() for g in grads.values()):
                _fail(who, "the objective's gradient is not finite with a fresh model", fix)
            if all(g.abs().max() == 0 for g in grads.values()):
                _fail(
                    who,
                    "the objective's gradient is zero for every parameter",
                    "compute the loss from model(params, inputs), the learner called with the "
                    "params it is given",
                )


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
    parameters, initialised from torch's seeded RNG only; its output is
    (examples, ``io.output_dim``); and the meta-loss and meta-gradient of ``tasks`` tasks with
    ``steps`` SGD inner steps, second and first order, agree between
    ``make_meta_step(strategy="batched")`` and the per-task ``loop`` reference in float64.
    """
    plugin = _instance(model, ModelPlugin, ModelConfig, "model")
    fam = _instance(family, TaskFamily, TaskConfig, "task family")
    who = f"model '{plugin.name}'"
    io = fam.io

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _call(who, f"build({io})", lambda: plugin.build(io), "build must not raise")

    module = build()
    if not isinstance(module, nn.Module):
        _fail(who, f"build() returned {type(module).__name__}", "return a torch.nn.Module")
    learner = Learner(module).to("cpu", torch.float64)
    params = learner.init_params()
    if not params:
        _fail(
            who,
            "the module has no parameters",
            "register weights as nn.Parameter (or use nn layers), so the learner can adapt them",
        )
    twin = Learner(build()).to("cpu", torch.float64).init_params()
    if twin.keys() != params.keys() or any(not torch.equal(twin[k], params[k]) for k in params):
        _fail(
            who,
            "two builds under the same torch.manual_seed differ",
            "initialise from torch's global RNG (nn.init, torch.randn), which the trainer seeds, "
            "not from numpy, random or a generator of your own",
        )
    batch = fam.sample(seed, 0, torch.arange(tasks)).to("cpu", torch.float64)
    if "x" in batch.support:
        x = batch.support["x"][0]
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        out = _call(
            who,
            f"forward on task 0's x of shape {tuple(x.shape)}",
            lambda: learner(leaves, x),
            "accept (examples, *io.input_shape) inputs",
        )
        expected = (x.shape[0], io.output_dim)
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
    objective = fam.objective(learner)
    adapter = sgd(inner_lr)
    for first_order in (False, True):
        order = "first" if first_order else "second"
        results: dict[str, StepResult] = {}
        for strategy in ("loop", "batched"):
            step = make_meta_step(
                objective, adapter, steps=steps, first_order=first_order, strategy=strategy
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
                lambda s=step: s(params, {}, batch.support, batch.query, 1.0 / tasks),
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
                    "the model is not safe under vmap of a second-order step: compute it with "
                    "plain tensor ops (F.batch_norm with affine weight/bias is a known case, "
                    "functorch #534)",
                )
    if params and all(g.abs().max() == 0 for g in loop.grads.values()):
        _fail(
            who,
            f"the meta-gradient ({label}) is zero for every parameter",
            "the output must depend on the parameters passed to functional_call: keep weights "
            "in nn.Parameter attributes (not plain tensors or closures) and do not detach them",
        )


# -- algorithms ------------------------------------------------------------------------------


def check_algorithm(
    algorithm: Algorithm | type[Algorithm],
    *,
    inner: InnerConfig | None = None,
    iterations: int = 500,
    meta_batch_size: int = 25,
    outer_lr: float = 0.01,
    seed: int = 0,
) -> None:
    """Check that an algorithm's meta-step is vmap-safe and that it meta-learns sinusoid.

    A class is built with its ``Config``'s defaults; pass an instance for other settings.
    On the paper's sinusoid tasks (K=10) with a 1-40-40-1 MLP and ``inner`` (default: one SGD
    step, α=0.01), driven as the trainer drives it (``first_order``, ``step_weights`` and
    ``make_meta_step`` asked at every iteration): its ``batched`` meta-step, if it lists one,
    agrees with its ``loop`` reference in float64 (gradients of θ and of the adapter's learnable
    tensors, at the first and the last iteration); and after ``iterations`` steps of Adam on
    ``meta_batch_size`` tasks, the mean squared error on 200 held-out tasks after adaptation
    falls below half its value before training. maml, fomaml, metasgd and anil reach 0.14-0.35
    of it within the defaults, in about 2 s on a 2-core CPU; an algorithm whose inner loop does
    not adapt stays near 0.7.
    """
    alg = _instance(algorithm, Algorithm, AlgorithmConfig, "algorithm")
    who = f"algorithm '{alg.name}'"
    inner = InnerConfig() if inner is None else inner
    adapter = _call(who, f"adapter({inner!r})", lambda: alg.adapter(inner), "return an Adapter")
    if not isinstance(adapter, Adapter):
        _fail(who, f"adapter() returned {type(adapter).__name__}", "return an Adapter")
    family = Sinusoid(SinusoidConfig(name="sinusoid", shots=10, query=10))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = MLP(MLPConfig(name="mlp")).build(family.io)
    strategies = alg.strategies or STRATEGIES
    if "loop" not in strategies:
        _fail(who, f"strategies is {strategies}", "implement the loop reference and list it")
    fast = "batched" if "batched" in strategies else "loop"

    def kind(iteration: int) -> tuple[bool, tuple[float, ...] | None]:
        """What the trainer asks the algorithm before each step: order and step weights."""
        first_order = bool(alg.first_order(inner, iteration, iterations))
        return first_order, alg.step_weights(inner, iteration, iterations)

    def meta_step(objective: TaskObjective, strategy: str, first_order: bool, multi: bool) -> Any:
        return alg.make_meta_step(
            objective,
            adapter,
            steps=inner.steps,
            first_order=first_order,
            strategy=strategy,  # type: ignore[arg-type]
            multi_step=multi,
        )

    def scale(weights: tuple[float, ...] | None, tasks: int, dtype: torch.dtype) -> Tensor | float:
        if weights is None:
            return 1.0 / tasks
        return torch.tensor(weights, dtype=dtype) / tasks

    # Parity first (at the first and the last iteration, whose order or loss may differ): a
    # learning failure is easier to read once the kernel is known to be right.
    exact = Learner(module).to("cpu", torch.float64)
    params = exact.init_params()
    learnables = {k: v.detach().clone() for k, v in adapter.learnables(params).items()}
    batch = family.sample(seed, 0, torch.arange(4)).to("cpu", torch.float64)
    exact_objective = family.objective(exact)
    for first_order, weights in {kind(0), kind(iterations - 1)} if fast != "loop" else ():
        label = ("first" if first_order else "second") + " order"
        label += "" if weights is None else ", multi-step loss"
        results = {
            strategy: _call(
                who,
                f"the {strategy} meta-step ({label})",
                lambda s=strategy, f=first_order, w=weights: meta_step(
                    exact_objective, s, f, w is not None
                )(params, learnables, batch.support, batch.query, scale(w, 4, torch.float64)),
                "the adapter's init and update must be pure tensor functions (no .item(), "
                "in-place updates or Python branching on tensor values): they run under vmap",
            )
            for strategy in ("loop", fast)
        }
        _same_step(who, label, params, results["loop"], results[fast])

    learner = Learner(module).to("cpu", torch.float32)
    params = {k: v.requires_grad_(True) for k, v in learner.init_params().items()}
    learnables = {
        k: v.detach().clone().requires_grad_(True) for k, v in adapter.learnables(params).items()
    }
    objective = family.objective(learner)
    curve = make_adapt_curve(objective, family.score(learner), adapter, steps=inner.steps)
    held_out = family.sample(seed, 0, torch.arange(200), split="val")

    def loss_after_adaptation() -> float:
        scores, _ = curve(params, learnables, held_out.support, held_out.query)
        return float(scores[:, -1].mean())

    # A 1-40-40-1 MLP's ops are too small to split across threads, and with more threads than
    # free cores OpenMP's spin-waits made this check 8x slower on a busy 2-core machine.
    with _one_thread():
        before = loss_after_adaptation()
        leaves = [*params.values(), *learnables.values()]
        optimizer = torch.optim.Adam(leaves, lr=outer_lr)
        steps_by_kind: dict[tuple[bool, bool], Callable[..., StepResult]] = {}
        tasks = torch.arange(meta_batch_size)
        for iteration in range(iterations):
            first_order, weights = kind(iteration)
            key = (first_order, weights is not None)
            if key not in steps_by_kind:
                steps_by_kind[key] = meta_step(objective, fast, *key)
            batch = family.sample(seed, iteration, tasks)
            result = steps_by_kind[key](
                params,
                learnables,
                batch.support,
                batch.query,
                scale(weights, meta_batch_size, torch.float32),
            )
            for name, p in params.items():
                p.grad = result.grads[name]
            for name, p in learnables.items():
                p.grad = result.learnable_grads[name]
            optimizer.step()
        after = loss_after_adaptation()
    if not math.isfinite(after) or not after < _LEARNING_RATIO * before:
        _fail(
            who,
            f"does not meta-learn sinusoid: after {iterations} iterations the MSE after "
            f"{inner.steps} inner step(s) on 200 held-out tasks is {after:.3g}, "
            f"{after / before:.2f}x its {before:.3g} before training (must be < "
            f"{_LEARNING_RATIO}x)",
            "check that the adapter's update descends the inner gradient (sgd(inner.lr) adds "
            "-lr * grad) and that first_order() and learnables() are what you meant",
        )


# -- presets ---------------------------------------------------------------------------------


def check_preset(host: PluginHost, name: str, *, iterations: int = 10, tasks: int = 20) -> None:
    """Check that preset ``name`` resolves, builds, trains ``iterations`` steps and evaluates.

    The components it names must be registered on ``host`` (the ``mamlflow_host`` fixture gives
    one with the built-ins and the plugin under test). Training runs in a temporary directory
    with validation off; the final checkpoint is evaluated on ``tasks`` held-out tasks, and the
    metric must be finite. Whether it learns is for the plugin's own tests.
    """
    who = f"preset '{name}'"
    try:
        host.preset(name)
        resolved = resolve(
            host,
            preset=name,
            sets=(
                f"train.iterations={iterations}",
                "train.val_every=null",
                "train.time_limit=null",
            ),
        )
    except ConfigError as exc:
        issues = "; ".join(_one_line(issue) for issue in exc.issues)
        _fail(who, f"does not resolve: {issues}", "fix the preset's values")
    except MamlflowError as exc:
        _fail(who, f"does not resolve: {_one_line(str(exc))}", "register what it names")
    config = resolved.config
    with tempfile.TemporaryDirectory(prefix="mamlflow-check-") as run_dir:
        trainer = _call(
            who,
            "building its components",
            lambda: Trainer(config, Path(run_dir), host),
            "run check_task_family and check_model on the components it names",
        )
        summary = _call(who, f"training {iterations} iterations", trainer.fit, "see the error")
        if summary.meta_loss is None or not math.isfinite(summary.meta_loss):
            _fail(who, f"trains to a meta-loss of {summary.meta_loss}", "lower inner.lr/outer.lr")
        checkpoint = load_checkpoint(Path(run_dir))
    components = build_components(config, host)
    shots = config.eval.shots[0] if config.eval.shots else config.task.shots
    result, _ = _call(
        who,
        f"evaluating {tasks} tasks",
        lambda: evaluate(
            components,
            checkpoint.params,
            checkpoint.learnables,
            shots=shots,
            steps=config.inner.steps,
            tasks=tasks,
            query=config.eval.query,
        ),
        "see the error",
    )
    if not all(math.isfinite(v) for v in result.mean):
        _fail(who, f"evaluates to {result.metric} {result.mean}", "lower inner.lr/outer.lr")


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fail(who: str, problem: str, fix: str) -> NoReturn:
    raise AssertionError(_one_line(f"{who}: {problem}; {fix}"))


def _call(who: str, what: str, fn: Callable[[], _C], fix: str) -> _C:
    """``fn()``, with any exception turned into the check's one-line failure."""
    try:
        return fn()
    except AssertionError:
        raise
    except Exception as exc:
        text = _one_line(f"{type(exc).__name__}: {exc}")
        text = text if len(text) <= 300 else text[:299] + "…"
        raise AssertionError(_one_line(f"{who}: {what} raised {text}; {fix}")) from exc


def _instance(obj: Any, base: type[_C], config_base: type[BaseModel], label: str) -> _C:
    """``obj`` itself, or the class built from its Config's defaults, after checking the class."""
    cls = type(obj) if isinstance(obj, base) else obj
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"expected a {base.__name__} subclass or instance, got {obj!r}")
    name = getattr(cls, "name", None)
    who = f"{label} {cls.__module__}.{cls.__qualname__}"
    if not isinstance(name, str) or not name or " " in name or name != name.strip():
        _fail(who, f"name is {name!r}", "set the class attribute name to a string without spaces")
    who = f"{label} '{name}'"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        _fail(who, "is abstract", f"implement {missing}")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, config_base)):
        _fail(who, f"Config is {config!r}", f"set Config to a subclass of {config_base.__name__}")
    settings = config.model_config
    if settings.get("frozen") is not True or settings.get("extra") != "forbid":
        _fail(
            who,
            f"{config.__name__} is not frozen with extra='forbid'",
            "keep the model_config it inherits (frozen=True, extra='forbid'): a run's config "
            "must not change and a misspelt key must be an error",
        )
    if isinstance(obj, base):
        return obj
    try:
        instance = config(name=name)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _fail(
            who,
            f"{config.__name__}() needs a value for {where} ({first['msg']})",
            f"pass an instance, e.g. {cls.__name__}({config.__name__}(name={name!r}, ...))",
        )
    return cls(instance)


def _tensors(batch: TaskBatch) -> dict[str, Tensor]:
    return {
        **{f"support[{k!r}]": v for k, v in batch.support.items()},
        **{f"query[{k!r}]": v for k, v in batch.query.items()},
        **{f"info[{k!r}]": v for k, v in batch.info.items()},
    }


def _equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    same = a == b
    if a.is_floating_point():
        same |= a.isnan() & b.isnan()
    return bool(same.all())


def _same_batches(who: str, a: TaskBatch, b: TaskBatch, problem: str, fix: str) -> None:
    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys():
        _fail(who, f"{problem} (keys {sorted(ta)} vs {sorted(tb)})", fix)
    for key in ta:
        if not _equal(ta[key], tb[key]):
            _fail(who, f"{problem} (in {key})", fix)


def _data_equal(a: TaskBatch, b: TaskBatch) -> bool:
    """Whether two batches hold the same data (the task indices aside)."""
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(_equal(ta[k], tb[k]) for k in ta)


def _concat(batches: list[TaskBatch]) -> TaskBatch:
    def cat(parts: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    return TaskBatch(
        cat([b.support for b in batches]),
        cat([b.query for b in batches]),
        torch.cat([b.task_index for b in batches]),
        cat([b.info for b in batches]),
    )


def _span(index: Tensor) -> str:
    return f"[{int(index[0])}..{int(index[-1])}]"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- pytest fixtures -----------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the checks above work without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    __all__ += ["mamlflow_host", "mamlflow_plugin"]

    @pytest.fixture
    def mamlflow_plugin() -> object:
        """The plugin under test: override this fixture in your ``conftest.py``.

        Return the module (or any object) with your ``@hookimpl`` functions, e.g.
        ``return my_package.plugin``.
        """
        pytest.fail(
            "override the mamlflow_plugin fixture in your conftest.py: "
            "@pytest.fixture def mamlflow_plugin(): return my_package.plugin",
            pytrace=False,
        )

    @pytest.fixture
    def mamlflow_host(mamlflow_plugin: object) -> Iterator[PluginHost]:
        """A ``PluginHost`` with the built-ins and ``mamlflow_plugin``, removed afterwards.

        Installed entry points are not loaded, so other plugins cannot interfere. Every hook
        but ``register_commands`` has run and the plugin registered without a problem, or the
        test errors with the host's one-line message.
        """
        host = PluginHost(autoload=False, strict=False)
        name = getattr(mamlflow_plugin, "__name__", type(mamlflow_plugin).__name__)
        undo = host.add_plugin(mamlflow_plugin, name)
        try:
            for kind in ("task_family", "model", "algorithm", "optimizer", "preset", "callback"):
                host.names(kind)
            if host.failures:
                pytest.fail(host.failures[0].message, pytrace=False)
            yield host
        finally:
            undo()
