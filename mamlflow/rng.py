"""Counter-based random numbers for task families: a pure function of a key and a task index.

``derive_key(seed, SPLITS[split], iteration, stream)`` folds a sample's coordinates into one key;
``uniform``, ``normal``, ``integers``, ``permutation`` and ``choice`` draw a row per global task
index that depends on nothing else, so a meta-batch is the same however it is sharded across
processes and a resumed run draws exactly what an uninterrupted one would. Each has a
plain-Python ``*_reference`` twin for tests. See ``mamlflow.core.rng``.
"""

from __future__ import annotations

from .core import rng as _rng

choice = _rng.choice
choice_reference = _rng.choice_reference
derive_key = _rng.derive_key
integers = _rng.integers
integers_reference = _rng.integers_reference
mix64 = _rng.mix64
normal = _rng.normal
normal_reference = _rng.normal_reference
permutation = _rng.permutation
permutation_reference = _rng.permutation_reference
uniform = _rng.uniform
uniform_reference = _rng.uniform_reference

__all__ = [
    "choice",
    "choice_reference",
    "derive_key",
    "integers",
    "integers_reference",
    "mix64",
    "normal",
    "normal_reference",
    "permutation",
    "permutation_reference",
    "uniform",
    "uniform_reference",
]
