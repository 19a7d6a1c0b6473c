"""Use a trained run: adapt its meta-learned θ to your own few examples, then predict.

``load_run(run_dir)`` gives a ``MetaModel``: the checkpoint's θ (and learned inner-loop tensors,
e.g. Meta-SGD's rates), the run's model, task family, algorithm and evaluation settings.
``MetaModel.adapt(support_x, support_y)`` runs the run's own inner loop, exactly as ``metaflow
eval`` adapts a held-out task (the same ``adaptation`` of the kernels, the same steps and
``eval.later_steps_lr_scale``), and returns an ``AdaptedModel``: an ``nn.Module`` holding the
adapted weights. ``MetaModel.adapt_many`` adapts many independent tasks in one vmapped call, the
batched kernel, for serving.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import vmap

from ..core import (
    Adapter,
    CheckpointError,
    ConfigError,
    DataError,
    ImageInputs,
    Metric,
    ModelIO,
    Params,
    RolloutTaskFamily,
    RunConfig,
    RunDir,
    TaskBatch,
    TaskFamily,
    __version__,
    atomic_write,
    batch_statistics_layers,
    rundir,
    statistics_from_first,
    strict_json,
)
from ..kernels import Adaptation, adaptation
from .checkpoint import Checkpoint, load_checkpoint
from .components import _DTYPES, Components, build_components, resolve_device
from .guard import plugin_code
from .host import PluginHost, get_host
from .resolution import load_saved

__all__ = ["AdaptedModel", "MetaModel", "answers", "load_adapted", "load_run"]


def load_run(
    run_dir: str | Path,
    checkpoint: Literal["final", "best"] = "final",
    *,
    device: str | None = None,
    dtype: Literal["float32", "float64"] | None = None,
    host: PluginHost | None = None,
) -> MetaModel:
    """The meta-trained model of ``run_dir`` (its ``checkpoint.pt``, or ``checkpoint_best.pt``).

    ``device``: where to adapt and predict (default: the run's ``device``, ``auto`` → CUDA when
    there is one); ``dtype``: of the parameters and inputs (default: the run's
    ``kernel.dtype``). Raises ``CheckpointError`` with the fix when the directory holds no run
    or no such checkpoint.
    """
    if checkpoint not in ("final", "best"):
        raise ValueError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")
    host = get_host() if host is None else host
    files = RunDir(Path(run_dir))
    if not files.path.is_dir():
        raise CheckpointError(f"{files.path}: no such run directory; pass one `metaflow run` made")
    config = load_saved(host, files.config).config
    if device is not None:
        config = config.model_copy(update={"device": device})
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        config = config.model_copy(
            update={"kernel": config.kernel.model_copy(update={"dtype": dtype})}
        )
    name = rundir.BEST_CHECKPOINT if checkpoint == "best" else rundir.CHECKPOINT
    if checkpoint == "best" and not (files.path / name).is_file():
        raise CheckpointError(
            f"no {name} in {files.path}: a run keeps one only when it validates "
            "(train.val_every); use the final checkpoint"
        )
    ckpt = load_checkpoint(files.path, name)
    return MetaModel(build_components(config, host), ckpt, files.path, checkpoint)


class _IsRollouts:
    """``TaskFamily.batch_source``'s answer to "are your tasks environments?"."""

    def sampled(self, family: TaskFamily) -> bool:
        return False

    def rollouts(self, family: RolloutTaskFamily) -> bool:
        return True


@dataclass(frozen=True)
class _Task:
    """One task's support set, on the model's device: ``x`` (n, *input) and ``y``."""

    x: Tensor
    y: Tensor


class MetaModel:
    """A run's meta-learned initialisation, ready to adapt to new tasks (see ``load_run``)."""

    def __init__(
        self, components: Components, ckpt: Checkpoint, run_dir: Path, checkpoint: str
    ) -> None:
        self.components = components
        self.rollouts: bool = components.family.batch_source(_IsRollouts())
        """A reinforcement-learning run: adapt with ``adapt_to_task``, not ``adapt``."""
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.iteration = ckpt.iteration
        c = components
        self.params: Params = {k: v.to(c.device, c.dtype) for k, v in ckpt.params.items()}
        self.learnables: Params = {k: v.to(c.device, c.dtype) for k, v in ckpt.learnables.items()}

    # -- what the run is

    @property
    def config(self) -> RunConfig:
        return self.components.config

    @property
    def metric(self) -> Metric:
        """``accuracy``: the model classifies (outputs logits); ``mse``: it regresses."""
        return self.components.family.metric

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.components.family.io.input_shape)

    @property
    def output_dim(self) -> int:
        return int(self.components.family.io.output_dim)

    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def image_inputs(self) -> ImageInputs | None:
        """How an image file becomes this run's input (``TaskFamily.image_inputs``), or None."""
        path = self.run_dir / rundir.TASK_MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise CheckpointError(f"{path}: unreadable ({_one_line(error)}); restore it") from None
        family = self.components.family
        with plugin_code(f"task family '{family.name}'", "image_inputs()"):
            return family.image_inputs(manifest if isinstance(manifest, dict) else {})

    @property
    def dtype(self) -> torch.dtype:
        return self.components.dtype

    # -- adaptation

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        lr: float | None = None,
    ) -> AdaptedModel:
        """θ adapted to one task by the run's inner loop; ``steps``/``lr``: ``eval.steps`` and
        ``inner.lr`` by default (``lr`` is refused when the algorithm learns its rates)."""
        self._supervised("adapt")
        task = self._task(support_x, support_y)
        steps, adapter = self._settings(steps, lr)
        adapt = self._adaptation(adapter)
        with torch.no_grad():
            path = adapt(self.params, self.learnables, [self._data(task)] * steps)
        self._check_finite(path, lr)
        return self._adapted(path[-1] if path else self.params, task, steps, lr)

    def adapt_many(
        self,
        tasks: Sequence[tuple[Tensor, Tensor]],
        *,
        steps: int | None = None,
        lr: float | None = None,
    ) -> list[AdaptedModel]:
        """Adapt independent tasks ``[(support_x, support_y), …]`` at once (``vmap`` over tasks).

        Tasks with the same support size are adapted in one call; the result is, to rounding,
        ``[adapt(x, y) for x, y in tasks]`` (a test holds it to that).
        """
        self._supervised("adapt_many")
        checked = [self._task(x, y) for x, y in tasks]
        steps, adapter = self._settings(steps, lr)
        adapt = self._adaptation(adapter)

        def last(params: Params, learnables: Params, data: dict[str, Tensor]) -> Params:
            return adapt(params, learnables, [data] * steps)[-1] if steps else params

        batched = vmap(last, in_dims=(None, None, 0))
        out: list[AdaptedModel | None] = [None] * len(checked)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, task in enumerate(checked):
            groups.setdefault(tuple(task.x.shape), []).append(i)
        for members in groups.values():
            data = {
                "x": torch.stack([checked[i].x for i in members]),
                "y": torch.stack([checked[i].y for i in members]),
            }
            with torch.no_grad():
                adapted = batched(self.params, self.learnables, data)
            metrics = self._support_metrics(adapted, data, batched=True)
            for j, i in enumerate(members):
                params = {k: v[j] for k, v in adapted.items()}
                self._check_finite([params], lr, last=steps)
                out[i] = self._adapted(params, checked[i], steps, lr, metrics[j])
        return [m for m in out if m is not None]

    def adapt_to_task(
        self,
        task: Mapping[str, Any],
        *,
        steps: int | None = None,
        trajectories: int | None = None,
        seed: int = 0,
    ) -> AdaptedModel:
        """A reinforcement-learning run's policy adapted to the task ``task`` describes.

        ``task`` holds what the family's ``sample`` puts in a task's ``info`` (navigation:
        ``{"goal": [x, y]}``). The run's own procedure, as ``metaflow eval`` runs it: collect
        ``trajectories`` (default ``eval.shots`` or ``task.shots``) with the policy, take an
        inner policy-gradient step, collect again with the adapted policy, ``steps`` times
        (default ``eval.steps``); ``seed`` keys the environments' and policy's noise.
        """
        if not self.rollouts:
            raise ConfigError(
                [
                    f"task.name: '{self.config.task.name}' is supervised; adapt it to examples "
                    "with adapt(support_x, support_y)"
                ]
            )
        c = self.components
        steps, _ = self._settings(steps, None)
        shots = trajectories or (c.config.eval.shots or (c.config.task.shots,))[0]
        info = self._task_info(task)
        evaluator = c.source.evaluator(
            self.params,
            self.learnables,
            steps=steps,
            shots=shots,
            seed=seed,
            split="test",
            later_scale=c.config.eval.later_steps_lr_scale,
        )
        batch = TaskBatch({}, {}, torch.zeros(1, dtype=torch.int64, device=c.device), info)
        with torch.no_grad():
            returns, adapted = evaluator(batch)
        params = {k: v[0] for k, v in adapted.items()}
        self._check_finite([params], None, last=steps)
        curve = [float(r) for r in returns[0]]
        return self._wrap(
            params,
            support=None,
            steps=steps,
            rate=c.config.inner.lr,
            before={"return": curve[0]},
            after={"return": curve[-1]},
            inputs={
                "kind": "table",
                "columns": [f"obs{i}" for i in range(self.input_shape[0])],
                "targets": [f"action{i}" for i in range(self.output_dim // 2)],
            },
            extra={
                "task": {k: v[0].tolist() for k, v in info.items()},
                "trajectories": shots,
                "returns": curve,
            },
        )

    def _task_info(self, task: Mapping[str, Any]) -> dict[str, Tensor]:
        """``task`` as a one-task ``info``, checked against what the family samples."""
        c = self.components
        with plugin_code(f"task family '{c.family.name}'", "sample()"):
            example = c.family.sample(0, 0, torch.arange(1), split="test").info
        if set(task) != set(example):
            raise DataError(
                f"a '{c.family.name}' task is given by {', '.join(sorted(example))}; got "
                f"{', '.join(sorted(task)) or 'nothing'}"
            )
        info = {}
        for key, like in example.items():
            try:
                value = torch.as_tensor(task[key], dtype=like.dtype).reshape(like.shape[1:])
            except (TypeError, ValueError, RuntimeError):
                raise DataError(
                    f"task {key}: {task[key]!r} is not {like.dtype} values of shape "
                    f"{tuple(like.shape[1:])}"
                ) from None
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise DataError(f"task {key}: {task[key]!r} holds NaN or inf")
            info[key] = value[None].to(c.device)
        return info

    def _supervised(self, method: str) -> None:
        if self.rollouts:
            raise ConfigError(
                [
                    f"task.name: '{self.config.task.name}' is a reinforcement-learning family: "
                    f"{method} takes examples; adapt its policy with adapt_to_task({{...}})"
                ]
            )

    def _settings(self, steps: int | None, lr: float | None) -> tuple[int, Adapter]:
        c = self.components
        steps = c.config.eval.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        if lr is None:
            return steps, c.adapter
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if self.learnables:
            raise ConfigError(
                [
                    f"lr: algorithm '{c.config.algorithm.name}' adapts with the inner "
                    "learning rates it meta-learned; leave lr unset"
                ]
            )
        inner = c.config.inner.model_copy(update={"lr": float(lr)})
        with plugin_code(f"algorithm '{c.config.algorithm.name}'", "adapter()"):
            return steps, c.algorithm.adapter(inner)

    def _adaptation(self, adapter: Adapter) -> Adaptation:
        c = self.components
        return adaptation(
            c.family.objective(c.learner),
            adapter,
            first_order=True,
            later_scale=c.config.eval.later_steps_lr_scale,
        )

    def _task(self, support_x: Tensor, support_y: Tensor) -> _Task:
        """The support set checked against what the run's model takes, on its device."""
        x, y = torch.as_tensor(support_x), torch.as_tensor(support_y)
        shape = self.input_shape
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] < 1:
            raise DataError(
                f"support_x has shape {tuple(x.shape)}; this run's model takes (n, "
                f"{', '.join(map(str, shape))}) with n >= 1"
            )
        if not x.is_floating_point():
            raise DataError(f"support_x is {x.dtype}; pass floating-point inputs")
        if y.shape[:1] != x.shape[:1]:
            raise DataError(
                f"support_y has {y.shape[0] if y.dim() else 0} targets for {x.shape[0]} inputs"
            )
        if not bool(torch.isfinite(x).all()):
            raise DataError("support_x holds NaN or inf; pass finite inputs")
        y = self._labels(y) if self.metric == "accuracy" else self._targets(y, x.shape[0])
        return _Task(x.to(self.device, self.dtype), y)

    def _labels(self, y: Tensor) -> Tensor:
        ways = self.output_dim
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise DataError(f"support_y must be integer class labels of shape (n,), got {y.dtype}")
        present = sorted(set(y.tolist()))
        if present != list(range(ways)):
            raise DataError(
                f"support_y holds classes {present}; this run's model is {ways}-way: give "
                f"examples of exactly {ways} classes labelled 0..{ways - 1}"
            )
        return y.to(self.device, torch.int64)

    def _targets(self, y: Tensor, n: int) -> Tensor:
        out = self.output_dim
        y = y.reshape(n, -1) if y.dim() == 1 else y
        if y.dim() != 2 or y.shape[1] != out:
            raise DataError(f"support_y has shape {tuple(y.shape)}; this run predicts (n, {out})")
        if not bool(torch.isfinite(y).all()):
            raise DataError("support_y holds NaN or inf; pass finite targets")
        return y.to(self.device, self.dtype)

    @staticmethod
    def _data(task: _Task) -> dict[str, Tensor]:
        return {"x": task.x, "y": task.y}

    @staticmethod
    def _check_finite(path: list[Params], lr: float | None, *, last: int | None = None) -> None:
        """Every step's parameters finite; ``last``: ``path`` holds only the parameters after
        that many steps (a batched adaptation keeps no path), so the step is an upper bound."""
        for step, params in enumerate(path, start=1):
            bad = [k for k, v in params.items() if not bool(torch.isfinite(v).all())]
            if bad:
                when = f"at step {step}" if last is None else f"by step {last}"
                rate = "" if lr is None else f" (lr {lr:g})"
                raise DataError(
                    f"adaptation produced NaN or inf in {bad[0]} {when}{rate}; "
                    "adapt with a smaller lr or fewer steps"
                )

    def _support_metrics(
        self, adapted: Params, data: dict[str, Tensor], *, batched: bool
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """(before, after) loss (and accuracy) on the support set, per task of ``data``
        (``batched``: a leading task dimension on ``data`` and ``adapted``, one vmapped call)."""
        c = self.components
        fns = {"loss": c.family.objective(c.learner)}
        if self.metric == "accuracy":
            fns["accuracy"] = c.family.score(c.learner)
        values: dict[str, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            for key, fn in fns.items():
                if batched:
                    before = vmap(fn, in_dims=(None, 0))(self.params, data)
                    after = vmap(fn, in_dims=(0, 0))(adapted, data)
                else:
                    before, after = fn(self.params, data)[None], fn(adapted, data)[None]
                values[key] = (before.double().cpu(), after.double().cpu())
        tasks = next(iter(values.values()))[0].shape[0]
        return [
            ({k: float(v[0][i]) for k, v in values.items()},
             {k: float(v[1][i]) for k, v in values.items()})
            for i in range(tasks)
        ]  # fmt: skip

    def _adapted(
        self,
        params: Params,
        task: _Task,
        steps: int,
        lr: float | None,
        metrics: tuple[dict[str, float], dict[str, float]] | None = None,
    ) -> AdaptedModel:
        c = self.components
        if metrics is None:
            (metrics,) = self._support_metrics(params, self._data(task), batched=False)
        before, after = metrics
        rate = lr if lr is not None else "learned" if self.learnables else c.config.inner.lr
        return self._wrap(
            params,
            support=task.x,
            steps=steps,
            rate=rate,
            before=before,
            after=after,
            extra={"support_examples": int(task.x.shape[0])},
        )

    def _wrap(
        self,
        params: Params,
        *,
        support: Tensor | None,
        steps: int,
        rate: float | str,
        before: dict[str, float],
        after: dict[str, float],
        extra: dict[str, Any],
        inputs: dict[str, Any] | None = None,
    ) -> AdaptedModel:
        """An ``AdaptedModel`` of ``params`` with its manifest."""
        c = self.components
        module = copy.deepcopy(c.learner.module)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(params[name])
        module.requires_grad_(False).eval()
        batch_norm = bool(batch_statistics_layers(module))
        manifest = {
            "format": ADAPTED_FORMAT,
            "version": ADAPTED_VERSION,
            "mamlflow": __version__,
            "source": {
                "run_dir": str(self.run_dir.resolve()),
                "checkpoint": self.checkpoint,
                "iteration": self.iteration,
                "preset": c.config.preset,
                "task": c.config.task.name,
                "algorithm": c.config.algorithm.name,
            },
            "model": {
                "name": c.config.model.name,
                "config": c.config.model.model_dump(mode="json"),
                "input_shape": list(self.input_shape),
                "output_dim": self.output_dim,
                "dtype": str(self.dtype).removeprefix("torch."),
            },
            "metric": self.metric,
            "classes": None,
            "inputs": inputs
            or (None if self.image_inputs is None else self.image_inputs.as_json()),
            "normalisation": "support" if batch_norm and support is not None else "none",
            "adaptation": {"steps": steps, "lr": rate, **extra, "before": before, "after": after},
        }
        return AdaptedModel(module, support=support if batch_norm else None, manifest=manifest)


ADAPTED_FORMAT = "mamlflow-adapted"
ADAPTED_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "adapted.json"


class AdaptedModel(nn.Module):
    """A model adapted to one task: ``model(x)`` gives outputs, ``predict(x)`` the answers.

    For ``metric`` ``accuracy`` (classification) ``predict`` gives class probabilities (softmax
    of the logits), for ``mse`` the predicted values. A model with batch-statistics layers keeps
    its support inputs (``support``) and normalises every input by their statistics, so an
    example gets the same answer alone as in any batch (``eval.transductive=false``).
    ``manifest`` holds where the model came from and how it was adapted (``adapted.json``).
    """

    support: Tensor | None

    def __init__(
        self, module: nn.Module, *, support: Tensor | None, manifest: dict[str, Any]
    ) -> None:
        super().__init__()
        self.module = module
        if support is not None:
            self.register_buffer("support", support.detach().clone())
        else:
            self.support = None
        self.manifest = manifest

    @property
    def metric(self) -> Metric:
        return self.manifest["metric"]

    @property
    def classes(self) -> list[str] | None:
        """Class names by label, when the support set named them (a folder per class)."""
        return self.manifest.get("classes")

    def forward(self, x: Tensor) -> Tensor:
        if self.support is None:
            return self.module(x)
        rows = self.support.shape[0]
        with statistics_from_first(self.module, rows):
            return self.module(torch.cat([self.support, x]))[rows:]

    @torch.no_grad()
    def predict(self, x: Tensor, *, batch_size: int = 256) -> Tensor:
        """Probabilities ``(n, classes)``, values ``(n, outputs)``, or a policy's mean actions
        ``(n, actions)`` for inputs (observations) ``x``."""
        p = next(self.module.parameters())
        x = torch.as_tensor(x).to(p.device, p.dtype)
        out = torch.cat([self(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        return answers(out, self.metric, int(self.manifest["model"]["output_dim"]))

    def save(self, folder: str | Path, *, extra: Mapping[str, bytes] | None = None) -> Path:
        """Write ``folder/model.safetensors`` and ``folder/adapted.json`` (and ``extra`` files,
        e.g. a plot), all or nothing.

        An existing adapted model there is replaced; any other non-empty folder is refused.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
            raise DataError(
                f"{folder}: exists and holds no adapted model; choose another --out or empty it"
            )
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(tensors, str(staging / WEIGHTS))
            atomic_write(staging / MANIFEST, strict_json(self.manifest, indent=2).encode() + b"\n")
            for name, data in (extra or {}).items():
                (staging / name).write_bytes(data)
            _swap_in(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


def answers(outputs: Tensor, metric: Metric, output_dim: int) -> Tensor:
    """What ``predict`` returns from a model's outputs: class probabilities for ``accuracy``,
    the values for ``mse``, a Gaussian policy's mean action for ``return`` (rollout families'
    policies output the mean and log-std, ``output_dim`` in all: the first half)."""
    if metric == "accuracy":
        return outputs.softmax(-1)
    if metric == "return":
        return outputs[..., : output_dim // 2]
    return outputs


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging`` with renames, so it is never half-written."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_adapted(
    folder: str | Path, *, device: str | None = None, host: PluginHost | None = None
) -> AdaptedModel:
    """The adapted model ``AdaptedModel.save`` (``metaflow adapt``) wrote to ``folder``.

    Needs the model's plugin (not the run or its data). Raises ``CheckpointError`` naming the
    problem: no adapted model there, another format version, or weights that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = _read_manifest(folder)
    host = get_host() if host is None else host
    model = manifest["model"]
    plugin_cls = host.model(model["name"])
    try:
        config = plugin_cls.Config.model_validate(model["config"])
        io = ModelIO(tuple(model["input_shape"]), int(model["output_dim"]))
        dtype = _DTYPES[model["dtype"]]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{folder / MANIFEST}: its model section does not load ({_one_line(error)}); "
            "adapt again with `metaflow adapt`"
        ) from None
    with plugin_code(f"model '{model['name']}'", "build()"):
        module = plugin_cls(config).build(io)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(
            f"{folder / WEIGHTS}: unreadable ({_one_line(error)}); adapt again with "
            "`metaflow adapt`"
        ) from None
    support = tensors.pop("support", None)
    adapted = AdaptedModel(module.to(dtype), support=support, manifest=manifest)
    try:
        adapted.load_state_dict(tensors if support is None else {**tensors, "support": support})
    except RuntimeError as error:
        raise CheckpointError(
            f"{folder / WEIGHTS}: does not fit model '{model['name']}' ({_one_line(error)}); "
            "adapt again with `metaflow adapt`"
        ) from None
    target = resolve_device(device or "cpu")
    return adapted.to(target).requires_grad_(False).eval()


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; pass a folder that `metaflow adapt` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: unreadable ({_one_line(error)}); adapt again with `metaflow adapt`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != ADAPTED_FORMAT:
        raise CheckpointError(f"{path}: not a mamlflow adapted model; adapt with `metaflow adapt`")
    if manifest.get("version") != ADAPTED_VERSION:
        raise CheckpointError(
            f"{path}: adapted-model format version {manifest.get('version')!r}, but this "
            f"mamlflow ({__version__}) reads version {ADAPTED_VERSION}; adapt again with this "
            "version's `metaflow adapt`, or use the mamlflow that wrote it "
            f"({manifest.get('mamlflow', 'unknown')})"
        )
    if not isinstance(manifest.get("model"), dict) or manifest.get("metric") not in (
        "accuracy",
        "mse",
        "return",
    ):
        raise CheckpointError(f"{path}: damaged (no model or metric); adapt again")
    return manifest


def _one_line(error: object) -> str:
    return " ".join(str(error).split())
