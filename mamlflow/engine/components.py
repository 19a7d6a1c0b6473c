"""A run's live objects: the task family, learner, algorithm and adapter a config names."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import torch

from ..core import (
    Adapter,
    Algorithm,
    ConfigError,
    Learner,
    MetaStepFactory,
    Params,
    RunConfig,
    TaskFamily,
    TaskObjective,
)
from ..kernels import make_meta_step
from .guard import plugin_code
from .host import PluginHost
from .sources import BatchSource, batch_source

__all__ = ["Components", "build_components", "resolve_device"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError([f"device: {name!r} is not a device; use auto, cpu or cuda"]) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                [f"device: {name!r} requested but CUDA is not available; use --device cpu"]
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                [f"device: {name!r} does not exist; this machine has cuda:0..cuda:{count - 1}"]
            )
    return device


@dataclass(frozen=True)
class Components:
    """A run's live objects, built from its config through the plugin host."""

    config: RunConfig
    family: TaskFamily
    learner: Learner
    algorithm: Algorithm
    adapter: Adapter
    device: torch.device
    dtype: torch.dtype

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype the meta-step runs under ``torch.autocast`` in, or None (kernel.autocast)."""
        return None if self.config.kernel.autocast == "none" else torch.bfloat16

    def objective(self) -> TaskObjective:
        """The training loss the kernels differentiate (the algorithm's choice; see Algorithm)."""
        return self.algorithm.objective(self.family, self.learner)

    def meta_steps(self) -> MetaStepFactory:
        """Builds this run's meta-steps: the algorithm's ``make_meta_step`` over the kernels."""
        return functools.partial(self.algorithm.make_meta_step, maml=make_meta_step)

    @cached_property
    def source(self) -> BatchSource:
        """Where this run's meta-batches come from (sampled tasks or collected trajectories)."""
        c = self.config
        return batch_source(self.family, self.learner, self.objective(), self.adapter, c.inner)

    def initial_params(self) -> tuple[Params, Params]:
        params = self.learner.init_params()
        return params, self.adapter.learnables(params)


def build_components(config: RunConfig, host: PluginHost) -> Components:
    """Instantiate the task family, model, algorithm and adapter a config names.

    The model is initialised under ``torch.manual_seed(config.seed)``, so a seed fixes θ₀.
    """
    family_who = f"task family '{config.task.name}'"
    model_who = f"model '{config.model.name}'"
    algorithm_who = f"algorithm '{config.algorithm.name}'"
    with plugin_code(family_who, "__init__()", smaller="the task (task.*)"):
        family = host.task_family(config.task.name)(config.task)
    with plugin_code(algorithm_who, "__init__()"):
        algorithm = host.algorithm(config.algorithm.name)(config.algorithm)
    device = resolve_device(config.device)
    dtype = _DTYPES[config.kernel.dtype]
    with plugin_code(family_who, "io"):
        io = family.io
    with plugin_code(model_who, "build()", smaller="the model (model.*)"):
        model_plugin = host.model(config.model.name)(config.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module = model_plugin.build(io)
        learner = Learner(module).to(device, dtype)
    with plugin_code(algorithm_who, "adapter()"):
        adapter = algorithm.adapter(config.inner)
    return Components(config, family, learner, algorithm, adapter, device, dtype)
