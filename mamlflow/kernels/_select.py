"""Choosing a meta-step strategy by running the candidates on the run's first real batch.

Which kernel is fastest depends on the model, the shapes and the device. On a CPU, batching the
tasks of a small MLP is several times faster than a per-task loop, while vmapped convolutions
become grouped convolutions that are slower than the loop; on a GPU the loop is launch-bound and
batching wins by far. So ``auto`` measures, like cuDNN's benchmark mode:

1. it times the reference ``loop`` and the eager ``batched`` kernel on the probe batch;
2. if the run is long enough to repay a compile (``AUTO_COMPILE_MIN_SECONDS`` of eager time
   left), it compiles the winner's twins (``batched`` → ``compiled``, and ``cudagraphs`` on
   CUDA; ``loop`` → ``compiled-split`` and ``compiled-loop``) and times them too;
3. it keeps the fastest candidate whose meta-gradient matches the loop's on the probe, computed
   in IEEE float32 (no TF32 on CUDA, see ``exact_float32``, and no autocast) and timed with the
   user's settings.

The loop is always a candidate, so ``auto`` is never slower than the reference (up to timing
noise). Measurements are cached per process and signature (model, shapes, device, dtype, order,
inner steps): a second meta-step of the same kind is not measured again. Every decision comes
with a one-line reason for the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core import (
    STRATEGIES,
    Adapter,
    ConfigError,
    MetaStep,
    MetaStepFactory,
    StepResult,
    Strategy,
    TaskObjective,
)
from ._maml import exact_float32, make_meta_step

__all__ = [
    "AUTO_COMPILE_MIN_SECONDS",
    "COMPILED_STRATEGIES",
    "MetaStepFactory",
    "Selection",
    "clear_selection_cache",
    "select_meta_step",
]

log = logging.getLogger("mamlflow.kernels")

AUTO_COMPILE_MIN_SECONDS = 120.0
"""``auto`` compiles only when the remaining run would take at least this long eagerly: a cold
compile costs tens of seconds on a small CPU and would not pay back on a shorter run."""

COMPILED_STRATEGIES: frozenset[Strategy] = frozenset(
    {"compiled", "compiled-loop", "compiled-split", "cudagraphs"}
)

TIE = 1.1
"""A compiled candidate within this factor of the eager winner is still preferred: once warm its
timings are the steadier, and probe timings are noisy."""


@dataclass(frozen=True)
class Selection:
    """The meta-step ``auto`` (or the config) chose, why, and what it measured (s per step)."""

    strategy: Strategy
    step: MetaStep
    reason: str
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass
class _Measured:
    """What ``auto`` learned about one signature: seconds per step, and rejected candidates."""

    seconds: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    eager_only: bool = True  # no compiled candidate was tried


_CACHE: dict[tuple[object, ...], _Measured] = {}


def clear_selection_cache() -> None:
    """Forget every measurement, so the next ``auto`` selection measures again."""
    _CACHE.clear()


def _close(a: Mapping[str, Tensor], b: Mapping[str, Tensor], tol: float | None = None) -> bool:
    """Agreement relative to the gradient's overall scale, not tensor by tensor.

    Some meta-gradients are zero in exact arithmetic (a conv bias followed by batch norm) and
    only rounding noise in practice; judged against their own size, float32 noise would look like
    a disagreement. In float32 a fused or reordered kernel legitimately differs from the loop by
    up to ~2e-4 of the largest entry (batch norm with a small variance amplifies rounding); a
    wrong kernel is off by far more.
    """
    if not b:
        return True
    scale = max(y.abs().max().item() for y in b.values())
    for k, x in a.items():
        t = tol if tol is not None else 1e-9 if x.dtype == torch.float64 else 1e-3
        if not torch.allclose(x, b[k], rtol=t, atol=t * scale):
            return False
    return True


Probe = tuple[dict[str, Tensor], dict[str, Tensor], Mapping[str, Tensor], Mapping[str, Tensor]]


def _sync(result: StepResult) -> None:
    if result.loss.is_cuda:
        torch.cuda.synchronize(result.loss.device)


def _seconds_per_step(
    strategy: Strategy, step: MetaStep, probe: Probe, scale: Tensor | float, repeats: int = 2
) -> float:
    """Best of ``repeats`` timed calls of ``strategy``'s step after one warm-up (which compiles)."""
    _sync(step(*probe, scale))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        _sync(step(*probe, scale))
        best = min(best, time.perf_counter() - start)
    return best


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _signature(
    signature: object, probe: Probe, steps: int, first_order: bool, multi_step: bool
) -> tuple[object, ...]:
    params, learnables, support, query = probe
    ref = next(iter(params.values()))
    device = ref.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    shapes = tuple(
        (part, k, tuple(v.shape), v.dtype)
        for part, tree in (("p", params), ("l", learnables), ("s", support), ("q", query))
        for k, v in sorted(tree.items())
    )
    return (
        signature,
        str(device),
        name,
        torch.get_num_threads(),
        steps,
        first_order,
        multi_step,
        shapes,
    )


def _twins(winner: Strategy, device: torch.device) -> tuple[Strategy, ...]:
    if winner == "loop":
        return ("compiled-split", "compiled-loop")
    if device.type == "cuda":
        return ("cudagraphs", "compiled")
    return ("compiled",)


def _one_line(exc: BaseException) -> str:
    """``Type: first non-blank line of the message``, for one-line logs and reports."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    signature: object = None,
    autocast: torch.dtype | None = None,
    multi_step: bool = False,
    factory: MetaStepFactory | None = None,
    strategies: Collection[Strategy] = STRATEGIES,
) -> Selection:
    """Resolve ``kernel.strategy`` to a working meta-step.

    ``probe`` is ``(params, learnables, support, query)`` of the run's first shard: an explicit
    strategy is only built; ``auto`` times the candidates on it (see the module docstring).
    ``time_left`` (seconds, from a time limit) caps the iterations a compile would serve.
    ``signature`` names what the shapes cannot tell apart (e.g. the model and task configs);
    with it, measurements are cached for the process, without it nothing is cached.
    ``autocast`` runs the chosen step under ``torch.autocast`` (see ``make_meta_step``). Parity
    is still checked without it: two correct conv-4 kernels under bfloat16 differ by up to 30% of
    the largest meta-gradient entry (measured), which would hide a real bug. So each compiled
    candidate is compiled twice, once to check and once to time.

    ``multi_step`` selects a step that takes a vector of per-step loss weights as its scale
    (MAML++). ``factory`` builds the steps (default ``make_meta_step``; an algorithm with kernels
    of its own, like Reptile, passes its own) and ``strategies`` are the ones it implements:
    ``auto`` only considers those, and asking for another is a one-line ``ConfigError``.
    """
    make = factory if factory is not None else make_meta_step

    def build(strategy: Strategy, cast: torch.dtype | None = autocast) -> MetaStep:
        return make(
            objective,
            adapter,
            steps=steps,
            first_order=first_order,
            strategy=strategy,
            autocast=cast,
            multi_step=multi_step,
        )

    if requested != "auto":
        strategy = _requested(requested, strategies)
        return Selection(strategy, build(strategy), "requested")
    key = None
    if signature is not None:
        key = _signature(signature, probe, steps, first_order, multi_step)
    cached = key is not None and key in _CACHE
    candidates = _Candidates(
        build, probe, _unit(probe, steps, multi_step), autocast, _CACHE.get(key) or _Measured()
    )
    if not cached:
        candidates.measure("loop")
        if "batched" in strategies:
            candidates.measure("batched")
    chosen, reason = _choose(candidates, strategies, remaining_iterations, time_left)
    if key is not None:
        _CACHE[key] = candidates.measured
    if cached:
        reason = f"cached: {reason}"
    return Selection(chosen, candidates.step(chosen), reason, dict(candidates.measured.seconds))


def _requested(requested: str, strategies: Collection[Strategy]) -> Strategy:
    """An explicitly requested strategy, if it exists and the algorithm implements it."""
    if requested not in STRATEGIES:
        raise ValueError(
            f"unknown kernel strategy {requested!r}; use auto or one of {', '.join(STRATEGIES)}"
        )
    strategy: Strategy = requested  # type: ignore[assignment]  # narrowed just above
    if strategy not in strategies:
        raise ConfigError(
            [
                f"kernel.strategy: this algorithm has no {strategy} kernel; use auto or one "
                f"of {', '.join(s for s in STRATEGIES if s in strategies)}"
            ]
        )
    return strategy


def _unit(probe: Probe, steps: int, multi_step: bool) -> Tensor | float:
    """The ``scale`` candidates are measured with: 1, or equal weights of a multi-step loss."""
    if not multi_step:
        return 1.0
    ref = next(iter(probe[0].values()))
    return torch.full((steps,), 1.0 / steps, dtype=ref.dtype, device=ref.device)


@dataclass
class _Candidates:
    """The meta-steps ``auto`` builds, checks against the loop and times on one probe."""

    build: Callable[..., MetaStep]
    probe: Probe
    unit: Tensor | float
    autocast: torch.dtype | None
    measured: _Measured
    built: dict[str, MetaStep] = field(default_factory=dict)
    reference: StepResult | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.probe[0].values())).device

    def step(self, strategy: Strategy) -> MetaStep:
        """The step built for ``strategy`` while measuring, or a new one."""
        return self.built.get(strategy) or self.build(strategy)

    def measure(self, strategy: Strategy) -> None:
        """Build, check against the loop and time ``strategy``, recording what happened."""
        probe, unit, rejected = self.probe, self.unit, self.measured.rejected
        step = self.built[strategy] = self.build(strategy)
        exact = step if self.autocast is None else self.build(strategy, None)
        try:
            with exact_float32(self.device):  # parity in IEEE float32, timing as configured
                result = exact(*probe, unit)  # compiles a compiled strategy
            if exact is not step:
                step(*probe, unit)  # compiles the autocast twin: its failures count too
        except Exception as exc:  # any compiler failure means: use another candidate
            if strategy == "loop":
                raise  # the reference itself fails: the objective is broken, say so
            rejected[strategy] = f"failed ({_one_line(exc)})"
            log.warning("kernel %s %s", strategy, rejected[strategy])
            return
        if strategy == "loop":
            self.reference = result
        elif not self._matches_loop(result):
            rejected[strategy] = "meta-gradient disagrees with the loop"
            log.warning("kernel %s: %s on the probe", strategy, rejected[strategy])
            return
        self.measured.seconds[strategy] = _seconds_per_step(strategy, step, probe, unit)

    def _matches_loop(self, result: StepResult) -> bool:
        reference = self.reference
        assert reference is not None  # the loop is always measured first
        return _close(result.grads, reference.grads) and _close(
            result.learnable_grads, reference.learnable_grads
        )


def _fastest(pool: Mapping[str, float]) -> Strategy:
    return min(pool, key=pool.__getitem__)  # type: ignore[return-value]


def _choose(
    candidates: _Candidates,
    strategies: Collection[Strategy],
    remaining_iterations: int,
    time_left: float | None,
) -> tuple[Strategy, str]:
    """The fastest eager candidate, or its compiled twin where the run repays a compile."""
    seconds, rejected = candidates.measured.seconds, candidates.measured.rejected
    eager = {k: v for k, v in seconds.items() if k not in COMPILED_STRATEGIES}
    winner = _fastest(eager)
    timing = ", ".join(f"{k} {_ms(v)}" for k, v in eager.items()) + " per step"
    if "batched" in rejected:
        timing += f"; batched {rejected['batched']}"
    elif winner == "loop":
        timing += ": batching does not pay here"
    budget = remaining_iterations
    if time_left is not None:
        # A time-limited run only gets as many steps as fit in its budget.
        budget = min(budget, int(time_left / eager[winner]))
    eager_seconds = budget * eager[winner]
    if eager_seconds < AUTO_COMPILE_MIN_SECONDS:
        return winner, (
            f"{timing}; {budget} iterations (~{eager_seconds:.0f} s): too few to repay a compile"
        )
    twins = tuple(t for t in _twins(winner, candidates.device) if t in strategies)
    if not twins and "compiled" in strategies:
        twins = ("compiled",)  # an algorithm without the per-task compiled kernels
    if candidates.measured.eager_only:
        for twin in twins:
            candidates.measure(twin)
        candidates.measured.eager_only = False
    compiled = {k: seconds[k] for k in twins if k in seconds}
    parts = [f"{k} {_ms(v)}" for k, v in compiled.items()]
    parts += [f"{k} {why}" for k, why in rejected.items() if k in twins]
    reason = f"{timing}, " + ", ".join(parts)
    if not compiled:
        return winner, reason
    best = _fastest(compiled)
    if compiled[best] <= TIE * eager[winner]:
        return best, f"{reason}; {best} matches the loop on the probe"
    return winner, f"{reason}; compiling does not pay here"
