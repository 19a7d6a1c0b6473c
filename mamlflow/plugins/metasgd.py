"""Meta-SGD (Li et al. 2017): a meta-learned learning rate for every parameter entry.

The inner update is ``θ' = θ − α ⊙ ∇L_support(θ)`` where ``α`` has θ's shapes and is learned by
the outer optimizer together with θ (the adapter's learnable tensors, which every kernel
differentiates). ``α`` starts at ``inner.lr`` everywhere, so at iteration 0 Meta-SGD is MAML;
the paper draws it from U(0.005, 0.1) instead, which this avoids so that runs of the two are
comparable from the same initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from mamlflow.core import Adapter, AdapterState, Algorithm, InnerConfig, Params, Preset, hookimpl
from mamlflow.plugins.omniglot import PRESETS as OMNIGLOT_PRESETS
from mamlflow.plugins.sinusoid import SINUSOID_PRESET

__all__ = ["MetaSGD", "PerParameterSGD"]


class PerParameterSGD(Adapter):
    """SGD whose learning rate is a learnable tensor per parameter (entry-wise)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def learnables(self, params: Params) -> Params:
        return {k: torch.full_like(v, self.lr) for k, v in params.items()}

    def update(
        self, grads: Params, state: AdapterState, params: Params, learnables: Params, step: int
    ) -> tuple[Params, AdapterState]:
        return {k: -learnables[k] * g for k, g in grads.items()}, state


class MetaSGD(Algorithm):
    """Learned per-entry inner learning rates, meta-learned with θ (Li et al. 2017)."""

    name: ClassVar[str] = "metasgd"
    description: ClassVar[str] = "Meta-SGD: per-parameter inner learning rates, meta-learned"

    def adapter(self, inner: InnerConfig) -> Adapter:
        return PerParameterSGD(inner.lr)

    def evaluation_note(self, inner: InnerConfig, steps: int) -> str | None:
        if steps <= inner.steps:
            return None
        return (
            f"metasgd learned its per-parameter inner rates for {inner.steps} step(s); the "
            f"{steps - inner.steps} step(s) beyond reuse those rates, which no step was trained "
            f"with: evaluate with --steps {inner.steps}, or train with inner.steps={steps}"
        )


@hookimpl
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    register(MetaSGD)


PRESETS = (
    SINUSOID_PRESET.derive(
        "sinusoid-metasgd",
        "Sinusoid regression with Meta-SGD on MAML's schedule (Li et al. 2017)",
        {"algorithm": {"name": "metasgd"}},
    ),
    OMNIGLOT_PRESETS[0].derive(
        "omniglot-metasgd",
        "Omniglot 5-way 1-shot with Meta-SGD on MAML's schedule (paper: 99.53%)",
        {"algorithm": {"name": "metasgd"}},
    ),
)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
