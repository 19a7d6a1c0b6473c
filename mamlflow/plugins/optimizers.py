"""Outer optimizers over ``torch.optim``: Adam (the paper's choice), AdamW and SGD."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, ClassVar

import torch
from pydantic import Field, model_validator

from mamlflow.core import OuterConfig, OuterOptimizer, hookimpl

__all__ = ["SGD", "Adam", "AdamConfig", "AdamW", "AdamWConfig", "Beta", "SGDConfig"]


Beta = Annotated[float, Field(ge=0, lt=1)]
"""A moment decay rate, in [0, 1) as torch.optim's Adam requires."""


class AdamConfig(OuterConfig):
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam's β1, β2, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (coupled, as torch.optim.Adam)")


class Adam(OuterOptimizer):
    name: ClassVar[str] = "adam"
    Config: ClassVar[type[OuterConfig]] = AdamConfig
    description: ClassVar[str] = "torch.optim.Adam"
    config: AdamConfig
    optimizer_class: ClassVar[type[torch.optim.Adam] | type[torch.optim.AdamW]] = torch.optim.Adam

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        c = self.config
        return self.optimizer_class(
            params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, foreach=True
        )


class AdamWConfig(AdamConfig):
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW"
    )


class AdamW(Adam):
    name: ClassVar[str] = "adamw"
    Config: ClassVar[type[OuterConfig]] = AdamWConfig
    description: ClassVar[str] = "torch.optim.AdamW (decoupled weight decay)"
    optimizer_class = torch.optim.AdamW


class SGDConfig(OuterConfig):
    momentum: float = Field(0.0, ge=0)
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0; set outer.momentum (e.g. 0.9)")
        return self


class SGD(OuterOptimizer):
    name: ClassVar[str] = "sgd"
    Config: ClassVar[type[OuterConfig]] = SGDConfig
    description: ClassVar[str] = "torch.optim.SGD"
    config: SGDConfig

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(
            params,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            weight_decay=c.weight_decay,
            foreach=True,
        )


@hookimpl
def register_optimizers(register: Callable[[type[OuterOptimizer]], None]) -> None:
    register(Adam)
    register(AdamW)
    register(SGD)
