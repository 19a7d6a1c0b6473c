"""Run configuration: the schema of a run and its resolution from presets, files and ``--set``.

Sections with a ``name`` (``task``, ``model``, ``algorithm``, ``outer``) are validated by the
``Config`` class of the plugin the name selects; the others have fixed schemas below. Every model
is frozen and forbids unknown keys, so a typo is an error rather than a silently ignored value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from .algorithm import AlgorithmConfig
from .learner import ModelConfig
from .optim import OuterConfig
from .task import TaskConfig

__all__ = [
    "EvalConfig",
    "InnerConfig",
    "KernelConfig",
    "Preset",
    "RunConfig",
    "TrainConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainConfig(_Section):
    iterations: int = Field(70_000, ge=1, description="meta-training iterations (outer steps)")
    meta_batch_size: int = Field(25, ge=1, description="tasks per outer step")
    time_limit: float | None = Field(
        None, gt=0, description="seconds; stop cleanly with a checkpoint when exceeded"
    )
    log_every: int = Field(100, ge=1, description="iterations between metrics records")
    checkpoint_every: int = Field(5_000, ge=1, description="iterations between checkpoints")
    callbacks: tuple[str, ...] = Field(("metrics",), description="callback plugins to enable")


class InnerConfig(_Section):
    steps: int = Field(1, ge=0, description="inner gradient steps during meta-training")
    lr: float = Field(0.01, gt=0, description="inner learning rate (α in the paper)")
    first_order: bool = Field(False, description="drop second derivatives (first-order MAML)")


class KernelConfig(_Section):
    strategy: Literal["auto", "batched", "compiled", "loop"] = Field(
        "auto", description="meta-step implementation; loop is the per-task reference"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter dtype")


class EvalConfig(_Section):
    shots: tuple[int, ...] = Field((), description="support sizes to evaluate; empty: task.shots")
    steps: int = Field(10, ge=0, description="adaptation steps at test time")
    tasks: int = Field(1000, ge=2, description="held-out tasks")
    query: int | None = Field(None, ge=1, description="query examples per task; null: task.query")
    batch_size: int = Field(100, ge=1, description="tasks adapted at once during evaluation")
    split: Literal["val", "test"] = Field("test", description="which held-out split")


class RunConfig(_Section):
    """A fully resolved run configuration, saved as ``config.json`` in the run directory."""

    preset: str | None = Field(None, description="the preset this run started from")
    seed: int = Field(0, description="seeds initialisation and every task sample")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    task: SerializeAsAny[TaskConfig]
    model: SerializeAsAny[ModelConfig]
    algorithm: SerializeAsAny[AlgorithmConfig]
    outer: SerializeAsAny[OuterConfig]
    inner: InnerConfig = InnerConfig()
    train: TrainConfig = TrainConfig()
    kernel: KernelConfig = KernelConfig()
    eval: EvalConfig = EvalConfig()


@dataclass(frozen=True)
class Preset:
    """A named configuration; ``values`` is a nested mapping of config keys."""

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)
