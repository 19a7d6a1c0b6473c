"""Counter-based random numbers: a pure function of (seed, stream, iteration, task, element).

Task sampling must not depend on how a meta-batch is split across processes, on what was sampled
before, or on any generator state that a resume would have to restore. A stateless hash gives
that: every random number is ``splitmix64`` of its coordinates. It runs vectorised on tensors
(any device), and each function has a plain-Python twin (``*_reference``) it is tested against;
data kernels in other languages (numba) implement the same function.

A task family draws everything from ``derive_key(seed, split, iteration, stream)`` and the global
task indices: row ``i`` of every result depends only on the key and ``task_index[i]``. Public as
``mamlflow.rng``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    x &= _MASK
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64(z: int) -> int:
    """splitmix64's finaliser of a 64-bit integer: the hash every random number here is."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _lsr(z: Tensor, s: int) -> Tensor:
    # Logical shift: torch's >> on int64 is arithmetic (sign-extending).
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: Tensor) -> Tensor:
    # int64 multiplication wraps modulo 2**64 like uint64, so the bits match the reference.
    z = z + _signed(_GOLDEN)
    z = (z ^ _lsr(z, 30)) * _signed(_M1)
    z = (z ^ _lsr(z, 27)) * _signed(_M2)
    return z ^ _lsr(z, 31)


def derive_key(*parts: int) -> int:
    """Fold integers (seed, stream, iteration, …) into one 64-bit key."""
    key = 0
    for p in parts:
        key = mix64(key ^ (p & _MASK))
    return key


def uniform(
    key: int, task_index: Tensor, count: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform [0, 1) numbers of shape ``(len(task_index), count)``.

    Row ``i`` depends only on ``key`` and ``task_index[i]``, never on the other rows.
    """
    t = task_index.to(torch.int64).reshape(-1, 1)
    row = _mix(t ^ _signed(key))
    z = _mix(row + torch.arange(count, dtype=torch.int64, device=t.device))
    # Keep only as many bits as the dtype's mantissa holds, so rounding never yields 1.0.
    bits = 53 if dtype == torch.float64 else 24
    return _lsr(z, 64 - bits).to(dtype) * 2.0**-bits


def uniform_reference(key: int, task_index: int, count: int, bits: int = 53) -> list[float]:
    """Plain-Python twin of ``uniform`` for one task (the oracle in tests)."""
    row = mix64((task_index & _MASK) ^ key)
    return [(mix64((row + j) & _MASK) >> (64 - bits)) * 2.0**-bits for j in range(count)]


def normal(key: int, task_index: Tensor, count: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normals of shape ``(len(task_index), count)``, by Box–Muller over ``uniform``."""
    half = (count + 1) // 2
    u = uniform(key, task_index, 2 * half, dtype=torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, :half]))  # 1 - u is in (0, 1]: no log(0)
    angle = 2 * math.pi * u[:, half:]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
    return z[:, :count].to(dtype)


def normal_reference(key: int, task_index: int, count: int) -> list[float]:
    """Plain-Python twin of ``normal`` for one task (float64)."""
    half = (count + 1) // 2
    u = uniform_reference(key, task_index, 2 * half)
    radius = [math.sqrt(-2.0 * math.log1p(-x)) for x in u[:half]]
    angle = [2 * math.pi * x for x in u[half:]]
    z = [r * math.cos(a) for r, a in zip(radius, angle, strict=True)]
    z += [r * math.sin(a) for r, a in zip(radius, angle, strict=True)]
    return z[:count]


_MAX_HIGH = 1 << 32


def _check_high(high: int, what: str) -> None:
    if not 1 <= high <= _MAX_HIGH:
        raise ValueError(f"{what} must be in [1, 2**32], got {high}")


def integers(key: int, task_index: Tensor, count: int, high: int) -> Tensor:
    """Integers in ``[0, high)`` of shape ``(len(task_index), count)`` (int64), ``high <= 2**32``.

    ``floor(u · high)`` of a 53-bit uniform: exact, with a bias below ``high / 2**53``.
    """
    _check_high(high, "high")
    return (uniform(key, task_index, count, dtype=torch.float64) * high).floor().to(torch.int64)


def integers_reference(key: int, task_index: int, count: int, high: int) -> list[int]:
    """Plain-Python twin of ``integers`` for one task."""
    _check_high(high, "high")
    return [math.floor(u * high) for u in uniform_reference(key, task_index, count)]


def permutation(key: int, task_index: Tensor, n: int) -> Tensor:
    """A random permutation of ``range(n)`` per task: ``(len(task_index), n)`` int64.

    The order of ``n`` keyed uniforms (ties, which 53-bit numbers make vanishingly rare, keep
    the smaller index first), so every permutation is equally likely.
    """
    _check_high(n, "n")
    u = uniform(key, task_index, n, dtype=torch.float64)
    return torch.argsort(u, dim=1, stable=True)


def permutation_reference(key: int, task_index: int, n: int) -> list[int]:
    """Plain-Python twin of ``permutation`` for one task."""
    _check_high(n, "n")
    u = uniform_reference(key, task_index, n)
    return sorted(range(n), key=lambda j: (u[j], j))


def choice(key: int, task_index: Tensor, n: int, k: int) -> Tensor:
    """``k`` distinct integers of ``range(n)`` per task, in random order: ``(tasks, k)`` int64.

    For example the classes of an N-way episode: ``choice(key, task_index, num_classes, ways)``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"cannot choose {k} distinct values of range({n})")
    return permutation(key, task_index, n)[:, :k]


def choice_reference(key: int, task_index: int, n: int, k: int) -> list[int]:
    """Plain-Python twin of ``choice`` for one task."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot choose {k} distinct values of range({n})")
    return permutation_reference(key, task_index, n)[:k]
