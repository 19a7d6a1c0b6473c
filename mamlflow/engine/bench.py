"""Measuring the meta-step strategies on one real meta-batch: speed, memory, compile, parity.

Which strategy is fastest depends on the model and the device (see ``_maml``), so the choice is a
measurement. ``auto`` makes a quick one at the start of every run; this module makes the full
one behind ``metaflow bench``: for every strategy, on the same meta-batch of a preset,

* throughput (tasks/s from the median of timed calls, after warm-up) and the speed-up over
  ``loop``, the reference;
* the cost of the first call, which is where ``torch.compile`` compiles;
* the peak tensor memory of one warm step;
* the useful FLOP rate as a share of the device's measured fp32 matrix-multiply peak, so numbers
  from different machines can be compared;
* agreement with ``loop``'s meta-gradient, so a fast but wrong kernel is visible at once;
* and what ``auto`` would choose for the run, with its reason.

A strategy that fails (a compiler error, say) becomes a row with its error; it never ends the
measurement of the others. Nothing here imports the CLI's libraries.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

from ..core import (
    STRATEGIES,
    ConfigError,
    MetaStep,
    Params,
    StepResult,
    Strategy,
    TaskBatch,
    UnknownNameError,
)
from ..kernels import COMPILED_STRATEGIES, exact_float32, select_meta_step
from .components import Components

__all__ = [
    "COMPILED_STRATEGIES",
    "ORDERS",
    "AutoChoice",
    "BenchReport",
    "Order",
    "StrategyResult",
    "benchmark",
    "count_flops",
    "device_name",
    "device_strategies",
    "matmul_peak_gflops",
    "peak_memory_mib",
]

Order = Literal["first", "second"]
ORDERS: tuple[Order, ...] = get_args(Order)

_MIB = 2**20


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's measurements; every number is ``None`` when ``error`` says why it failed.

    ``speedup_vs_loop`` and ``max_rel_err`` are relative to the ``loop`` row of the same report;
    ``max_rel_err`` is max |g − g_loop| over all meta-gradient tensors divided by max |g_loop|.
    """

    strategy: str
    tasks_per_s: float | None = None
    peak_mem_mib: float | None = None
    compile_s: float | None = None
    median_ms: float | None = None
    first_call_ms: float | None = None
    speedup_vs_loop: float | None = None
    achieved_gflops: float | None = None
    pct_peak: float | None = None
    max_rel_err: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AutoChoice:
    """What ``kernel.strategy=auto`` picks for this run, and the reason it logs."""

    strategy: str
    reason: str


@dataclass(frozen=True)
class BenchReport:
    """A whole measurement; ``as_json()`` is the schema ``metaflow bench --json`` prints.

    ``peak_gflops`` is the device's measured fp32 matrix-multiply rate (see
    ``matmul_peak_gflops``); ``flops_per_step`` counts the matmul/convolution FLOPs of one
    ``loop`` meta-step, backward and double backward included; ``pct_peak`` of a float64 run is
    still relative to the fp32 peak. ``auto`` is ``None`` only when the caller skipped it.
    """

    device: str
    peak_gflops: float
    preset: str
    order: Order
    meta_batch: int
    results: tuple[StrategyResult, ...]
    auto: AutoChoice | None
    dtype: str
    autocast: str
    threads: int
    inner_steps: int
    flops_per_step: int | None
    repeats: int
    warmup: int
    torch_version: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def result(self, strategy: str) -> StrategyResult:
        """The row of ``strategy``; ``KeyError`` when it was not measured."""
        for row in self.results:
            if row.strategy == strategy:
                return row
        raise KeyError(strategy)


# --- what a device can run and what it is ------------------------------------------------------


def device_strategies(device: torch.device) -> tuple[Strategy, ...]:
    """Every strategy ``device`` can run: CUDA graphs need CUDA, the others run anywhere."""
    return tuple(s for s in STRATEGIES if s != "cudagraphs" or device.type == "cuda")


def device_name(device: torch.device) -> str:
    """``"cpu: AMD EPYC 9B14 (2 threads)"`` or the CUDA device's name, for the report's header.

    The thread count is torch's intra-op thread count, which is what a CPU measurement depends
    on, not the number of cores the machine has.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return str(device)
    model = platform.processor() or platform.machine() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                    break
    except OSError:
        pass  # not Linux: platform's answer is the best there is
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def matmul_peak_gflops(device: torch.device) -> float:
    """The device's fp32 matrix-multiply rate, measured: best of a few square matmuls, GFLOP/s.

    A measured peak rather than a datasheet one: it is what this machine, with torch's current
    thread count, can do at best, so ``% peak`` says how much of it a meta-step uses. CUDA runs
    with TF32 off (restored afterwards), since the meta-steps are measured in true fp32. Cached
    per device for the process: it takes about a second.
    """
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=torch.float32)
    b = torch.randn(n, n, device=device, dtype=torch.float32)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.mm(a, b)  # warm-up: thread pool, cuBLAS handle and heuristics
        _synchronize(device)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(a, b)
            _synchronize(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / best / 1e9


# --- the three measurements of one step ---------------------------------------------------------


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """The peak tensor memory ``fn()`` allocates on ``device`` on top of what is already live, MiB.

    On CUDA this is the caching allocator's own statistic. A CPU has none, so the call runs under
    ``torch.profiler`` with memory profiling and the peak is that of the running sum of its
    allocation and free events, in time order. Either way it counts tensor storage allocated
    through PyTorch's allocator (including what compiled kernels allocate), not oneDNN's or
    cuDNN's private scratch buffers, the CUDA graph pools captured before the call, or Python
    objects. ``None`` where neither source exists (other device types, or a profiler without
    the event API).
    """
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / _MIB
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    try:
        # The raw event list: ``prof.events()`` folds allocations into the op that made them
        # and loses their order, so only the kineto events give the running sum.
        events = prof.profiler.kineto_results.events()
        changes = sorted(
            (event.start_ns(), event.nbytes())
            for event in events
            if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
        )
    except AttributeError:  # a torch without this (private) event API: say "unknown", not 0
        return None
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak / _MIB


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for the block.

    Kineto writes ``profiler_start``/``profiler_stop`` lines straight to fd 2 when a profile
    starts and stops; only those two calls run silenced, never the measured step.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to silence (a detached process): nothing to do
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul and convolution FLOPs of ``fn()``, backward and double backward included.

    ``FlopCounterMode`` counts what reaches the dispatcher, so only the ops it has formulas for
    (mm, bmm, addmm, convolutions, attention): the elementwise work is left out, which makes this
    the model's useful arithmetic rather than everything the step executes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _max_rel_err(result: StepResult, reference: StepResult) -> float:
    """max |g − g_ref| over all meta-gradient tensors, relative to max |g_ref|.

    Relative to the whole gradient's scale, not tensor by tensor: some meta-gradients are zero in
    exact arithmetic (a conv bias before batch norm) and rounding noise in practice.
    """
    want = {**_prefixed("θ.", reference.grads), **_prefixed("φ.", reference.learnable_grads)}
    got = {**_prefixed("θ.", result.grads), **_prefixed("φ.", result.learnable_grads)}
    if got.keys() != want.keys():
        raise ValueError(f"meta-gradient keys differ from loop's: {sorted(got)} vs {sorted(want)}")
    if not want:
        return 0.0
    scale = max(w.detach().abs().max().item() for w in want.values())
    diff = max(
        (got[k].detach().double() - want[k].detach().double()).abs().max().item() for k in want
    )
    return diff / scale if scale > 0 else diff


def _prefixed(prefix: str, tree: Params) -> Params:
    return {prefix + k: v for k, v in tree.items()}


# --- arguments ----------------------------------------------------------------------------------


def _unknown(kind: str, name: str, available: Sequence[str]) -> UnknownNameError:
    close = difflib.get_close_matches(name, available, n=1)
    did_you_mean = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownNameError(
        f"Unknown {kind} '{name}'.{did_you_mean} Available: {', '.join(available)}."
    )


def _check_order(order: str) -> Order:
    if order not in ORDERS:
        raise _unknown("order", order, ORDERS)
    return order  # type: ignore[return-value]  # narrowed just above


def _check_strategies(
    names: Sequence[str] | None,
    device: torch.device,
    implemented: Sequence[Strategy] = STRATEGIES,
    algorithm: str = "",
) -> tuple[Strategy, ...]:
    """The strategies to measure, ``loop`` first (the reference), each once, in the given order."""
    available = [s for s in device_strategies(device) if s in implemented]
    if names is None:
        chosen: list[Strategy] = list(available)
    else:
        chosen = []
        for name in names:
            if name not in STRATEGIES:
                raise _unknown("strategy", name, STRATEGIES)
            if name not in implemented:
                raise ConfigError(
                    [
                        f"strategies: {algorithm} has no {name} kernel; use "
                        f"{', '.join(implemented)}, or leave --strategies out"
                    ]
                )
            if name not in available:
                raise ConfigError(
                    [
                        f"strategies: {name} needs a CUDA device and the benchmark runs on "
                        f"{device}; pass --device cuda or leave {name} out"
                    ]
                )
            if name not in chosen:
                chosen.append(name)  # type: ignore[arg-type]  # checked against STRATEGIES
    return ("loop", *(s for s in chosen if s != "loop"))


# --- the benchmark ------------------------------------------------------------------------------


def benchmark(
    components: Components,
    *,
    strategies: Sequence[str] | None = None,
    order: Order | None = None,
    repeats: int = 5,
    warmup: int = 1,
    auto: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure meta-step strategies on one meta-batch of ``components``' run, on its device.

    The batch is the run's first (``train.meta_batch_size`` tasks, seeded by ``seed``) and θ, φ
    its initial values, so the numbers are those of the run the config describes. ``strategies``
    defaults to every one the device can run; ``loop`` is always measured, first, since it is the
    reference for speed-ups and parity. ``order`` defaults to the config's ``inner.first_order``.

    Per strategy: the first call is timed on its own (a compiled strategy compiles there), then
    ``warmup`` untimed calls, then ``repeats`` timed ones whose median is the step time; then one
    more warm step for memory. ``auto`` runs ``select_meta_step`` the way a run does (it may
    compile, for long runs). ``progress`` is told what is being measured, for a status line.

    Raises ``UnknownNameError`` for an unknown strategy or order and ``ConfigError`` for a
    strategy the device cannot run, before anything is measured.
    """
    config, device = components.config, components.device
    algorithm = components.algorithm
    chosen = _check_strategies(
        strategies, device, algorithm.strategies or STRATEGIES, config.algorithm.name
    )
    order = _check_order(order if order is not None else _config_order(components))
    if repeats < 1 or warmup < 0:
        raise ConfigError([f"repeats must be ≥ 1 and warmup ≥ 0, got {repeats} and {warmup}"])
    say = progress or (lambda _message: None)
    params, learnables, batch = _first_meta_batch(components, say)
    args = (params, learnables, batch.support, batch.query, 1.0 / config.train.meta_batch_size)
    build = _builder(components, first_order=order == "first")
    say("measuring the fp32 matmul peak")
    peak_gflops = matmul_peak_gflops(device)
    say("counting FLOPs")
    try:
        loop_step = build("loop")
        flops: int | None = count_flops(lambda: loop_step(*args))
    except Exception:  # the loop row below reports the error itself
        flops = None
    rows = _rows(chosen, build, args, components, repeats, warmup, flops, peak_gflops, say)
    choice: AutoChoice | None = None
    if auto:
        say("auto: selecting a strategy as a run would")
        probe = (params, learnables, batch)
        choice = _auto(components, components.objective(), order == "first", probe)
    return BenchReport(
        device=device_name(device),
        peak_gflops=peak_gflops,
        preset=config.preset or config.task.name,
        order=order,
        meta_batch=config.train.meta_batch_size,
        results=tuple(rows),
        auto=choice,
        dtype=str(components.dtype).removeprefix("torch."),
        autocast=config.kernel.autocast,
        threads=torch.get_num_threads(),
        inner_steps=config.inner.steps,
        flops_per_step=flops,
        repeats=repeats,
        warmup=warmup,
        torch_version=torch.__version__,
    )


def _first_meta_batch(
    components: Components, say: Callable[[str], None]
) -> tuple[Params, Params, TaskBatch]:
    """The run's first meta-batch and initial θ, φ, as the run would step on them."""
    config, device, dtype = components.config, components.device, components.dtype
    say("sampling a meta-batch")
    index = torch.arange(config.train.meta_batch_size)
    raw = components.family.sample_raw(config.seed, 0, index).to(device, dtype)
    batch = components.family.prepare(raw, dtype)
    params, learnables = (
        {k: v.detach().to(device, dtype).clone() for k, v in tree.items()}
        for tree in components.initial_params()
    )
    # A rollout family's meta-step differentiates trajectories: collected here (not timed).
    say("preparing the meta-batch")
    batch = components.source.meta_batch(batch, params, learnables, seed=config.seed, iteration=0)
    return params, learnables, batch


def _builder(components: Components, *, first_order: bool) -> Callable[[Strategy], MetaStep]:
    """Builds the run's meta-step in a given strategy, at the benchmarked order."""
    meta_steps, objective = components.meta_steps(), components.objective()

    def build(strategy: Strategy) -> MetaStep:
        return meta_steps(
            objective,
            components.adapter,
            steps=components.config.inner.steps,
            first_order=first_order,
            strategy=strategy,
            autocast=components.autocast,
        )

    return build


def _rows(
    chosen: Sequence[Strategy],
    build: Callable[[Strategy], MetaStep],
    args: tuple[Params, Params, Any, Any, float],
    components: Components,
    repeats: int,
    warmup: int,
    flops: int | None,
    peak_gflops: float,
    say: Callable[[str], None],
) -> list[StrategyResult]:
    """One row per strategy, ``loop`` first: the reference of speed-ups and parity."""
    rows: list[StrategyResult] = []
    reference: StepResult | None = None
    loop_median: float | None = None
    num_tasks, device = components.config.train.meta_batch_size, components.device
    for strategy in chosen:
        try:
            result, first_call, median, memory = _measure(
                build(strategy), args, device, repeats, warmup, _prefix_with(strategy, say)
            )
            if strategy == "loop":
                reference, loop_median = result, median
            achieved = None if flops is None else flops / median / 1e9
            compiled = strategy in COMPILED_STRATEGIES
            rows.append(
                StrategyResult(
                    strategy=strategy,
                    tasks_per_s=num_tasks / median,
                    peak_mem_mib=memory,
                    compile_s=max(first_call - median, 0.0) if compiled else 0.0,
                    median_ms=median * 1e3,
                    first_call_ms=first_call * 1e3,
                    speedup_vs_loop=None if loop_median is None else loop_median / median,
                    achieved_gflops=achieved,
                    pct_peak=None if achieved is None else 100 * achieved / peak_gflops,
                    max_rel_err=None if reference is None else _max_rel_err(result, reference),
                )
            )
        except Exception as exc:  # a failing kernel is a finding, not the end of the benchmark
            rows.append(StrategyResult(strategy=strategy, error=_one_line(exc)))
        finally:
            gc.collect()  # the last strategy's graphs and buffers must not weigh on the next
    return rows


def _prefix_with(strategy: str, say: Callable[[str], None]) -> Callable[[str], None]:
    return lambda phase: say(f"{strategy}: {phase}")


def _config_order(components: Components) -> Order:
    """The order the run's algorithm trains in (Reptile and FOMAML: always first)."""
    first = components.algorithm.first_order(components.config.inner, 0)
    return "first" if first else "second"


def _measure(
    step: MetaStep,
    args: tuple[Params, Params, Any, Any, float],
    device: torch.device,
    repeats: int,
    warmup: int,
    say: Callable[[str], None],
) -> tuple[StepResult, float, float, float | None]:
    """(first result, first call s, median s, peak MiB) of one strategy's step."""

    def timed() -> tuple[StepResult, float]:
        _synchronize(device)
        start = time.perf_counter()
        result = step(*args)
        _synchronize(device)
        return result, time.perf_counter() - start

    say("first call (compiles, if compiled)")
    first, first_call = timed()
    say("warming up")
    for _ in range(warmup):
        timed()
    say("timing")
    times = [timed()[1] for _ in range(repeats)]
    say("measuring memory")
    memory = peak_memory_mib(lambda: step(*args), device)
    if device.type == "cuda":
        # Parity in IEEE float32: cuDNN's default TF32 alone separates two correct kernels.
        say("parity run in IEEE float32")
        with exact_float32(device):
            first = step(*args)
    return first, first_call, statistics.median(times), memory


def _auto(
    components: Components,
    objective: Any,
    first_order: bool,
    probe: tuple[Params, Params, Any],
) -> AutoChoice:
    params, learnables, batch = probe
    try:
        selection = select_meta_step(
            "auto",
            objective,
            components.adapter,
            steps=components.config.inner.steps,
            first_order=first_order,
            remaining_iterations=components.config.train.iterations,
            probe=(params, learnables, batch.support, batch.query),
            autocast=components.autocast,
            factory=components.meta_steps(),
            strategies=components.algorithm.strategies or STRATEGIES,
            module=components.learner.module,
        )
    except Exception as exc:  # like a strategy's failure: reported, not raised
        return AutoChoice("failed", _one_line(exc))
    finally:
        gc.collect()
    return AutoChoice(selection.strategy, selection.reason)


def _one_line(exc: BaseException) -> str:
    """``Type: first non-blank line of the message``, for one-line rows and reasons."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
