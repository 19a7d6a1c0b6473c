"""Sinusoid regression (the paper's section 5.1) and its ``sinusoid`` preset.

Each task regresses ``y = A sin(x - φ)`` with amplitude ``A ~ U[0.1, 5.0]``, phase
``φ ~ U[0, π]`` and inputs ``x ~ U[-5, 5]``, from K support points; the loss is the mean squared
error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from mamlflow.core import (
    SPLITS,
    ModelIO,
    Preset,
    Split,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    hookimpl,
    rng,
)

__all__ = ["Sinusoid", "SinusoidConfig"]

_PARAMS, _SUPPORT, _QUERY = 0, 1, 2  # independent random streams per task


class SinusoidConfig(TaskConfig):
    amplitude: tuple[float, float] = Field((0.1, 5.0), description="amplitude range A")
    phase: tuple[float, float] = Field((0.0, math.pi), description="phase range φ")
    x_range: tuple[float, float] = Field((-5.0, 5.0), description="input range of x")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> SinusoidConfig:
        for key in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, key)
            if not low <= high:
                raise ValueError(f"{key} must be [low, high] with low <= high, got {[low, high]}")
        return self


def _mse(model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
    def loss(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return (model(params, data["x"]) - data["y"]).pow(2).mean()

    return loss


class Sinusoid(TaskFamily):
    """Few-shot sinusoid regression."""

    name: ClassVar[str] = "sinusoid"
    Config: ClassVar[type[TaskConfig]] = SinusoidConfig
    metric = "mse"
    description: ClassVar[str] = "y = A sin(x - φ): few-shot regression (Finn et al. 2017, §5.1)"
    config: SinusoidConfig

    @property
    def io(self) -> ModelIO:
        return ModelIO(input_shape=(1,), output_dim=1)

    def _scaled(self, key: int, tasks: Tensor, count: int, span: tuple[float, float]) -> Tensor:
        low, high = span
        return low + (high - low) * rng.uniform(key, tasks, count)

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
        base = (seed, SPLITS[split], iteration)
        cfg = self.config
        unit = rng.uniform(rng.derive_key(*base, _PARAMS), task_indices, 2)
        amplitude = cfg.amplitude[0] + (cfg.amplitude[1] - cfg.amplitude[0]) * unit[:, 0:1]
        phase = cfg.phase[0] + (cfg.phase[1] - cfg.phase[0]) * unit[:, 1:2]
        xs = self._scaled(rng.derive_key(*base, _SUPPORT), task_indices, shots, cfg.x_range)
        xq = self._scaled(rng.derive_key(*base, _QUERY), task_indices, query, cfg.x_range)

        def part(x: Tensor) -> dict[str, Tensor]:
            return {"x": x.unsqueeze(-1), "y": (amplitude * torch.sin(x - phase)).unsqueeze(-1)}

        return TaskBatch(
            support=part(xs),
            query=part(xq),
            task_index=task_indices.clone(),
            info={"amplitude": amplitude[:, 0], "phase": phase[:, 0]},
        )

    def objective(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        return _mse(model)

    def score(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        return _mse(model)

    def plot_examples(
        self,
        model: Callable[[dict[str, Tensor], Tensor], Tensor],
        before: dict[str, Tensor],
        after: dict[str, Tensor],
        batch: TaskBatch,
        path: str,
    ) -> bool:
        # The paper's Figure 2: the true function, the support points, and the prediction
        # before and after adaptation, for a few tasks.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(4, batch.num_tasks)
        lo, hi = self.config.x_range
        grid = torch.linspace(lo, hi, 200, dtype=batch.support["x"].dtype)
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
        with torch.no_grad():
            pre = model(before, grid[:, None].to(batch.support["x"].device))[:, 0].cpu()
            for i, ax in enumerate(axes[0]):
                amp, ph = batch.info["amplitude"][i].item(), batch.info["phase"][i].item()
                post_params = {k: v[i] for k, v in after.items()}
                post = model(post_params, grid[:, None].to(pre.device))[:, 0].cpu()
                ax.plot(grid, amp * torch.sin(grid - ph), "r", label="ground truth")
                ax.plot(grid, pre, "--", color="tab:green", label="pre-update")
                ax.plot(grid, post, color="tab:blue", label="after adaptation")
                sx, sy = batch.support["x"][i, :, 0].cpu(), batch.support["y"][i, :, 0].cpu()
                ax.plot(sx, sy, "^", color="purple", label="support points")
                ax.set_title(f"A={amp:.2f}, φ={ph:.2f}, K={sx.numel()}")
                ax.set_xlim(lo, hi)
        axes[0][0].legend(loc="lower left", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True


SINUSOID_PRESET = Preset(
    name="sinusoid",
    description=(
        "Sinusoid regression, the paper's schedule: K=10, 1 step, α=0.01, 25 tasks, Adam 1e-3"
    ),
    values={
        "task": {"name": "sinusoid", "shots": 10, "query": 10},
        "model": {"name": "mlp", "hidden": [40, 40], "activation": "relu", "init": "paper"},
        "algorithm": {"name": "maml"},
        "inner": {"steps": 1, "lr": 0.01, "first_order": False},
        "outer": {"name": "adam", "lr": 1e-3},
        "train": {"iterations": 70_000, "meta_batch_size": 25},
        "eval": {"shots": [5, 10], "steps": 10, "tasks": 1000, "query": 100},
    },
)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(Sinusoid)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    register(SINUSOID_PRESET)
