"""Counter-based random numbers: a pure function of (seed, stream, iteration, task, element).

Task sampling must not depend on how a meta-batch is split across processes, on what was sampled
before, or on any generator state that a resume would have to restore. A stateless hash gives
that: every random number is ``splitmix64`` of its coordinates. It runs vectorised on tensors
(any device), and ``uniform_reference`` is the plain-Python twin it is tested against; data
kernels in other languages (numba) implement the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["derive_key", "uniform", "uniform_reference"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    x &= _MASK
    return x - (1 << 64) if x >= 1 << 63 else x


def _mix_int(z: int) -> int:
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
        key = _mix_int(key ^ (p & _MASK))
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
    row = _mix_int((task_index & _MASK) ^ key)
    return [(_mix_int((row + j) & _MASK) >> (64 - bits)) * 2.0**-bits for j in range(count)]
