"""The run configuration's schema: every section, the bases of plugin sections, and presets.

Sections with a ``name`` (``task``, ``model``, ``algorithm``, ``outer``) are validated by the
``Config`` class of the plugin the name selects, which subclasses the base defined here; the
options of each callback ``train.callbacks`` enables (``callbacks.<name>``) by its ``Config``, a
``CallbackConfig``. The other sections have the fixed schemas below. Every model is frozen and
forbids unknown keys, so a typo is an error rather than a silently ignored value.

This module imports nothing else of mamlflow, so every contract can use it. Resolving a config
from presets, files and ``--set`` (which needs the plugins) is the engine's job
(``mamlflow.engine.resolve``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "SAVED_DEFAULT",
    "AlgorithmConfig",
    "CallbackConfig",
    "EvalConfig",
    "InnerConfig",
    "KernelConfig",
    "ModelConfig",
    "OuterConfig",
    "PluginConfig",
    "Preset",
    "RunConfig",
    "StrictConfig",
    "TaskConfig",
    "TrainConfig",
]


SAVED_DEFAULT = "saved_default"
"""Key of a field's ``json_schema_extra``: the value a run saved before the field existed used.

A new option whose default changes what an older run did (``Field("new", json_schema_extra=
{SAVED_DEFAULT: "old"})``): loading an older run's ``config.json``, which lacks the key, gives
it the old value, so evaluating or resuming that run does what it did.
"""


class StrictConfig(BaseModel):
    """What every config section is: frozen, no unknown keys, finite numbers, no true-for-1.

    A float option rejects ``inf`` and ``nan`` (a learning rate or a time limit that is not a
    number trains on NaN or never stops), and a number option rejects ``true``/``false``, which
    pydantic would otherwise read as 1 and 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None or not _holds_bool(value):
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is bool or bool in get_args(annotation):
            return value
        raise PydanticCustomError(
            "bool_for_number", "Input should be a number, not true or false; write e.g. 1"
        )


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value)


class PluginConfig(StrictConfig):
    """Frozen, strict configuration of one component; ``name`` selects the component."""

    name: str


class TaskConfig(PluginConfig):
    """Options every task family has; a family's own ``Config`` subclasses this."""

    shots: int = Field(
        10, ge=1, description="support examples per task (per class for classification)"
    )
    query: int = Field(
        10, ge=1, description="query examples per task (per class for classification)"
    )


class ModelConfig(PluginConfig):
    """Options every model has; a model plugin's own ``Config`` subclasses this."""


class AlgorithmConfig(PluginConfig):
    """Options every algorithm has; an algorithm's own ``Config`` subclasses this."""


class OuterConfig(PluginConfig):
    """Options every outer optimizer has; a plugin's own ``Config`` subclasses this."""

    lr: float = Field(1e-3, gt=0, description="meta learning rate (β in the paper)")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant",
        description="constant: lr throughout; cosine: from lr down to min_lr over "
        "train.iterations (cosine annealing, as MAML++ does); linear: from lr down to min_lr "
        "in a straight line (Reptile's annealed outer step size). A --resume that raises "
        "train.iterations stretches the rest of the curve",
    )
    min_lr: float = Field(0.0, ge=0, description="the final learning rate of a decaying schedule")
    clip_norm: float | None = Field(
        None, gt=0, description="scale the meta-gradient down to this global L2 norm if above"
    )
    clip_value: float | None = Field(
        None, gt=0, description="clamp every meta-gradient entry to [-clip_value, clip_value]"
    )


class CallbackConfig(StrictConfig):
    """Options of one callback, set under ``callbacks.<name>`` (e.g. ``callbacks.csv``).

    Frozen and strict like every plugin config, so a misspelled option is an error. The
    callback's name is the key it is set under, so unlike task or model configs there is no
    ``name`` field. A callback without options uses this class as it is.
    """


class _Section(StrictConfig):
    pass


class TrainConfig(_Section):
    """The ``train`` section: how long to meta-train, and what to log, validate and keep."""

    iterations: int = Field(70_000, ge=1, description="meta-training iterations (outer steps)")
    meta_batch_size: int = Field(25, ge=1, description="tasks per outer step")
    time_limit: float | None = Field(
        None, gt=0, description="seconds; stop cleanly with a checkpoint when exceeded"
    )
    log_every: int = Field(100, ge=1, description="iterations between metrics records")
    checkpoint_every: int = Field(5_000, ge=1, description="iterations between checkpoints")
    checkpoint_every_minutes: float | None = Field(
        None,
        gt=0,
        description="also checkpoint when this many minutes of wall-clock time have passed since "
        "the last checkpoint (null: by iterations only)",
    )
    val_every: int | None = Field(
        None, ge=1, description="iterations between validations (null: never); keeps the best"
    )
    val_tasks: int = Field(200, ge=2, description="validation tasks, adapted eval.steps steps")
    callbacks: tuple[str, ...] = Field(
        ("metrics",),
        description="callback plugins to enable, e.g. [metrics, csv, early_stopping] (list: "
        "metaflow plugins); their options go under callbacks.<name>",
    )


class InnerConfig(_Section):
    """The ``inner`` section: the inner loop an ``Algorithm.adapter`` builds its rule from."""

    steps: int = Field(1, ge=0, description="inner gradient steps during meta-training")
    lr: float = Field(0.01, gt=0, description="inner learning rate (α in the paper)")
    first_order: bool = Field(False, description="drop second derivatives (first-order MAML)")


class KernelConfig(_Section):
    """The ``kernel`` section: how the meta-step is computed (strategy, dtype, autocast,
    threads)."""

    strategy: Literal[
        "auto", "loop", "batched", "compiled", "compiled-loop", "compiled-split", "cudagraphs"
    ] = Field(
        "auto",
        description="meta-step implementation: auto times the candidates on the first batch "
        "and keeps the fastest that matches loop, the per-task reference",
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter dtype")
    autocast: Literal["none", "bfloat16"] = Field(
        "none",
        description="bfloat16: run the meta-step's convolutions and matmuls in bfloat16 under "
        "torch.autocast (CPUs with AVX512-BF16 or AMX, recent GPUs); parameters, optimizer and "
        "evaluation stay in kernel.dtype. Changes the numerics: see docs/results.md for its "
        "measured effect on speed and accuracy",
    )
    threads: Literal["auto"] | int = Field(
        "auto",
        description="CPU intra-op threads: auto times the meta-step with one thread and with "
        "every core (interleaved, median) on runs long enough to repay it, keeps the faster, "
        "and measures again when live steps stay over twice as slow; N fixes it (so does "
        "MAMLFLOW_THREADS=N)",
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto":
            return value
        count = value
        if isinstance(value, str) and value.strip().isdigit():
            count = int(value)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PydanticCustomError(
                "threads",
                "must be auto or a positive number of threads, got {value}",
                {"value": repr(value)},
            )
        return count


class EvalConfig(_Section):
    """The ``eval`` section: how ``metaflow eval`` and validation adapt and score."""

    shots: tuple[int, ...] = Field((), description="support sizes to evaluate; empty: task.shots")
    steps: int = Field(10, ge=0, description="adaptation steps at test time")
    tasks: int = Field(1000, ge=2, description="held-out tasks")
    query: int | None = Field(None, ge=1, description="query examples per task; null: task.query")
    batch_size: int = Field(100, ge=1, description="tasks adapted at once during evaluation")
    split: Literal["val", "test"] = Field("test", description="which held-out split")
    later_steps_lr_scale: float = Field(
        1.0,
        gt=0,
        description="multiply the update of every adaptation step after the first by this "
        "(the MAML authors' RL evaluation takes its first step at the trained rate and the "
        "later ones at half of it: 0.5)",
    )
    transductive: bool = Field(
        True,
        description="true: batch-statistics layers (batch norm) normalise the query set by its "
        "own statistics, as the paper scores it; false: by the support set's, so each query is "
        "scored as if predicted alone, as a deployed model must",
    )


class RunConfig(_Section):
    """A fully resolved run configuration, saved as ``config.json`` in the run directory."""

    preset: str | None = Field(None, description="the preset this run started from")
    seed: int = Field(
        0,
        ge=-(2**63),
        lt=2**64,
        description="seeds initialisation and every task sample (a 64-bit integer)",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    task: SerializeAsAny[TaskConfig]
    model: SerializeAsAny[ModelConfig]
    algorithm: SerializeAsAny[AlgorithmConfig]
    outer: SerializeAsAny[OuterConfig]
    inner: InnerConfig = InnerConfig()
    train: TrainConfig = TrainConfig()
    kernel: KernelConfig = KernelConfig()
    eval: EvalConfig = EvalConfig()
    callbacks: dict[str, SerializeAsAny[CallbackConfig]] = Field(
        default_factory=dict,
        description="options of each callback train.callbacks enables: callbacks.<name>.<option>",
    )


@dataclass(frozen=True)
class Preset:
    """A named configuration; ``values`` is a nested mapping of config keys."""

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def derive(self, name: str, description: str, values: Mapping[str, Any]) -> Preset:
        """A new preset: this one's values with ``values`` merged over them key by key.

        How an algorithm plugin pairs itself with a task family's schedule, e.g. ``omniglot``
        with ``algorithm.name=anil``, without copying (and drifting from) the family's preset.
        """

        def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(base)
            for key, value in over.items():
                old = out.get(key)
                both = isinstance(value, Mapping) and isinstance(old, Mapping)
                out[key] = merged(old, value) if both else value
            return out

        return Preset(name, description, merged(self.values, values))
