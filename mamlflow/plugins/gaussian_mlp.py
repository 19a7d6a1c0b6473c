"""A Gaussian MLP policy: the paper's RL model (two hidden layers of 100 ReLU, learned log-std)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from mamlflow.core import ConfigError, ModelConfig, ModelIO, ModelPlugin, hookimpl
from mamlflow.plugins.mlp import MLP, MLPConfig

__all__ = ["GaussianMLP", "GaussianMLPConfig", "GaussianPolicy"]


class GaussianMLPConfig(ModelConfig):
    hidden: tuple[PositiveInt, ...] = Field(
        (100, 100), description="width of each hidden layer (each at least 1)"
    )
    activation: Literal["relu", "tanh"] = Field("relu", description="hidden nonlinearity")
    init_log_std: float = Field(
        0.0, description="initial log standard deviation of every action dimension (rllab: 0)"
    )


class GaussianPolicy(nn.Module):
    """Observation → (action mean, log std): the std is a parameter, not a function of the state.

    The output concatenates the two along the last axis, which is what rollout task families
    read (``mamlflow.core.rl``).
    """

    def __init__(self, mean: nn.Module, act_dim: int, init_log_std: float) -> None:
        super().__init__()
        self.mean = mean
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.mean(obs)
        return torch.cat([mean, self.log_std.expand_as(mean)], -1)


class GaussianMLP(ModelPlugin):
    name: ClassVar[str] = "gaussian-mlp"
    Config: ClassVar[type[ModelConfig]] = GaussianMLPConfig
    description: ClassVar[str] = "Gaussian policy: MLP mean (2×100 ReLU), learned log-std"
    config: GaussianMLPConfig

    def build(self, io: ModelIO) -> nn.Module:
        if io.output_dim % 2 or len(io.input_shape) != 1:
            raise ConfigError(
                [
                    "model.name: gaussian-mlp is a policy for rollout task families (a flat "
                    f"observation in, 2×action_dim out); this task wants {io.input_shape} → "
                    f"{io.output_dim}: pick mlp or conv4"
                ]
            )
        act_dim = io.output_dim // 2
        # The mean network is exactly the mlp plugin's, built for the action dimensions.
        mean = MLP(
            MLPConfig(name="mlp", hidden=self.config.hidden, activation=self.config.activation)
        ).build(ModelIO(io.input_shape, act_dim))
        return GaussianPolicy(mean, act_dim, self.config.init_log_std)


@hookimpl
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    register(GaussianMLP)
