"""Few-shot polynomial regression: each task is a random polynomial on [-1, 1].

A task draws coefficients ``c_0 … c_d ~ U[low, high]`` and regresses ``y = Σ_k c_k x^k`` from K
support points ``x ~ U[-1, 1]``; the loss and the metric are the mean squared error. With the
default cubic and coefficients in [-1, 1], predicting 0 costs an MSE of about 0.56.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from mamlflow import ModelIO, Split, TaskBatch, TaskConfig, TaskFamily, TaskObjective
from mamlflow.rng import derive_key, uniform
from pydantic import Field, model_validator
from torch import Tensor

__all__ = ["Polynomial", "PolynomialConfig"]

Model = Callable[[dict[str, Tensor], Tensor], Tensor]

# Held-out splits draw from streams of their own, so no test task is ever trained on.
_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Coefficients, support inputs and query inputs come from independent streams: asking for more
# query points (evaluation at another size) leaves a task's function and support set unchanged.
_COEFFICIENTS, _SUPPORT, _QUERY = 0, 1, 2


class PolynomialConfig(TaskConfig):
    degree: int = Field(3, ge=0, le=10, description="highest power of x")
    coefficients: tuple[float, float] = Field(
        (-1.0, 1.0), description="range [low, high] every coefficient is drawn from"
    )
    x_range: tuple[float, float] = Field((-1.0, 1.0), description="range of the inputs x")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> PolynomialConfig:
        for key in ("coefficients", "x_range"):
            low, high = getattr(self, key)
            if not low <= high:
                raise ValueError(f"{key} must be [low, high] with low <= high, got {[low, high]}")
        return self


def _mse(model: Model) -> TaskObjective:
    def loss(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return (model(params, data["x"]) - data["y"]).pow(2).mean()

    return loss


class Polynomial(TaskFamily):
    """Few-shot regression of random polynomials."""

    name: ClassVar[str] = "polynomial"
    Config: ClassVar[type[TaskConfig]] = PolynomialConfig
    metric = "mse"
    description: ClassVar[str] = "y = Σ c_k x^k, random coefficients: few-shot regression"
    config: PolynomialConfig

    @property
    def io(self) -> ModelIO:
        return ModelIO(input_shape=(1,), output_dim=1)

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
        shots = self.config.shots if shots is None else shots
        query = self.config.query if query is None else query
        cfg = self.config
        # Every number is a pure function of (seed, split, iteration, task index): the same
        # meta-batch comes out however it is split, and a resumed run needs no sampler state.
        base = (seed, _SPLITS[split], iteration)
        low, high = cfg.coefficients
        coefficients = low + (high - low) * uniform(
            derive_key(*base, _COEFFICIENTS), task_indices, cfg.degree + 1
        )

        def part(stream: int, count: int) -> dict[str, Tensor]:
            x_low, x_high = cfg.x_range
            x = x_low + (x_high - x_low) * uniform(derive_key(*base, stream), task_indices, count)
            powers = x.unsqueeze(-1) ** torch.arange(cfg.degree + 1, dtype=x.dtype)
            y = (powers * coefficients.unsqueeze(1)).sum(-1)
            return {"x": x.unsqueeze(-1), "y": y.unsqueeze(-1)}

        return TaskBatch(
            support=part(_SUPPORT, shots),
            query=part(_QUERY, query),
            task_index=task_indices.clone(),
            info={"coefficients": coefficients},
        )

    def objective(self, model: Model) -> TaskObjective:
        return _mse(model)

    def score(self, model: Model) -> TaskObjective:
        return _mse(model)
