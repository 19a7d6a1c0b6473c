"""The hook implementations: what this package adds to mamlflow.

This module is the package's entry point (``[project.entry-points.mamlflow]`` in
``pyproject.toml``). mamlflow imports it lazily, on the first lookup of any component, and calls
each hook once with a ``register`` callback.
"""

from __future__ import annotations

from collections.abc import Callable

from mamlflow import ModelPlugin, Preset, TaskFamily, hookimpl

from .fourier_mlp import FourierMLP
from .polynomial import Polynomial

__all__ = ["POLYNOMIAL_PRESET", "register_models", "register_presets", "register_task_families"]

POLYNOMIAL_PRESET = Preset(
    name="polynomial",
    description="cubic polynomials, K=10: Fourier-feature MLP, MAML, 1 step α=0.1, ~10 s on a CPU",
    values={
        "task": {"name": "polynomial", "degree": 3, "shots": 10, "query": 10},
        "model": {"name": "fourier-mlp", "frequencies": 4, "hidden": [40, 40]},
        "algorithm": {"name": "maml"},
        "inner": {"steps": 1, "lr": 0.1},
        "outer": {"name": "adam", "lr": 1e-3},
        "train": {"iterations": 2000, "meta_batch_size": 25, "log_every": 200},
        "eval": {"shots": [5, 10], "steps": 10, "tasks": 500, "query": 100},
    },
)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(Polynomial)


@hookimpl
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    register(FourierMLP)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    register(POLYNOMIAL_PRESET)
