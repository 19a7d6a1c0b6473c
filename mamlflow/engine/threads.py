"""CPU threads as part of the plan: measured like kernels, and measured again when the machine
changes under a run.

Two intra-op threads on a 2-core machine are the fastest when the machine is quiet and up to ~9×
slower than one thread when another process takes a core (``benchmarks/distributed.py``): each
parallel region waits for its slowest thread, and a thread that shares its core with another
process is descheduled for whole time slices. One thread is barely affected. So a CPU run times
its meta-step with one thread and with all of its cores, interleaved (so a burst of load hits
every candidate alike) and by the median, keeps the faster, and watches its live step time: when
the step stays far slower than the plan measured, it measures again (``ThroughputWatch``).

``MAMLFLOW_THREADS=N`` or ``kernel.threads=N`` fixes the count; a CUDA run keeps torch's.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core import ConfigError

__all__ = [
    "THREADS_ENV",
    "THREADS_MIN_SECONDS",
    "ThreadPlan",
    "ThroughputWatch",
    "fixed_threads",
    "measure_threads",
    "plan_threads",
    "usable_cores",
]

log = logging.getLogger("mamlflow.threads")

THREADS_ENV = "MAMLFLOW_THREADS"
THREADS_MIN_SECONDS = 60.0
"""Measure the threads only for runs with at least this much meta-step time left: the
measurement costs a few steps per candidate."""
FEWER_WITHIN = 1.05
"""More threads must be this much faster to be kept: fewer threads suffer less under load."""


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    """How many intra-op threads a run uses, why, and what each candidate measured."""

    threads: int
    reason: str
    seconds: dict[int, float]
    """Median seconds per meta-step for each thread count measured (empty: none measured)."""

    @property
    def expected_seconds(self) -> float | None:
        """The measured step time at the chosen count, or None when nothing was measured."""
        return self.seconds.get(self.threads)


def measure_threads(
    step: Callable[[], object], candidates: Sequence[int], repeats: int = 5
) -> dict[int, float]:
    """Median seconds of ``step`` at each thread count, the counts interleaved in every round.

    Each count gets one untimed call first (allocations, caches). Leaves torch's thread count
    as it found it.
    """
    saved = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in candidates}
    try:
        for n in candidates:
            torch.set_num_threads(n)
            step()
        for _ in range(repeats):
            for n in candidates:
                torch.set_num_threads(n)
                start = time.perf_counter()
                step()
                times[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return {n: statistics.median(t) for n, t in times.items()}


def fixed_threads(requested: int | str, processes: int) -> tuple[int, str] | None:
    """The thread count that needs no measuring, and why: ``MAMLFLOW_THREADS``, a fixed
    ``kernel.threads``, or the cores shared by several processes; None when ``auto`` may
    measure."""
    raw = os.environ.get(THREADS_ENV)
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError([f"{THREADS_ENV}: {raw!r} is not a positive number of threads"])
        return int(raw), f"{THREADS_ENV}={raw}"
    if requested != "auto":
        return int(requested), "kernel.threads"
    if processes > 1:
        return max(1, usable_cores() // processes), f"{processes} processes share the cores"
    return None


def plan_threads(
    requested: int | str,
    step: Callable[[], object],
    *,
    device: torch.device,
    processes: int = 1,
    repeats: int = 5,
) -> ThreadPlan:
    """Decide the intra-op threads of a run whose meta-step is ``step`` and set them.

    ``requested``: ``kernel.threads`` (``"auto"`` or a count). ``processes``: processes of the
    run on this machine, which share its cores.
    """
    fixed = fixed_threads(requested, processes)
    if fixed is not None:
        torch.set_num_threads(fixed[0])
        return ThreadPlan(fixed[0], fixed[1], {})
    if device.type != "cpu":
        return ThreadPlan(torch.get_num_threads(), f"{device.type} run: torch's default", {})
    cores = usable_cores()
    candidates = sorted({1, cores})
    if len(candidates) == 1:
        torch.set_num_threads(1)
        return ThreadPlan(1, "one core", {})
    seconds = measure_threads(step, candidates, repeats)
    chosen = min(candidates)
    for n in candidates:
        if seconds[n] * FEWER_WITHIN < seconds[chosen]:
            chosen = n
    torch.set_num_threads(chosen)
    timing = ", ".join(f"{n}: {seconds[n] * 1e3:.3g} ms" for n in candidates)
    return ThreadPlan(chosen, f"measured per step ({timing}; median of {repeats})", seconds)


class ThroughputWatch:
    """Says when a run's live step time has stayed far above what its plan measured.

    ``observe`` takes each step's seconds; it answers True once the median of the last
    ``window`` steps exceeds ``factor`` × ``expected``, then stays quiet for ``cooldown`` steps
    (a re-measure costs a few steps, and load that comes and goes should not cause one per
    window).
    """

    def __init__(
        self, expected: float, *, factor: float = 2.0, window: int = 20, cooldown: int = 200
    ) -> None:
        self.expected, self.factor, self.cooldown = expected, factor, cooldown
        self.recent: deque[float] = deque(maxlen=window)
        self.quiet = 0

    def observe(self, seconds: float) -> bool:
        self.recent.append(seconds)
        if self.quiet > 0:
            self.quiet -= 1
            return False
        if len(self.recent) < (self.recent.maxlen or 1):
            return False
        if statistics.median(self.recent) <= self.factor * self.expected:
            return False
        self.quiet = self.cooldown
        self.recent.clear()
        return True

    def replanned(self, expected: float) -> None:
        """The plan was measured again: compare with its new step time from now on."""
        self.expected = expected
