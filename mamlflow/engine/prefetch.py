"""The next meta-batch, sampled in a background thread while the current step runs.

Sampling is a pure function of (seed, iteration, task indices), so the batch of iteration i + 1
can be built while the step of iteration i computes, and is bitwise the batch the step would
have sampled itself. The trainer prefetches ``sample_raw``'s batch (uint8 pixels for image
families, normalised on the device by ``prepare``); on CUDA the batch is also copied into pinned
memory there, so the step's host-to-device copy is asynchronous. Only families that declare
``TaskFamily.prefetch`` are sampled off the main thread: a family with mutable state is not safe
to call from two threads (validation samples on the main thread while a prefetch may run).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..core import TaskBatch

__all__ = ["Prefetcher"]


class Prefetcher:
    """``take(i)`` returns the batch of iteration ``i``, and starts sampling the next one."""

    def __init__(self, sample: Callable[[int], TaskBatch], *, enabled: bool, pin: bool) -> None:
        self._sample = sample
        self._pin = pin
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="mamlflow-prefetch")
            if enabled
            else None
        )
        self._pending: tuple[int, Future[TaskBatch]] | None = None

    def take(self, iteration: int, following: int | None) -> TaskBatch:
        """The batch of ``iteration``; ``following`` is sampled next, in the background.

        An exception raised while sampling in the background is raised here, by the call that
        wanted that batch, so the caller reports it as it reports its own.
        """
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == iteration:
            batch = pending[1].result()
        else:  # the first iteration, or an iteration nobody predicted (never in practice)
            if pending is not None:
                pending[1].cancel()
            batch = self._build(iteration)
        if self._pool is not None and following is not None:
            self._pending = (following, self._pool.submit(self._build, following))
        return batch

    def close(self) -> None:
        """Drop a batch nobody will take, and stop the thread (an in-flight sample finishes)."""
        self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _build(self, iteration: int) -> TaskBatch:
        batch = self._sample(iteration)
        return batch.pin_memory() if self._pin else batch
