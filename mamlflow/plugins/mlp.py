"""A fully connected network: the paper's sinusoid model (1-40-40-1, ReLU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt
from torch import nn

from mamlflow.core import ModelConfig, ModelIO, ModelPlugin, hookimpl

__all__ = ["MLP", "MLPConfig"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLPConfig(ModelConfig):
    hidden: tuple[PositiveInt, ...] = Field(
        (40, 40), description="width of each hidden layer (each at least 1)"
    )
    activation: Literal["relu", "tanh"] = Field("relu", description="hidden nonlinearity")
    init: Literal["torch", "paper"] = Field(
        "torch",
        description="torch: PyTorch's default; paper: weights ~ truncated N(0, 0.01²), "
        "zero biases, as in the authors' code (cbfinn/maml)",
    )


class MLP(ModelPlugin):
    """Linear layers with a nonlinearity between them; inputs are flattened first."""

    name: ClassVar[str] = "mlp"
    Config: ClassVar[type[ModelConfig]] = MLPConfig
    description: ClassVar[str] = "fully connected network (sinusoid: 1-40-40-1 ReLU)"
    config: MLPConfig

    def build(self, io: ModelIO) -> nn.Module:
        layers: list[nn.Module] = []
        if len(io.input_shape) > 1:
            layers.append(nn.Flatten(start_dim=-len(io.input_shape)))
        width = 1
        for d in io.input_shape:
            width *= d
        for h in self.config.hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[self.config.activation]()]
            width = h
        layers.append(nn.Linear(width, io.output_dim))
        if self.config.init == "paper":
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                    nn.init.zeros_(layer.bias)
        return nn.Sequential(*layers)


@hookimpl
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    register(MLP)
