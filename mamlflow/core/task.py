"""Tasks: what a meta-batch is, and the interface a task family implements.

A ``TaskBatch`` holds the support and query data of many tasks as tensors with a leading task
dimension, so the batched kernel can ``vmap`` over it. A ``TaskFamily`` samples such a batch as a
pure function of ``(seed, iteration, global task index)``: the same meta-batch comes out however
it is later split across processes, and resuming a run needs no sampler state.

Reinforcement learning fits the same interface (see ``docs/rl.md``): ``sample`` returns the task
specifications (for example goals) and the family's ``objective`` is a policy-gradient surrogate
over trajectories that a rollout family collects with the current and the adapted parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import Tensor

from .config import TaskConfig

if TYPE_CHECKING:
    from .inputs import ImageInputs
    from .rl import RolloutTaskFamily

__all__ = [
    "SPLITS",
    "BatchSources",
    "Metric",
    "ModelIO",
    "Split",
    "StagedObjective",
    "TaskBatch",
    "TaskConfig",
    "TaskFamily",
    "TaskObjective",
]

Split = Literal["train", "val", "test"]
"""Training tasks, validation tasks (``train.val_every``) and test tasks (``metaflow eval``)."""
SPLITS: Mapping[Split, int] = {"train": 0, "val": 1, "test": 2}
"""Each split's number, to fold into random keys so no held-out task is ever trained on."""
Metric = Literal["mse", "accuracy", "return"]
TensorDict = dict[str, Tensor]
TaskObjective = Callable[[TensorDict, Mapping[str, Tensor]], Tensor]
"""A pure per-task function ``(params, data) -> scalar``, vmapped over tasks by the kernel."""


@dataclass(frozen=True)
class StagedObjective:
    """An objective split where the inner loop cannot change the first stage.

    ``self(params, data) == head(params, features(params, data))``. When the inner loop adapts
    only the parameters ``head`` reads (ANIL), ``features`` is the same before and after every
    inner step, so the batched kernels compute it once per task and run the inner steps on
    ``head`` alone. The reference loop calls the objective as a whole, so parity tests check
    the split too.
    """

    full: TaskObjective
    features: Callable[[TensorDict, Mapping[str, Tensor]], Mapping[str, Tensor]]
    head: TaskObjective
    head_params: frozenset[str]
    """The only parameters an inner loop may adapt: the ones ``head`` reads."""

    def __call__(self, params: TensorDict, data: Mapping[str, Tensor]) -> Tensor:
        return self.full(params, data)


@dataclass(frozen=True)
class ModelIO:
    """What a model must accept and produce for a task family."""

    input_shape: tuple[int, ...]
    output_dim: int
    input_key: str = "x"
    """The key of a task's data that the objective feeds to the model."""


@dataclass(frozen=True)
class TaskBatch:
    """Support and query data of ``num_tasks`` tasks; every tensor has a leading task dimension.

    ``task_index`` holds the global index of each task in its meta-batch, so a shard of the
    batch still knows which tasks it holds.
    """

    support: TensorDict
    query: TensorDict
    task_index: Tensor
    info: TensorDict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.task_index.shape[0]
        for part, tensors in (
            ("support", self.support),
            ("query", self.query),
            ("info", self.info),
        ):
            for key, value in tensors.items():
                if value.shape[:1] != (n,):
                    raise ValueError(
                        f"TaskBatch.{part}[{key!r}] has leading dim {tuple(value.shape[:1])}, "
                        f"expected ({n},): every tensor needs the task dimension first"
                    )

    @property
    def num_tasks(self) -> int:
        return int(self.task_index.shape[0])

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        *,
        non_blocking: bool = False,
    ) -> TaskBatch:
        """Move to ``device``; floating tensors are cast to ``dtype`` when given.

        ``non_blocking``: copy from pinned memory without waiting (see ``pin_memory``).
        """

        def move(d: TensorDict) -> TensorDict:
            return {
                k: v.to(
                    device,
                    dtype if dtype is not None and v.is_floating_point() else None,
                    non_blocking=non_blocking,
                )
                for k, v in d.items()
            }

        index = self.task_index.to(device, non_blocking=non_blocking)
        return TaskBatch(move(self.support), move(self.query), index, move(self.info))

    def pin_memory(self) -> TaskBatch:
        """A copy in page-locked host memory, which a CUDA device copies from asynchronously."""

        def pin(d: TensorDict) -> TensorDict:
            return {k: v.pin_memory() for k, v in d.items()}

        return TaskBatch(
            pin(self.support), pin(self.query), self.task_index.pin_memory(), pin(self.info)
        )

    def shard(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` of this batch (a contiguous shard for one process)."""

        def cut(d: TensorDict) -> TensorDict:
            return {k: v[start:stop] for k, v in d.items()}

        return TaskBatch(
            cut(self.support), cut(self.query), self.task_index[start:stop], cut(self.info)
        )


_T_co = TypeVar("_T_co", covariant=True)


class BatchSources(Protocol[_T_co]):
    """The ways an engine turns a family's tasks into meta-batches; see ``batch_source``."""

    def sampled(self, family: TaskFamily) -> _T_co:
        """Meta-batches as ``family.sample`` returns them (supervised families)."""
        ...

    def rollouts(self, family: RolloutTaskFamily) -> _T_co:
        """Meta-batches of trajectories ``family`` collects with θ and the adapted θ′."""
        ...


class TaskFamily(ABC):
    """A distribution over tasks, p(T) in the paper.

    Subclasses set ``name``, ``Config`` (a frozen ``TaskConfig`` subclass) and ``metric``, and are
    constructed with their validated config.
    """

    name: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    metric: ClassVar[Metric]
    description: ClassVar[str] = ""
    prefetch: ClassVar[bool] = False
    """Whether the trainer may call ``sample`` in a background thread, to build the next
    meta-batch while the current step runs. Set it when ``sample`` is a pure function of its
    arguments and of data loaded before training (it may run while the main thread samples
    validation tasks); a family with mutable state leaves it False."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def io(self) -> ModelIO:
        """Input shape (without batch dims) and output size a model needs for these tasks."""

    @abstractmethod
    def sample(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        """Sample the tasks ``task_indices`` (global indices) of meta-batch ``iteration``.

        Must be a pure function of its arguments: the same call returns the same tensors, and
        task ``i`` does not depend on which other indices are asked for. ``shots``/``query``
        override the configured sizes (evaluation at another K).
        """

    def sample_raw(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        """``sample``'s tasks before ``prepare``: the form cheapest to copy to a device.

        The engine samples with ``prepare(sample_raw(...).to(device), dtype)``, so data that is
        smaller before preprocessing (uint8 pixels are a quarter of float32) crosses to the
        device small and is preprocessed there. ``prepare(sample_raw(args), torch.float32)``
        must equal ``sample(args)``; the default is ``sample`` itself, with ``prepare`` a no-op.
        """
        return self.sample(seed, iteration, task_indices, split=split, shots=shots, query=query)

    def prepare(self, batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
        """Turn a ``sample_raw`` batch, on whatever device it is, into model inputs of ``dtype``.

        Runs where the batch is (the GPU in a GPU run), on every batch, so keep it a few tensor
        operations. Floating tensors the raw batch already holds are cast by ``TaskBatch.to``.
        """
        return batch

    @abstractmethod
    def objective(self, model: Callable[[TensorDict, Tensor], Tensor]) -> TaskObjective:
        """The per-task loss to adapt on and meta-learn: ``(params, data) -> scalar``.

        ``model(params, inputs)`` runs the learner functionally. The returned function is
        traced by ``torch.func`` and ``torch.compile``: keep it pure, with no Python branching on
        tensor values.
        """

    @abstractmethod
    def score(self, model: Callable[[TensorDict, Tensor], Tensor]) -> TaskObjective:
        """The per-task evaluation metric ``(params, data) -> scalar`` named by ``metric``."""

    def batch_source(self, sources: BatchSources[_T_co]) -> _T_co:
        """Which of the engine's ``sources`` makes this family's meta-batches: ``sampled``.

        The engine asks once per run. ``RolloutTaskFamily`` answers ``rollouts``; a family
        defines its data by ``sample`` (or ``simulate``), never by overriding this.
        """
        return sources.sampled(self)

    def manifest(self) -> dict[str, Any]:
        """Facts about the data a run uses (e.g. which classes each split holds), JSON-ready.

        The trainer saves a non-empty manifest as ``task.json`` in the run directory, so a run
        records exactly what it trained and will be tested on. None by default.
        """
        return {}

    def image_inputs(self, manifest: Mapping[str, Any]) -> ImageInputs | None:
        """How an image file becomes one of this family's inputs, or None when none do.

        ``manifest`` is what ``manifest()`` returned when the run trained (its ``task.json``),
        so a family can describe statistics of its training data (normalisation) without
        that data being present. ``metaflow adapt`` and ``predict`` read image folders with it.
        """
        return None

    def plot_examples(
        self,
        model: Callable[[TensorDict, Tensor], Tensor],
        before: TensorDict,
        after: TensorDict,
        batch: TaskBatch,
        path: str,
    ) -> bool:
        """Draw a few tasks before/after adaptation to ``path``; return False if not supported.

        ``before`` holds the meta-learned parameters, ``after`` the adapted ones with a leading
        task dimension.
        """
        return False
