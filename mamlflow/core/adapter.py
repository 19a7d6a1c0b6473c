"""Adapter: the inner loop's update rule as a pair of pure functions.

Modelled on optax's gradient transformations. ``init`` builds a state from the parameters and
the adapter's learnable tensors; ``update`` maps inner gradients to parameter updates and returns
a new state, never mutating its inputs. Learnable tensors (``learnables``) are meta-learned with
θ by the outer optimizer, which is how Meta-SGD's per-parameter learning rates or MAML++'s
per-step learning rates plug in without touching the kernel. Adapters compose with ``chain``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Adam",
    "Adapter",
    "AdapterState",
    "Chain",
    "Params",
    "Scale",
    "adam",
    "apply_updates",
    "chain",
    "sgd",
]

Params = dict[str, Tensor]
AdapterState = Any
"""A pytree (dicts, tuples, tensors, None) owned by one adapter."""


class Adapter(ABC):
    """An inner-loop update rule: ``(init, update)`` plus optional learnable tensors."""

    def learnables(self, params: Params) -> Params:
        """Tensors meta-learned with θ (e.g. per-parameter learning rates); none by default."""
        return {}

    def adapted(self, params: Params) -> frozenset[str] | None:
        """Names of the parameters the inner loop adapts; None: all of them.

        The kernels differentiate the inner loss only with respect to these (ANIL adapts the
        head alone, so its inner backward stops at the head); the others stay θ in every task.
        """
        return None

    def init(self, params: Params, learnables: Params) -> AdapterState:
        """Initial state for one task's inner loop."""
        return None

    @abstractmethod
    def update(
        self,
        grads: Params,
        state: AdapterState,
        params: Params,
        learnables: Params,
        step: int,
    ) -> tuple[Params, AdapterState]:
        """Map inner gradients to updates (added to params) and the next state.

        ``step`` is the Python int index of the inner step: the loop is unrolled, so adapters
        may use a different learning rate per step.
        """


def apply_updates(params: Params, updates: Params) -> Params:
    """``params + updates``; parameters without an update stay as they are (partial updates).

    An update for a name that is not a parameter is an error: it would otherwise be dropped
    silently (a misspelt key in an adapter).
    """
    unknown = updates.keys() - params.keys()
    if unknown:
        raise KeyError(f"updates for unknown parameters {sorted(unknown)}; known: {sorted(params)}")
    return {k: (v + updates[k]) if k in updates else v for k, v in params.items()}


class Scale(Adapter):
    """Multiply gradients by a constant: ``sgd(lr)`` is ``Scale(-lr)``."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def update(
        self,
        grads: Params,
        state: AdapterState,
        params: Params,
        learnables: Params,
        step: int,
    ) -> tuple[Params, AdapterState]:
        return {k: g * self.factor for k, g in grads.items()}, state

    def __repr__(self) -> str:
        return f"Scale({self.factor})"


class Chain(Adapter):
    """Apply adapters in order; learnables are namespaced ``"<index>.<name>"``."""

    def __init__(self, *adapters: Adapter) -> None:
        self.adapters = adapters

    def learnables(self, params: Params) -> Params:
        return {
            f"{i}.{k}": v
            for i, a in enumerate(self.adapters)
            for k, v in a.learnables(params).items()
        }

    def _own(self, i: int, learnables: Params) -> Params:
        prefix = f"{i}."
        return {k[len(prefix) :]: v for k, v in learnables.items() if k.startswith(prefix)}

    def init(self, params: Params, learnables: Params) -> AdapterState:
        return tuple(a.init(params, self._own(i, learnables)) for i, a in enumerate(self.adapters))

    def update(
        self,
        grads: Params,
        state: AdapterState,
        params: Params,
        learnables: Params,
        step: int,
    ) -> tuple[Params, AdapterState]:
        new_state = []
        for i, (a, s) in enumerate(zip(self.adapters, state, strict=True)):
            grads, s = a.update(grads, s, params, self._own(i, learnables), step)
            new_state.append(s)
        return grads, tuple(new_state)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.adapters))})"


def chain(*adapters: Adapter) -> Adapter:
    """Compose adapters left to right."""
    return Chain(*adapters)


def sgd(lr: float) -> Adapter:
    """Plain gradient descent with a fixed inner learning rate (the paper's inner loop)."""
    return Scale(-lr)


class Adam(Adapter):
    """Adam as an inner-loop rule, its moments reset for every task (Reptile's inner optimizer).

    The state is ``(m, v)`` for the parameters that receive gradients; the step count is the
    Python ``step`` index, so the bias correction is exact and nothing is mutated. Reptile uses
    β1 = 0 (no momentum across its few inner steps); the defaults follow it.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8):
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def init(self, params: Params, learnables: Params) -> AdapterState:
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return zeros, dict(zeros)

    def update(
        self,
        grads: Params,
        state: AdapterState,
        params: Params,
        learnables: Params,
        step: int,
    ) -> tuple[Params, AdapterState]:
        (b1, b2), m, v = self.betas, dict(state[0]), dict(state[1])
        t = step + 1
        updates = {}
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            updates[k] = -self.lr * m_hat / (v_hat.sqrt() + self.eps)
        return updates, (m, v)

    def __repr__(self) -> str:
        return f"Adam({self.lr}, betas={self.betas}, eps={self.eps})"


def adam(lr: float, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8) -> Adapter:
    """Adam in the inner loop, moments reset per task (β1 = 0 by default, as in Reptile)."""
    return Adam(lr, betas, eps)
