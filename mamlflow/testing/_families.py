"""``check_task_family``: sampling is pure and sharding-proof, meta-batches and losses are sound."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, get_args

import torch
from torch import Tensor
from torch.func import grad, vmap

from mamlflow.core import (
    ImageInputs,
    InnerConfig,
    Learner,
    Metric,
    ModelIO,
    ModelPlugin,
    Params,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    sgd,
)
from mamlflow.engine import (
    BatchSource,
    batch_source,
)

from ._common import (
    _ITERATION,
    _PURE,
    _built,
    _call,
    _concat,
    _data_equal,
    _fail,
    _instance,
    _pick,
    _same_batches,
    _SmallModel,
    _span,
)

# -- task families -------------------------------------------------------------------------------


def check_task_family(
    family: TaskFamily | type[TaskFamily],
    *,
    model: ModelPlugin | type[ModelPlugin] | None = None,
    seed: int = 0,
    tasks: int = 8,
) -> None:
    """Check that a task family keeps the ``TaskFamily`` contract.

    A class is built with its ``Config``'s defaults; pass an instance to check other settings
    (a rollout family's ``shots``, ``query`` and ``horizon`` set what each meta-batch costs).
    Checked: ``name``, ``metric`` and a frozen ``Config``; ``io``; ``sample`` returns a
    ``TaskBatch`` of the requested tasks with ``x`` (and ``y``) shaped as ``io`` says, honours
    ``shots``/``query``, is deterministic, gives task ``i`` the same data however the indices are
    split, leaves torch's global RNG alone, differs across seeds, iterations and splits, and equals
    ``prepare(sample_raw(...), dtype)`` in float32 and float64 (what the engine trains on);
    ``image_inputs(manifest())``, if not None, describes images of ``io``'s input shape.
    Then the meta-batch the engine trains on (``batch_source(...).meta_batch``: the sampled
    tasks, or trajectories collected in them with ``model``, default a small MLP or Gaussian
    MLP policy, in float64): support and query hold ``io.input_key`` with a leading task
    dimension, are finite, deterministic for the same (seed, iteration), the same for task
    ``i`` however the indices are split, leave torch's global RNG alone and differ across
    iterations; ``objective`` (on support) and ``score`` (on query) return finite scalars, are
    differentiable, and give the same values under ``vmap`` as task by task.
    """
    fam = _instance(family, TaskFamily, TaskConfig, "task family")
    who = f"task family '{fam.name}'"
    metrics = get_args(Metric)
    if getattr(fam, "metric", None) not in metrics:
        _fail(who, f"metric is {getattr(fam, 'metric', None)!r}", f"set metric to one of {metrics}")
    if tasks < 4:
        raise ValueError(f"tasks must be at least 4 to split the batch, got {tasks}")
    io = _check_io(who, fam)
    sample = _sampler(who, fam, seed)
    index = torch.arange(tasks)
    batch = sample(index)
    _check_shapes(who, fam, batch, io, sample)
    _check_sampling_is_pure(who, sample, batch, index)
    _check_raw_then_prepared(who, fam, batch, index, seed)
    _check_image_inputs(who, fam, io)
    _check_streams(who, sample, batch, index, seed)
    plugin = fam.batch_source(_SmallModel()) if model is None else model
    fix = "pass check_task_family(..., model=...) a model for this family's io"
    learner = Learner(_built(who, plugin, io, seed, fix)).to("cpu", torch.float64)
    source = _source(who, fam, learner, InnerConfig())
    meta = _check_meta_batches(who, fam, source, learner.init_params(), index, seed)
    _check_objectives(who, fam, learner, meta)


def _check_io(who: str, fam: TaskFamily) -> ModelIO:
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
    return io


def _sampler(who: str, fam: TaskFamily, seed: int) -> Callable[..., TaskBatch]:
    """``sample(indices, **kwargs)``: ``fam.sample`` at the check's seed and iteration, checked
    to return a ``TaskBatch`` of exactly the requested tasks."""

    def sample(indices: Tensor, **kwargs: Any) -> TaskBatch:
        args = {"seed": seed, "iteration": _ITERATION, **kwargs}
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

    return sample


def _check_sampling_is_pure(
    who: str, sample: Callable[..., TaskBatch], batch: TaskBatch, index: Tensor
) -> None:
    """The same call gives the same tasks, without touching torch's global RNG, and task ``i``
    is the same whatever else is sampled with it."""
    state = torch.get_rng_state()
    again = sample(index)
    if not torch.equal(state, torch.get_rng_state()):
        _fail(
            who,
            "sample() changed torch's global RNG state",
            "draw from mamlflow.rng.uniform(derive_key(seed, split, iteration, ...), "
            "task_indices, n) instead of torch.rand or torch.manual_seed",
        )
    _same_batches(
        who,
        batch,
        again,
        "sample() is not deterministic: two calls with the same arguments differ",
        "make every random number a function of (seed, split, iteration, task index), "
        "e.g. mamlflow.rng.uniform, never of global or stateful generators",
    )
    _check_any_split(
        who,
        sample,
        batch,
        index,
        "sampling",
        "task i must not depend on which other indices are asked for: key each task's random "
        "numbers by its global index (mamlflow.rng.uniform does), not by its position",
    )


def _check_raw_then_prepared(
    who: str, fam: TaskFamily, batch: TaskBatch, index: Tensor, seed: int
) -> None:
    """What the engine trains on, ``prepare(sample_raw(...).to(device, dtype), dtype)``, is
    ``sample(...)`` in that dtype."""
    what = f"sample_raw({seed}, {_ITERATION}, task_indices={index.tolist()})"
    raw = _call(
        who,
        what,
        lambda: fam.sample_raw(seed, _ITERATION, index),
        "sample_raw must accept sample's arguments",
    )
    for dtype in (torch.float32, torch.float64):
        prepared = _call(
            who,
            f"prepare({what}, {dtype})",
            lambda dtype=dtype: fam.prepare(raw.to("cpu", dtype), dtype),
            "prepare must take any batch sample_raw returns",
        )
        _same_batches(
            who,
            batch.to("cpu", dtype),
            prepared,
            f"prepare(sample_raw(...), {dtype}) differs from sample(...) in {dtype}",
            "make sample() return exactly prepare(sample_raw(...), torch.float32), and compute "
            "prepare in float32 before casting to dtype",
        )


def _check_image_inputs(who: str, fam: TaskFamily, io: ModelIO) -> None:
    """``image_inputs`` (when the family reads image files) describes inputs ``io`` accepts."""
    manifest = _call(who, "manifest()", fam.manifest, "manifest must return a JSON-ready dict")
    spec = _call(
        who,
        "image_inputs(manifest())",
        lambda: fam.image_inputs(manifest),
        "image_inputs must accept what manifest() returned",
    )
    if spec is None:
        return
    if not isinstance(spec, ImageInputs):
        _fail(who, f"image_inputs returned {type(spec).__name__}", "return ImageInputs or None")
    if spec.input_shape != tuple(io.input_shape):
        _fail(
            who,
            f"image_inputs reads images as {spec.input_shape}, but io.input_shape is "
            f"{tuple(io.input_shape)}",
            "describe the size and channels the family's samples have",
        )


def _check_any_split(
    who: str,
    get: Callable[[Tensor], TaskBatch],
    batch: TaskBatch,
    index: Tensor,
    verb: str,
    fix: str,
) -> None:
    """``get`` of two shards of ``index``, and of two tasks in reverse order, agrees with
    ``batch`` (``get(index)``): what sharding a meta-batch across processes relies on."""
    # Shards of two tasks or more: torch's batched matrix-vector product takes another path
    # for a batch of one, whose last bits differ, and the engine fits rollout baselines with it.
    cut = max(2, len(index) // 2 - 1)
    _same_batches(
        who,
        batch,
        _concat([get(index[:cut]), get(index[cut:])]),
        f"{verb} tasks {_span(index)} differs from {verb} {_span(index[:cut])} and "
        f"{_span(index[cut:])} and concatenating",
        fix,
    )
    picked = torch.tensor([len(index) - 1, 1])
    _same_batches(
        who,
        _pick(batch, picked),
        get(picked),
        f"{verb} tasks {picked.tolist()} differs from those tasks of {_span(index)}",
        "task i must not depend on its position in task_indices: key it by its global index",
    )


def _check_streams(
    who: str, sample: Callable[..., TaskBatch], batch: TaskBatch, index: Tensor, seed: int
) -> None:
    """Other seeds, iterations and splits sample other tasks."""
    for kwargs, label in (
        ({"seed": seed + 1}, "seeds"),
        ({"iteration": _ITERATION + 1}, "iterations"),
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


# What a rollout family's ``simulate`` must do for the engine to collect its meta-batches.
_SIMULATE = (
    "a rollout family's simulate must run act(obs, t) on (tasks, trajectories, obs_dim) "
    "observations for config.horizon steps and return obs, actions, rewards and mask, each "
    "(tasks, trajectories, horizon, ...)"
)
_BY_KEY = (
    "seed anything random in simulate from the key it receives for each task (keys[i], derived "
    "from the seed, iteration, phase and the task's global index), never from global or "
    "stateful generators or from a task's position in the batch"
)


def _source(who: str, fam: TaskFamily, learner: Learner, inner: InnerConfig) -> BatchSource:
    """The engine's source of ``fam``'s meta-batches for ``learner``, adapting with SGD."""
    objective = _call(who, "objective(learner)", lambda: fam.objective(learner), _PURE)
    return _call(
        who,
        "batch_source(family, ...)",
        lambda: batch_source(fam, learner, objective, sgd(inner.lr), inner),
        "leave batch_source as TaskFamily or RolloutTaskFamily define it: a family defines its "
        "data by sample (and simulate)",
    )


def _meta_batch(
    who: str,
    fam: TaskFamily,
    source: BatchSource,
    params: Params,
    indices: Tensor,
    *,
    seed: int,
    iteration: int,
    fix: str = _SIMULATE,
) -> TaskBatch:
    """The meta-batch of tasks ``indices`` as the trainer makes it, in the dtype of ``params``."""
    dtype = next(iter(params.values())).dtype
    sampled = _call(
        who,
        f"sample({seed}, {iteration}, task_indices={indices.tolist()})",
        lambda: fam.sample(seed, iteration, indices),
        "sample must work for any seed, iteration and set of task indices",
    )
    return _call(
        who,
        f"collecting the meta-batch of tasks {indices.tolist()} (seed {seed}, iteration "
        f"{iteration})",
        lambda: source.meta_batch(
            sampled.to("cpu", dtype), params, {}, seed=seed, iteration=iteration
        ),
        fix,
    )


def _check_meta_batches(
    who: str, fam: TaskFamily, source: BatchSource, params: Params, index: Tensor, seed: int
) -> TaskBatch:
    """The meta-batch the engine trains on is well formed, pure and shardable; returned."""

    def collect(indices: Tensor, iteration: int = _ITERATION) -> TaskBatch:
        return _meta_batch(who, fam, source, params, indices, seed=seed, iteration=iteration)

    state = torch.get_rng_state()
    batch = collect(index)
    if not torch.equal(state, torch.get_rng_state()):
        _fail(
            who,
            "collecting a meta-batch changed torch's global RNG state",
            "draw anything random in simulate from generators seeded by the per-task keys it "
            "receives (torch.Generator().manual_seed(int(keys[i])) for task i), never from "
            "torch's global RNG",
        )
    _check_meta_data(who, batch, fam.io, len(index))
    _same_batches(
        who,
        batch,
        collect(index),
        "the meta-batch is not deterministic: collecting it twice with the same seed and "
        "iteration differs",
        _BY_KEY,
    )
    _check_any_split(who, collect, batch, index, "collecting", _BY_KEY)
    if _data_equal(batch, collect(index, _ITERATION + 1)):
        _fail(
            who,
            f"the meta-batches of iterations {_ITERATION} and {_ITERATION + 1} are the same",
            "fold the iteration into every random key (simulate's keys already are)",
        )
    return batch


def _check_meta_data(who: str, batch: TaskBatch, io: ModelIO, tasks: int) -> None:
    """Support and query hold the model's inputs; every tensor is (tasks, ...) and finite."""
    key, dims = io.input_key, len(io.input_shape)
    for part, data in (("support", batch.support), ("query", batch.query)):
        if key not in data:
            _fail(
                who,
                f"the meta-batch's {part} has no {key!r} (io.input_key), only {sorted(data)}",
                "fill support and query, with the model's inputs under io.input_key: the "
                "kernels adapt on support and meta-learn on query",
            )
        for name, value in data.items():
            if value.ndim == 0 or value.shape[0] != tasks:
                _fail(
                    who,
                    f"the meta-batch's {part}[{name!r}] has shape {tuple(value.shape)}, "
                    f"without the leading dimension of its {tasks} tasks",
                    "every tensor of a meta-batch is (tasks, ...)",
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                _fail(
                    who,
                    f"the meta-batch's {part}[{name!r}] is not finite",
                    "return finite data: clip observations and rewards, or end the episode "
                    "(mask 0) before the state diverges",
                )
        x = data[key]
        if x.ndim < dims + 2 or tuple(x.shape[x.ndim - dims :]) != io.input_shape:
            _fail(
                who,
                f"the meta-batch's {part}[{key!r}] has shape {tuple(x.shape)} but "
                f"io.input_shape is {io.input_shape}",
                "inputs are (tasks, examples or trajectories and steps, *io.input_shape)",
            )


def _check_objectives(who: str, fam: TaskFamily, learner: Learner, batch: TaskBatch) -> None:
    """``objective`` and ``score`` are pure scalar functions that vmap like a per-task loop."""
    params = learner.init_params()
    for name, data in (("objective", batch.support), ("score", batch.query)):
        fn = _call(who, f"{name}(learner)", lambda n=name: getattr(fam, n)(learner), _PURE)
        one = {k: v[0] for k, v in data.items()}
        value = _call(
            who, f"{name}(learner)(params, task 0)", lambda f=fn, d=one: f(params, d), _PURE
        )
        if not isinstance(value, Tensor) or value.shape != () or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            _fail(who, f"{name} returned {shape}, not a 0-d floating tensor", _PURE)
        if not torch.isfinite(value):
            _fail(who, f"{name} returned {value.item()} on task 0 with a fresh model", _PURE)
        per_task = torch.stack(
            [fn(params, {k: v[i] for k, v in data.items()}) for i in range(batch.num_tasks)]
        )
        batched = _call(
            who,
            f"vmap({name})",
            lambda f=fn, d=data: vmap(f, in_dims=(None, 0))(params, d),
            _PURE,
        )
        if batched.shape != per_task.shape or not torch.allclose(batched, per_task, atol=1e-10):
            _fail(who, f"{name} gives other values under vmap than task by task", _PURE)
        if name == "objective":
            _check_objective_gradient(who, fn, params, one)


def _check_objective_gradient(
    who: str, objective: TaskObjective, params: Params, data: Mapping[str, Tensor]
) -> None:
    grads = _call(who, "grad(objective)", lambda: grad(objective)(params, data), _PURE)
    if not all(torch.isfinite(g).all() for g in grads.values()):
        _fail(who, "the objective's gradient is not finite with a fresh model", _PURE)
    if all(g.abs().max() == 0 for g in grads.values()):
        _fail(
            who,
            "the objective's gradient is zero for every parameter",
            "compute the loss from model(params, inputs), the learner called with the "
            "params it is given",
        )
