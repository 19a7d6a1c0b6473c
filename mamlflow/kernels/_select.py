"""Choosing a meta-step strategy by running the candidates on the run's first real batch.

Which kernel is fastest depends on the model, the shapes and the device. On a CPU, batching the
tasks of a small MLP is several times faster than a per-task loop, while vmapped convolutions
become grouped convolutions that are slower than the loop; on a GPU the loop is launch-bound and
batching wins by far. So ``auto`` measures, like cuDNN's benchmark mode:

1. it times the reference ``loop`` and the eager ``batched`` kernel on the probe batch;
2. if the run is long enough to repay a compile (``AUTO_COMPILE_MIN_SECONDS`` of eager time
   left), it compiles the winner's twins (``batched`` → ``compiled``, and ``cudagraphs`` on
   CUDA; ``loop`` → ``compiled-split`` and ``compiled-loop``) and times them too;
3. it keeps the fastest candidate whose meta-gradient matches the loop's on the probe, after
   timing it against the loop once more, the two interleaved, by the median (a choice made
   from timings taken in different moments of a busy machine can be wrong).

Matching is checked in float64, whatever the run's dtype: the probe is copied to float64 and the
eager ``batched`` kernel is compared with the loop there, to ``PARITY_TOLERANCE`` (1e-9) of the
largest meta-gradient entry. In float32 no tolerance separates the two kinds of difference that
matter: correct conv-4 kernels differ by up to ~1e-3 of the largest entry (measured on random
images: batch norm with a small variance amplifies rounding), while torch's vmap of
``nn.LayerNorm`` is off by only 5.5e-4 on the sinusoid preset (functorch #534); in float64 the
first is below 1e-15 and the second unchanged.
A compiled candidate runs the graph of its eager twin (``batched``), so it is kept only if that
twin passed in float64, and is then checked once more in IEEE float32 (no TF32 on CUDA, see
``exact_float32``, and no autocast), at float32's tolerance, for what compiling alone can break:
that costs one compile where a float64 check of the compiled kernel would cost two. Where the
loop itself, in float32, is as far from its float64 result (max-pool nets over several inner
steps are chaotic in float32), float32 cannot decide, and the compiled kernel is compiled and run
in float64 too, held to ``COMPILED_FLOAT64_TOLERANCE``. Where the
float64 loop cannot run (a device or model without float64) the check falls back to IEEE float32
at ``FLOAT32_PARITY_TOLERANCE`` (1e-5): tight enough to refuse the sinusoid LayerNorm bug, at the
price of possibly refusing a conv net's correct batched kernel there too (speed, not
correctness).

An explicitly requested fast strategy gets the same float64 check of its eager twin (once per
signature): a model the batched kernels get wrong is refused with one ``ConfigError`` line that
names its vmap-unsafe layers (``mamlflow.nn.vmap_unsafe_layers``) and the fix.

The loop is always a candidate, so ``auto`` is never slower than the reference (up to timing
noise). Measurements are cached per process and signature (model, shapes, device, dtype, order,
inner steps): a second meta-step of the same kind is not measured again. Every decision comes
with a one-line reason for the log.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

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
from ..core import nn as safe_nn
from ._maml import exact_float32, make_meta_step

__all__ = [
    "AUTO_COMPILE_MIN_SECONDS",
    "COMPILED_STRATEGIES",
    "FLOAT32_PARITY_TOLERANCE",
    "PARITY_TOLERANCE",
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

PARITY_TOLERANCE = 1e-9
"""How far (relative to the largest loop entry) a kernel may be from the loop in float64: rounding
puts correct kernels below 1e-15 (sinusoid MLP, conv-4), the known vmap bugs above 5e-4."""

FLOAT32_PARITY_TOLERANCE = 1e-5
"""The same, where the check must run in IEEE float32: correct MLP kernels differ by ~3e-7;
conv nets' correct batched kernels (up to 1e-3) are refused, the safe direction."""
COMPILED_FLOAT64_TOLERANCE = 1e-6
"""A compiled kernel run in float64 against the float64 loop, where float32 could not decide:
fused and reordered float64 arithmetic, amplified like float32's by a chaotic problem, stays
far below it, and the smallest wrong meta-gradient measured (torch's ``nn.LayerNorm`` under
``vmap``, 5.5e-4) far above."""

TIE = 1.1
CONFIRM_ROUNDS = 3
"""Interleaved rounds of the chosen kernel and the loop that confirm a choice (``_confirm``)."""
"""A compiled candidate within this factor of the eager winner is still preferred: once warm its
timings are the steadier, and probe timings are noisy."""


@dataclass(frozen=True)
class Selection:
    """The meta-step ``auto`` (or the config) chose, why, and what it measured (s per step)."""

    strategy: Strategy
    step: MetaStep
    reason: str
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Verdict:
    """How far an eager kernel's meta-gradient is from the loop's on the probe."""

    dtype: torch.dtype
    """The precision it was checked in: float64, or the run's dtype where float64 fails."""
    discrepancy: float
    """Largest difference relative to the largest loop entry (inf: it failed to run)."""
    failure: str = ""
    """Why it failed to run, in one line."""

    @property
    def ok(self) -> bool:
        return not self.failure and self.discrepancy <= _tolerance(self.dtype)

    def describe(self) -> str:
        if self.failure:
            return f"failed ({self.failure})"
        precision = str(self.dtype).removeprefix("torch.")
        return (
            f"meta-gradient disagrees with the loop by {self.discrepancy:.1e} of its largest "
            f"entry in {precision}"
        )


def _tolerance(dtype: torch.dtype) -> float:
    return PARITY_TOLERANCE if dtype == torch.float64 else FLOAT32_PARITY_TOLERANCE


@dataclass
class _Measured:
    """What ``auto`` learned about one signature: seconds per step, and rejected candidates."""

    seconds: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    eager_only: bool = True  # no compiled candidate was tried
    verdicts: dict[str, _Verdict] = field(default_factory=dict)
    """Eager kernels checked against the loop, explicit requests' included."""


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


def _discrepancy(result: StepResult, reference: StepResult) -> float:
    """The largest difference of the meta-gradients, relative to the largest reference entry.

    Per tree (θ's, then φ's), like ``_close``; NaN counts as infinitely far.
    """
    worst = 0.0
    for got, want in (
        (result.grads, reference.grads),
        (result.learnable_grads, reference.learnable_grads),
    ):
        want = {k: v for k, v in want.items() if v.numel()}
        if not want:
            continue
        scale = max(v.abs().max().item() for v in want.values())
        diff = max((got[k].to(v.dtype) - v).abs().max().item() for k, v in want.items())
        if math.isnan(diff) or math.isnan(scale):
            return math.inf
        worst = max(worst, diff / scale if scale > 0 else 0.0 if diff == 0 else math.inf)
    return worst


Probe = tuple[dict[str, Tensor], dict[str, Tensor], Mapping[str, Tensor], Mapping[str, Tensor]]


def _float64(probe: Probe, unit: Tensor | float) -> tuple[Probe, Tensor | float]:
    """A float64 copy of the probe's floating tensors (integer labels stay as they are)."""

    def cast(tree: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in tree.items()}

    params, learnables, support, query = probe
    copy = (cast(params), cast(learnables), cast(support), cast(query))
    return copy, unit.to(torch.float64) if isinstance(unit, Tensor) else unit


def _has_tasks(probe: Probe) -> bool:
    support = probe[2]
    return bool(support) and next(iter(support.values())).shape[0] > 0


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


def _time_once(strategy: Strategy, step: MetaStep, probe: Probe, scale: Tensor | float) -> float:
    """Seconds of one call of an already warm ``step``."""
    start = time.perf_counter()
    _sync(step(*probe, scale))
    return time.perf_counter() - start


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
    module: nn.Module | None = None,
    verify: bool = True,
) -> Selection:
    """Resolve ``kernel.strategy`` to a working meta-step.

    ``probe`` is ``(params, learnables, support, query)`` of the run's first shard: ``auto``
    times the candidates on it (see the module docstring); an explicit fast strategy is checked
    on it, in float64, and refused with a one-line ``ConfigError`` if its meta-gradient is wrong.
    ``module`` is the model, searched for the layers to name in that case;
    ``verify=False`` skips the check (e.g. where another process made it).
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

    key = None
    if signature is not None:
        key = _signature(signature, probe, steps, first_order, multi_step)
    measured = _CACHE.setdefault(key, _Measured()) if key is not None else _Measured()
    candidates = _Candidates(
        build, probe, _unit(probe, steps, multi_step), autocast, measured, strategies, module
    )
    if requested != "auto":
        strategy = _requested(requested, strategies)
        if verify and strategy != "loop" and _has_tasks(probe):
            candidates.check_requested(strategy)
        return Selection(strategy, candidates.step(strategy), "requested")
    cached = "loop" in measured.seconds
    if not cached:
        candidates.measure("loop")
        if "batched" in strategies:
            candidates.measure("batched")
    chosen, reason = _choose(candidates, strategies, remaining_iterations, time_left)
    if chosen != "loop" and not cached:
        chosen, reason = _confirm(candidates, chosen, reason)
    if cached:
        reason = f"cached: {reason}"
    return Selection(chosen, candidates.step(chosen), reason, dict(measured.seconds))


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


def _eager_twin(strategy: Strategy, strategies: Collection[Strategy]) -> Strategy:
    """The eager kernel whose float64 parity vouches for ``strategy``.

    Every fast strategy runs ``torch.func`` transforms of the same objective, and all but
    ``compiled-loop`` vmap it, so the eager ``batched`` kernel stands for them all: a model it gets
    wrong gets no fast kernel. An algorithm without ``batched`` has each strategy checked itself.
    """
    return "batched" if "batched" in strategies else strategy


def _unsafe(module: nn.Module | None) -> list[str]:
    return [] if module is None else safe_nn.vmap_unsafe_layers(module)


def _layers(module: nn.Module | None, loop_fix: bool) -> str:
    """The model's layers that torch's vmap gets wrong (or fails on), and the fix, in one line."""
    found = _unsafe(module)
    or_loop = ", or use kernel.strategy=loop" if loop_fix else ""
    if not found:
        return (
            "the model has no layer known to be unsafe under vmap (a functional F.layer_norm, "
            "F.batch_norm or F.instance_norm with a weight is, see docs/kernels.md)"
            + ("; use kernel.strategy=loop" if loop_fix else "")
        )
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return f"torch's vmap gets these layers wrong (functorch #534): {shown}{or_loop}"


@dataclass
class _Candidates:
    """The meta-steps ``auto`` builds, checks against the loop and times on one probe."""

    build: Callable[..., MetaStep]
    probe: Probe
    unit: Tensor | float
    autocast: torch.dtype | None
    measured: _Measured
    strategies: Collection[Strategy] = STRATEGIES
    module: nn.Module | None = None
    built: dict[str, MetaStep] = field(default_factory=dict)
    exact: dict[str, MetaStep] = field(default_factory=dict)
    reference: StepResult | None = None
    """The loop's result on the probe, in the precision parity is checked in."""
    loop32: StepResult | None = None
    """The loop's result on the probe in IEEE float32 (only where a compiled kernel needs it)."""

    @property
    def device(self) -> torch.device:
        return next(iter(self.probe[0].values())).device

    def step(self, strategy: Strategy) -> MetaStep:
        """The step built for ``strategy`` while measuring, or a new one."""
        return self.built.get(strategy) or self.build(strategy)

    def _exact(self, strategy: Strategy) -> MetaStep:
        """``strategy``'s step without autocast: the one parity is checked with."""
        if self.autocast is None:
            if strategy not in self.built:
                self.built[strategy] = self.build(strategy)
            return self.built[strategy]
        if strategy not in self.exact:
            self.exact[strategy] = self.build(strategy, None)
        return self.exact[strategy]

    def _reference(self) -> StepResult:
        """The loop on the probe in float64 (or in the run's dtype where float64 fails)."""
        if self.reference is None:
            loop = self._exact("loop")
            probe, unit = _float64(self.probe, self.unit)
            try:
                self.reference = loop(*probe, unit)
            except Exception as exc:  # no float64 here: IEEE float32 at a tight tolerance
                log.warning(
                    "kernel parity: the loop fails in float64 (%s); checking in %s to %.0e",
                    _one_line(exc),
                    str(next(iter(self.probe[0].values())).dtype).removeprefix("torch."),
                    FLOAT32_PARITY_TOLERANCE,
                )
                with exact_float32(self.device):
                    self.reference = loop(*self.probe, self.unit)
        return self.reference

    def verdict(self, strategy: Strategy) -> _Verdict:
        """``strategy`` checked against the loop in the reference's precision, once a signature."""
        verdicts = self.measured.verdicts
        if strategy not in verdicts:
            reference = self._reference()
            dtype = next(iter(reference.grads.values())).dtype
            probe, unit = self.probe, self.unit
            if dtype == torch.float64:
                probe, unit = _float64(self.probe, self.unit)
            try:
                with exact_float32(self.device):
                    result = self._exact(strategy)(*probe, unit)
                verdicts[strategy] = _Verdict(dtype, _discrepancy(result, reference))
            except Exception as exc:  # a kernel that fails is as unusable as a wrong one
                verdicts[strategy] = _Verdict(dtype, math.inf, _one_line(exc))
        return verdicts[strategy]

    def check_requested(self, strategy: Strategy) -> None:
        """Refuse an explicitly requested ``strategy`` whose eager twin disagrees with the loop."""
        twin = _eager_twin(strategy, self.strategies)
        verdict = self.verdict(twin)
        if verdict.ok:
            return
        kernel = strategy if twin == strategy else f"{strategy} (checked as its eager twin {twin})"
        raise ConfigError(
            [
                f"kernel.strategy: {kernel} {verdict.describe()} on the first batch; "
                f"{_layers(self.module, loop_fix=True)}"
            ]
        )

    def measure(self, strategy: Strategy) -> None:
        """Build, check against the loop and time ``strategy``, recording what happened."""
        rejected = self.measured.rejected
        step = self.built[strategy] = self.build(strategy)
        try:
            if strategy == "loop":
                self._reference()
            elif not self._vouched(strategy):
                return
            elif strategy in COMPILED_STRATEGIES and not self._compiled_matches(strategy):
                rejected[strategy] = "meta-gradient disagrees with the loop"
                log.warning("kernel %s: %s on the probe", strategy, rejected[strategy])
                return
            # The warm-up call compiles a compiled strategy's autocast twin: its failures count.
            seconds = _seconds_per_step(strategy, step, self.probe, self.unit)
        except Exception as exc:  # any compiler failure means: use another candidate
            if strategy == "loop":
                raise  # the reference itself fails: the objective is broken, say so
            rejected[strategy] = f"failed ({_one_line(exc)})"
            log.warning("kernel %s %s", strategy, rejected[strategy])
            return
        self.measured.seconds[strategy] = seconds

    def _vouched(self, strategy: Strategy) -> bool:
        """Whether ``strategy``'s eager twin matched the loop in float64; records why not."""
        twin = _eager_twin(strategy, self.strategies)
        verdict = self.verdict(twin)
        if verdict.ok:
            return True
        if twin == strategy:
            why = verdict.describe()
            if not verdict.failure or _unsafe(self.module):
                why += f"; {_layers(self.module, loop_fix=False)}"
        else:
            why = f"not tried ({twin} {verdict.describe()})"
        self.measured.rejected[strategy] = why
        log.warning("kernel %s: %s", strategy, why)
        return False

    def _compiled_matches(self, strategy: Strategy) -> bool:
        """A compiled kernel against the loop in IEEE float32: what compiling alone can break.

        Where float32 cannot decide, because rounding alone moves the loop's own meta-gradient
        that far (max-pool nets over several inner steps: a rounding flips which of two nearly
        equal pixels a pool passes on, and the steps amplify it), the compiled kernel is run in
        float64 (a second compile) and held to ``COMPILED_FLOAT64_TOLERANCE``.
        """
        with exact_float32(self.device):
            result = self._exact(strategy)(*self.probe, self.unit)  # compiles
        reference = self._reference()
        if _agrees(result, reference):
            return True
        if next(iter(reference.grads.values())).dtype != torch.float64 or self._float32_decides():
            return False
        probe, unit = _float64(self.probe, self.unit)
        try:
            exact = _discrepancy(self._exact(strategy)(*probe, unit), reference)  # recompiles
        except Exception as exc:  # no float64 compile here: float32 could not vouch for it
            log.warning("kernel %s: float64 check failed (%s)", strategy, _one_line(exc))
            return False
        log.info(
            "kernel %s: float32 rounding moves even the loop's meta-gradient by %.1e here; "
            "checked in float64 instead: %.1e of the largest entry",
            strategy,
            _discrepancy(self._float32_loop(), reference),
            exact,
        )
        return exact <= COMPILED_FLOAT64_TOLERANCE

    def _float32_loop(self) -> StepResult:
        if self.loop32 is None:
            with exact_float32(self.device):
                self.loop32 = self._exact("loop")(*self.probe, self.unit)
        return self.loop32

    def _float32_decides(self) -> bool:
        """Whether the loop itself, in IEEE float32, agrees with its float64 self on the probe:
        then a float32 disagreement is the kernel's, not rounding's."""
        return _agrees(self._float32_loop(), self._reference())


def _agrees(result: StepResult, reference: StepResult) -> bool:
    """Both meta-gradient trees within float32's tolerance of ``reference``'s (see ``_close``)."""
    return _close(result.grads, _like(reference.grads, result.grads)) and _close(
        result.learnable_grads, _like(reference.learnable_grads, result.learnable_grads)
    )


def _like(tree: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tree``'s tensors in the dtypes of ``like``'s (a float64 reference for a float32 run)."""
    return {k: v.to(like[k].dtype) if k in like else v for k, v in tree.items()}


def _confirm(candidates: _Candidates, chosen: Strategy, reason: str) -> tuple[Strategy, str]:
    """``chosen`` against the loop once more, the two interleaved, by the median.

    Each candidate was timed on its own, one after the other; on a machine whose load comes and
    goes, a kernel timed in a quiet moment can look faster than a loop timed in a busy one.
    Interleaving puts both in the same moments.
    """
    steps = {name: candidates.step(name) for name in (chosen, "loop")}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(CONFIRM_ROUNDS):
        for name, step in steps.items():
            times[name].append(_time_once(name, step, candidates.probe, candidates.unit))
    median = {name: statistics.median(t) for name, t in times.items()}
    if median[chosen] <= median["loop"]:
        return chosen, reason
    return "loop", (
        f"{reason}; but interleaved with the loop {chosen} took {_ms(median[chosen])} against "
        f"{_ms(median['loop'])}: loop"
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
