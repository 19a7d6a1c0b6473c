"""ANIL (Raghu et al. 2020, "Rapid learning or feature reuse?"): adapt only the head.

The inner loop differentiates the support loss with respect to the head's parameters alone, so
its backward stops at the head instead of running through the whole body; the body is shared by
every task and meta-learned through the head's update (second order) like any other θ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import Field

from mamlflow.core.adapter import Adapter, AdapterState, Params, sgd
from mamlflow.core.algorithm import Algorithm, AlgorithmConfig
from mamlflow.core.config import InnerConfig, Preset
from mamlflow.core.errors import ConfigError
from mamlflow.core.hookspecs import hookimpl
from mamlflow.plugins.omniglot import PRESETS as OMNIGLOT_PRESETS

__all__ = ["ANIL", "ANILConfig", "HeadOnly"]


class ANILConfig(AlgorithmConfig):
    head: str | None = Field(
        None,
        description="name prefix of the parameters the inner loop adapts, e.g. head or 4; "
        "null: the module that owns the model's last parameter (its output layer)",
    )


class HeadOnly(Adapter):
    """Another adapter's rule, applied to the head's parameters only."""

    def __init__(self, inner: Adapter, head: str | None = None) -> None:
        self.inner = inner
        self.head = head

    def adapted(self, params: Params) -> frozenset[str]:
        names = list(params)
        head = self.head if self.head is not None else names[-1].rpartition(".")[0]
        keys = frozenset(k for k in names if k == head or k.startswith(f"{head}."))
        if not keys:
            modules = sorted({k.rpartition(".")[0] for k in names})
            raise ConfigError(
                [
                    f"algorithm.head: no parameter is named {head!r} or {head}.*; "
                    f"this model's modules: {', '.join(modules)}"
                ]
            )
        return keys

    def learnables(self, params: Params) -> Params:
        return self.inner.learnables(params)

    def init(self, params: Params, learnables: Params) -> AdapterState:
        return self.inner.init(params, learnables)

    def update(
        self, grads: Params, state: AdapterState, params: Params, learnables: Params, step: int
    ) -> tuple[Params, AdapterState]:
        return self.inner.update(grads, state, params, learnables, step)


class ANIL(Algorithm):
    """Almost No Inner Loop: SGD on the head in the inner loop, the body meta-learned only."""

    name: ClassVar[str] = "anil"
    Config: ClassVar[type[AlgorithmConfig]] = ANILConfig
    description: ClassVar[str] = "ANIL: the inner loop adapts only the head (Raghu et al. 2020)"
    config: ANILConfig

    def adapter(self, inner: InnerConfig) -> Adapter:
        return HeadOnly(sgd(inner.lr), self.config.head)


@hookimpl
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    register(ANIL)


PRESETS = (
    OMNIGLOT_PRESETS[0].derive(
        "omniglot-anil",
        "Omniglot 5-way 1-shot with ANIL on MAML's schedule (Raghu et al. 2020)",
        {"algorithm": {"name": "anil"}},
    ),
    OMNIGLOT_PRESETS[2].derive(
        "omniglot-20w1s-anil",
        "Omniglot 20-way 1-shot with ANIL on MAML's schedule (paper: 96.2 ± 0.5%)",
        {"algorithm": {"name": "anil"}},
    ),
)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
