"""Learner: any ``nn.Module`` made functional, and the interface of a model plugin.

The kernel never calls a module's ``forward`` with its own parameters: it calls
``learner(params, inputs)``, which runs ``torch.func.functional_call`` with the given parameter
dict. That keeps the inner loop pure, so it can be differentiated twice, vmapped over tasks and
compiled, with nothing model-specific in the core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .config import ModelConfig
from .task import ModelIO

__all__ = ["Learner", "ModelConfig", "ModelPlugin", "Params"]

Params = dict[str, Tensor]


class ModelPlugin(ABC):
    """Builds an ``nn.Module`` for a task family's ``ModelIO``.

    Modules must be safe under ``vmap`` of a second-order step. torch's affine normalisation
    layers are not (``nn.LayerNorm``, ``nn.BatchNorm*``, ``nn.InstanceNorm*`` and their
    functional forms give wrong meta-gradients with torch 2.13, functorch #534): use
    ``mamlflow.nn.LayerNorm``, ``BatchNorm`` and ``GroupNorm``, built from plain tensor ops.
    ``mamlflow.nn.vmap_unsafe_layers(module)`` lists the unsafe layers of a module.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    description: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    @abstractmethod
    def build(self, io: ModelIO) -> nn.Module:
        """A freshly initialised module (the caller seeds torch's RNG first)."""


class Learner:
    """A module run functionally: ``learner(params, inputs)``.

    ``buffers`` are constants (models that need per-batch statistics compute them in forward).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.buffers: Params = {k: v.detach() for k, v in module.named_buffers()}

    def init_params(self) -> Params:
        """Detached copies of the module's parameters: the initial meta-parameters θ."""
        return {k: v.detach().clone() for k, v in self.module.named_parameters()}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Learner:
        self.module.to(device=device, dtype=dtype)
        self.buffers = {k: v.detach() for k, v in self.module.named_buffers()}
        return self

    def __call__(self, params: Params, inputs: Tensor) -> Tensor:
        if self.buffers:
            return functional_call(self.module, (params, self.buffers), (inputs,))
        return functional_call(self.module, params, (inputs,))
