"""Shared by the checks: the reference built-ins, failing in one line, comparing batches."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any, NoReturn, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from mamlflow.core import (
    ModelConfig,
    ModelIO,
    ModelPlugin,
    Params,
    RolloutTaskFamily,
    TaskBatch,
    TaskFamily,
)
from mamlflow.engine import (
    PluginHost,
)

_C = TypeVar("_C")

# The built-ins the checks run other components against, looked up by name like any plugin.
_REFERENCE_PLUGINS = (
    "mamlflow.plugins.sinusoid",
    "mamlflow.plugins.navigation",
    "mamlflow.plugins.mlp",
    "mamlflow.plugins.gaussian_mlp",
    "mamlflow.plugins.maml",
    "mamlflow.plugins.optimizers",
    "mamlflow.plugins.callbacks",
)


@cache
def _reference_host() -> PluginHost:
    """A host of ``_REFERENCE_PLUGINS`` only: what a check needs, and nothing installed."""
    return PluginHost(builtins=_REFERENCE_PLUGINS, autoload=False)


def _family(name: str, **options: Any) -> TaskFamily:
    cls = _reference_host().task_family(name)
    return cls(cls.Config(name=name, **options))


def _model(name: str, **options: Any) -> ModelPlugin:
    cls = _reference_host().model(name)
    return cls(cls.Config(name=name, **options))


class _SmallModel:
    """A small model for a family, chosen as the engine chooses the family's batch source.

    ``family.batch_source(_SmallModel())`` asks the family, so no check branches on its type.
    """

    def sampled(self, family: TaskFamily) -> ModelPlugin:
        return _model("mlp", hidden=(16,))

    def rollouts(self, family: RolloutTaskFamily) -> ModelPlugin:
        return _model("gaussian-mlp", hidden=(16,))


# The algorithm check's bar, measured on sinusoid (K=10, one inner step, 500 iterations of 25
# tasks, Adam 0.01, seeds 0-3): maml, fomaml, metasgd and anil bring the held-out loss after
# adaptation to 0.14-0.35x its value before training; an algorithm whose inner loop does not
# adapt only learns the mean function and stays at 0.66-0.74x.
_LEARNING_RATIO = 0.5
# float64 meta-gradients of a correct batched kernel agree with the loop to ~1e-13 of the
# largest entry; a model that is not vmap-safe (F.batch_norm with affine weights, functorch
# #534) is off by ~1e-2.
_PARITY_RTOL = 1e-8
# The iteration the task family check samples (any but 0, so iteration 0 is not special-cased).
_ITERATION = 3
_PURE = (
    "return a pure function (params, data) -> 0-d tensor built from tensor ops only: no "
    ".item(), Python branching on tensor values or in-place updates (it runs under vmap, "
    "grad and torch.compile)"
)


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


def _raise(who: str, what: str, exc: BaseException, fix: str) -> NoReturn:
    """The check's one-line failure for ``exc``, raised by ``what``."""
    text = _one_line(f"{type(exc).__name__}: {exc}")
    text = text if len(text) <= 300 else text[:299] + "…"
    raise AssertionError(_one_line(f"{who}: {what} raised {text}; {fix}")) from exc


def _call(who: str, what: str, fn: Callable[[], _C], fix: str) -> _C:
    """``fn()``, with any exception turned into the check's one-line failure."""
    try:
        return fn()
    except AssertionError:
        raise
    except Exception as exc:
        _raise(who, what, exc, fix)


def _answer(who: str, what: str, fn: Callable[[], str | None]) -> str | None:
    """A ``check_*`` hook's answer: None, or one line saying why and what to do instead."""
    fix = "return None, or one line saying why it cannot work and what to do instead"
    answer = _call(who, what, fn, fix)
    if answer is not None and not (
        isinstance(answer, str) and answer.strip() and answer == _one_line(answer)
    ):
        _fail(who, f"{what} returned {answer!r}", fix)
    return answer


def _component_class(
    obj: Any, base: type[_C], config_base: type[BaseModel], label: str
) -> tuple[type[_C], str]:
    """The class of ``obj`` (a class or an instance of ``base``), checked, and its label."""
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
    return cls, who


def _default_config(who: str, cls: type, values: dict[str, Any], example: str) -> Any:
    """``cls.Config(**values)``, or the check's failure naming the value it lacks."""
    config = cls.Config
    try:
        return config(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        _fail(
            who,
            f"{config.__name__}() needs a value for {where} ({first['msg']})",
            f"pass an instance, e.g. {example}",
        )


def _instance(obj: Any, base: type[_C], config_base: type[BaseModel], label: str) -> _C:
    """``obj`` itself, or the class built from its Config's defaults, after checking the class."""
    cls, who = _component_class(obj, base, config_base, label)
    if isinstance(obj, base):
        return obj
    name = cls.name  # type: ignore[attr-defined]
    example = f"{cls.__name__}({cls.Config.__name__}(name={name!r}, ...))"  # type: ignore[attr-defined]
    return cls(_default_config(who, cls, {"name": name}, example))  # type: ignore[call-arg]


def _clone(tensors: Params) -> Params:
    return {k: v.detach().clone() for k, v in tensors.items()}


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


def _pick(batch: TaskBatch, picked: Tensor) -> TaskBatch:
    """Tasks ``picked`` (positions) of ``batch``, in that order."""
    return TaskBatch(
        {k: v[picked] for k, v in batch.support.items()},
        {k: v[picked] for k, v in batch.query.items()},
        picked,
        {k: v[picked] for k, v in batch.info.items()},
    )


def _span(index: Tensor) -> str:
    return f"[{int(index[0])}..{int(index[-1])}]"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _built(
    who: str,
    model: ModelPlugin | type[ModelPlugin],
    io: ModelIO,
    seed: int,
    fix: str = "build must not raise",
) -> nn.Module:
    """``model.build(io)`` under ``torch.manual_seed(seed)``, as the trainer builds it."""
    plugin = _instance(model, ModelPlugin, ModelConfig, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _call(who, f"build({io})", lambda: plugin.build(io), fix)
    if not isinstance(module, nn.Module):
        _fail(who, f"build() returned {type(module).__name__}", "return a torch.nn.Module")
    return module
