"""An MLP on Fourier features of its input: ``[x, sin(πkx), cos(πkx) for k = 1..F]``.

Smooth functions on [-1, 1] are close to linear in these features, so the network needs fewer
inner steps to fit a new polynomial than an MLP on raw x does.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from mamlflow import ModelConfig, ModelIO, ModelPlugin
from pydantic import Field
from torch import Tensor, nn

__all__ = ["FourierFeatures", "FourierMLP", "FourierMLPConfig"]


class FourierMLPConfig(ModelConfig):
    frequencies: int = Field(4, ge=1, description="sin/cos pairs per input: k = 1..frequencies")
    hidden: tuple[int, ...] = Field((40, 40), description="width of each hidden layer")


class FourierFeatures(nn.Module):
    """``[x, sin(πkx), cos(πkx)]`` over the last dimension; no parameters."""

    def __init__(self, frequencies: int) -> None:
        super().__init__()
        # A buffer, not a parameter: the learner treats it as a constant, and it follows
        # the module's device and dtype.
        self.register_buffer("omega", math.pi * torch.arange(1, frequencies + 1.0))

    def forward(self, x: Tensor) -> Tensor:
        angles = (x.unsqueeze(-1) * self.omega).flatten(-2)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class FourierMLP(ModelPlugin):
    """Fourier features of the (flattened) input, then linear layers with ReLU between them."""

    name: ClassVar[str] = "fourier-mlp"
    Config: ClassVar[type[ModelConfig]] = FourierMLPConfig
    description: ClassVar[str] = "MLP on Fourier features [x, sin(πkx), cos(πkx)]"
    config: FourierMLPConfig

    def build(self, io: ModelIO) -> nn.Module:
        layers: list[nn.Module] = []
        if len(io.input_shape) > 1:
            layers.append(nn.Flatten(start_dim=-len(io.input_shape)))
        inputs = math.prod(io.input_shape)
        layers.append(FourierFeatures(self.config.frequencies))
        width = inputs * (1 + 2 * self.config.frequencies)
        for hidden in self.config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, io.output_dim))
        return nn.Sequential(*layers)
