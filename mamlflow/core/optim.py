"""Outer optimizers: factories over ``torch.optim`` chosen by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
from pydantic import Field

from .plugin_config import PluginConfig

__all__ = ["OuterConfig", "OuterOptimizer"]


class OuterConfig(PluginConfig):
    """Options every outer optimizer has; a plugin's own ``Config`` subclasses this."""

    lr: float = Field(1e-3, gt=0, description="meta learning rate (β in the paper)")


class OuterOptimizer(ABC):
    """Builds the ``torch.optim.Optimizer`` that applies meta-gradients to θ."""

    name: ClassVar[str]
    Config: ClassVar[type[OuterConfig]] = OuterConfig
    description: ClassVar[str] = ""

    def __init__(self, config: OuterConfig) -> None:
        self.config = config

    @abstractmethod
    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        """An optimizer over ``params`` (leaf tensors whose ``.grad`` the trainer sets)."""
