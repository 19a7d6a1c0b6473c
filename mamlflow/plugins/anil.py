"""ANIL (Raghu et al. 2020, "Rapid learning or feature reuse?"): adapt only the head.

The inner loop differentiates the support loss with respect to the head's parameters alone, so
its backward stops at the head instead of running through the whole body; the body is shared by
every task and meta-learned through the head's update (second order) like any other θ.

Because no inner step changes the body, its features are the same before and after every step:
with ``reuse_features`` (the default) ANIL hands the kernels a ``StagedObjective`` and the
batched kernels run the body once per task, then every inner step on the head alone. That needs
a model whose forward ends in its head module (``head(body(x))``, true of conv-4 and the MLP);
ANIL checks this on a probe input and falls back to the whole model, with a warning, otherwise.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from mamlflow.core import (
    Adapter,
    AdapterState,
    Algorithm,
    AlgorithmConfig,
    ConfigError,
    InnerConfig,
    Learner,
    Params,
    Preset,
    StagedObjective,
    TaskFamily,
    TaskObjective,
    hookimpl,
    sgd,
)
from mamlflow.plugins.omniglot import PRESETS as OMNIGLOT_PRESETS

__all__ = ["ANIL", "ANILConfig", "HeadOnly"]

log = logging.getLogger("mamlflow.anil")


class ANILConfig(AlgorithmConfig):
    head: str | None = Field(
        None,
        description="name prefix of the parameters the inner loop adapts, e.g. head or 4; "
        "null: the module that owns the model's last parameter (its output layer)",
    )

    @field_validator("head", mode="before")
    @classmethod
    def _index_names_a_module(cls, value: object) -> object:
        # nn.Sequential names its modules 0, 1, ...: --set algorithm.head=4 arrives as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    reuse_features: bool = Field(
        True,
        description="compute the body's features once per task, not once per inner step "
        "(same result; needs a model whose forward ends in the head module)",
    )


class HeadOnly(Adapter):
    """Another adapter's rule, applied to the head's parameters only."""

    def __init__(self, inner: Adapter, head: str | None = None) -> None:
        self.inner = inner
        self.head = head

    def head_name(self, params: Params) -> str:
        """The configured head, or the module that owns the last parameter."""
        return self.head if self.head is not None else list(params)[-1].rpartition(".")[0]

    def adapted(self, params: Params) -> frozenset[str]:
        names = list(params)
        head = self.head_name(params)
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

    def objective(self, family: TaskFamily, learner: Learner) -> TaskObjective:
        full = family.objective(learner)
        if not self.config.reuse_features:
            return full
        params = learner.init_params()
        head_only = HeadOnly(sgd(0.0), self.config.head)
        head_keys = head_only.adapted(params)
        head = head_only.head_name(params)
        try:
            head_module = learner.module.get_submodule(head)
        except AttributeError:
            log.warning("ANIL: %r is not a module, so features are not reused", head)
            return full
        body_module = copy.deepcopy(learner.module)
        parent, _, child = head.rpartition(".")
        setattr(body_module.get_submodule(parent) if parent else body_module, child, nn.Identity())
        body = Learner(body_module)
        strip = len(head) + 1

        def head_model(p: Params, features: Tensor) -> Tensor:
            return functional_call(head_module, {k[strip:]: p[k] for k in head_keys}, (features,))

        key = family.io.input_key

        def features(p: Params, data: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
            body_params = {k: v for k, v in p.items() if k not in head_keys}
            return {**data, key: body(body_params, data[key])}

        ref = next(iter(params.values()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            probe = torch.randn(3, *family.io.input_shape, dtype=ref.dtype).to(ref.device)
        with torch.no_grad():
            whole = learner(params, probe)
            try:
                staged = head_model(params, features(params, {key: probe})[key])
            except Exception:  # e.g. a shape mismatch: the head is not the last stage
                staged = None
        if (
            staged is None
            or whole.shape != staged.shape
            or not torch.allclose(whole, staged, rtol=1e-4, atol=1e-5)
        ):
            log.warning(
                "ANIL: this model's forward is not head(body(x)) for head %r, so features are "
                "not reused (set algorithm.reuse_features=false to silence this)",
                head,
            )
            return full
        return StagedObjective(full, features, family.objective(head_model), head_keys)


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
