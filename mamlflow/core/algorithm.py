"""Algorithm: which inner-loop rule and which derivative order a meta-learner uses.

``maml`` and ``fomaml`` differ only here; later members of the family (Meta-SGD's learned
learning rates, MAML++'s per-step rates) return adapters with learnable tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from .adapter import Adapter
from .plugin_config import PluginConfig

if TYPE_CHECKING:
    from .config import InnerConfig

__all__ = ["Algorithm", "AlgorithmConfig"]


class AlgorithmConfig(PluginConfig):
    """Options every algorithm has; an algorithm's own ``Config`` subclasses this."""


class Algorithm(ABC):
    """A meta-learning algorithm of the MAML family."""

    name: ClassVar[str]
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    description: ClassVar[str] = ""

    def __init__(self, config: AlgorithmConfig) -> None:
        self.config = config

    @abstractmethod
    def adapter(self, inner: InnerConfig) -> Adapter:
        """The inner-loop update rule for the run's ``inner`` settings."""

    def first_order(self, inner: InnerConfig, iteration: int) -> bool:
        """Whether the meta-gradient at ``iteration`` ignores second derivatives."""
        return inner.first_order
