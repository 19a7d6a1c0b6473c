"""MAML (second order) and first-order MAML."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from mamlflow.core import Adapter, Algorithm, InnerConfig, hookimpl, sgd

__all__ = ["FOMAML", "MAML"]


class MAML(Algorithm):
    """Inner SGD with rate α; meta-gradient through the inner steps (``inner.first_order``)."""

    name: ClassVar[str] = "maml"
    description: ClassVar[str] = "Model-Agnostic Meta-Learning (Finn et al. 2017)"

    def adapter(self, inner: InnerConfig) -> Adapter:
        return sgd(inner.lr)


class FOMAML(MAML):
    """MAML with the first-order approximation always on (the paper's section 5.2 variant)."""

    name: ClassVar[str] = "fomaml"
    description: ClassVar[str] = "first-order MAML: second derivatives dropped"

    def first_order(
        self, inner: InnerConfig, iteration: int, iterations: int | None = None
    ) -> bool:
        return True


@hookimpl
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    register(MAML)
    register(FOMAML)
