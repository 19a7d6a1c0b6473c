"""Choosing a meta-step strategy by running the candidates on the run's first real batch.

Which kernel is fastest depends on the model and the device: on a CPU, batching the tasks of a
small MLP is several times faster than a per-task loop, while vmapped convolutions become grouped
convolutions that are slower than the loop. So ``auto`` measures, like cuDNN's benchmark mode:
it times the reference loop and the batched kernel on the probe batch and keeps the faster. Only
when batching wins and the run is long enough to repay a cold compile (tens of seconds on a
2-core CPU) does it also try the compiled kernel, which must reproduce the batched meta-gradient
on the probe and not be slower. Every decision comes with a reason for the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from ..core.adapter import Adapter
from ..core.task import TaskObjective
from ._maml import MetaStep, Strategy, make_meta_step

__all__ = ["AUTO_COMPILE_MIN_ITERATIONS", "Selection", "select_meta_step"]

log = logging.getLogger("mamlflow.kernels")

AUTO_COMPILE_MIN_ITERATIONS = 2_000
"""Below this many remaining iterations ``auto`` skips torch.compile: it would not pay back."""


@dataclass(frozen=True)
class Selection:
    strategy: Strategy
    step: MetaStep
    reason: str


def _close(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Agreement relative to the gradient's overall scale, not tensor by tensor.

    Some meta-gradients are zero in exact arithmetic (a conv bias followed by batch norm) and
    only rounding noise in practice; judged against their own size, float32 noise would look like
    a disagreement.
    """
    if not b:
        return True
    scale = max(y.abs().max().item() for y in b.values())
    for k, x in a.items():
        tol = 1e-9 if x.dtype == torch.float64 else 1e-4
        if not torch.allclose(x, b[k], rtol=tol, atol=tol * scale):
            return False
    return True


Probe = tuple[dict[str, Tensor], dict[str, Tensor], Mapping[str, Tensor], Mapping[str, Tensor]]


def _seconds_per_step(strategy: Strategy, step: MetaStep, probe: Probe, repeats: int = 2) -> float:
    """Best of ``repeats`` timed calls of ``strategy``'s step after one warm-up (which compiles)."""
    step(*probe, 1.0)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = step(*probe, 1.0)
        if result.loss.is_cuda:
            torch.cuda.synchronize(result.loss.device)
        best = min(best, time.perf_counter() - start)
    return best


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def select_meta_step(
    requested: str,
    objective: TaskObjective,
    adapter: Adapter,
    *,
    steps: int,
    first_order: bool,
    remaining_iterations: int,
    probe: Probe,
    time_left: float | None = None,
) -> Selection:
    """Resolve ``kernel.strategy`` to a working meta-step.

    ``probe`` is ``(params, learnables, support, query)`` of the run's first shard: an explicit
    strategy is only built; ``auto`` times the candidates on it (see the module docstring).
    ``time_left`` (seconds, from a time limit) caps the iterations a compile would serve.
    """

    def build(strategy: Strategy) -> MetaStep:
        return make_meta_step(
            objective, adapter, steps=steps, first_order=first_order, strategy=strategy
        )

    if requested in get_args(Strategy):
        strategy: Strategy = requested  # type: ignore[assignment]  # narrowed just above
        return Selection(strategy, build(strategy), "requested")
    if requested != "auto":
        raise ValueError(
            f"unknown kernel strategy {requested!r}; use auto, batched, compiled or loop"
        )

    loop, batched = build("loop"), build("batched")
    t_loop = _seconds_per_step("loop", loop, probe)
    t_batched = _seconds_per_step("batched", batched, probe)
    timing = f"loop {_ms(t_loop)}, batched {_ms(t_batched)} per step"
    if t_loop <= t_batched:
        return Selection("loop", loop, f"{timing}: batching does not pay here")
    if time_left is not None:
        # A time-limited run only gets as many steps as fit in its budget.
        remaining_iterations = min(remaining_iterations, int(time_left / t_batched))
    if remaining_iterations < AUTO_COMPILE_MIN_ITERATIONS:
        return Selection(
            "batched", batched, f"{timing}; {remaining_iterations} iterations: too few to compile"
        )
    compiled = build("compiled")
    try:
        fast = compiled(*probe, 1.0)
    except Exception as exc:  # any compiler failure means: run eagerly instead
        first_line = (str(exc).splitlines() or [""])[0]
        reason = f"torch.compile failed ({type(exc).__name__}: {first_line}); using batched"
        log.warning(reason)
        return Selection("batched", batched, reason)
    slow = batched(*probe, 1.0)
    if not (_close(fast.grads, slow.grads) and _close(fast.learnable_grads, slow.learnable_grads)):
        reason = "compiled meta-gradient disagrees with the batched kernel; using batched"
        log.warning(reason)
        return Selection("batched", batched, reason)
    t_compiled = _seconds_per_step("compiled", compiled, probe)
    timing += f", compiled {_ms(t_compiled)}"
    # Ties go to compiled: its timings are the steadier of the two once warm.
    if t_compiled > 1.1 * t_batched:
        return Selection("batched", batched, f"{timing}: compiling does not pay here")
    return Selection("compiled", compiled, f"{timing}; compiled matches batched on the probe")
