"""Meta-training: build a run's components from its config and run the outer loop.

The loop is plain Python around one kernel call per iteration, as a short list of named steps:
restore (or initialise) the state, then per iteration sample the meta-batch (a pure function of
seed and iteration; rollout families collect trajectories here), step (the meta-gradient),
reduce (over processes), update (the outer optimizer), log (and validate), checkpoint. Logging,
callbacks, checkpoints and the time limit run between steps, never inside the compiled step.

With several processes (``dist``, see ``distributed.py``) each one samples and differentiates its
shard of the meta-batch, and one flattened ``all_reduce`` per step, outside the kernel, sums the
meta-gradients, the loss and the processes' stop requests before every process applies the same
update. Rank 0 alone writes the run directory, validates and calls callbacks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core import (
    STRATEGIES,
    Callback,
    CheckpointError,
    ConfigError,
    MetaStep,
    MetricsRecord,
    NonFiniteError,
    OuterOptimizer,
    OuterStepReport,
    Params,
    RunConfig,
    RunDir,
    StepResult,
    TaskBatch,
    TrainerControl,
    TrainStart,
    TrainSummary,
    atomic_write,
    rundir,
    strict_json,
)
from ..kernels import Selection, select_meta_step
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .components import build_components
from .distributed import Dist, DistributedError
from .evaluation import evaluate
from .guard import plugin_code, writing
from .host import PluginHost
from .locking import remove_stale_temporaries, run_lock
from .prefetch import Prefetcher
from .resolution import ResolvedConfig, as_resolved, load_saved, save_resolved
from .threads import THREADS_MIN_SECONDS, ThreadPlan, ThroughputWatch, plan_threads

__all__ = ["Trainer"]

log = logging.getLogger("mamlflow.trainer")


@dataclass
class _Interval:
    """What accumulates between two metrics records (kept on device: no sync per step)."""

    loss_sum: Tensor | None = None
    logged_sum: Tensor | None = None
    """The batch source's extra numbers (rollout families: returns before and after)."""
    outer: OuterStepReport | None = None
    """What the latest outer step reported."""
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Run:
    """The training state between two steps: what a checkpoint holds, and the bookkeeping."""

    params: Params
    learnables: Params
    outer: OuterOptimizer
    optimizer: torch.optim.Optimizer
    start: int
    elapsed_before: float
    strategy: str
    best: float | None
    iteration: int = 0
    t0: float = field(default_factory=time.perf_counter)
    last_checkpoint: float = field(default_factory=time.perf_counter)
    interval: _Interval = field(default_factory=_Interval)
    last_record: MetricsRecord | None = None
    stopped_by: str = "iterations"
    first_nonfinite: Tensor = field(default_factory=lambda: torch.tensor(-1))
    """The first iteration whose meta-loss was not finite, or -1 (on the device)."""
    steps_by_kind: dict[tuple[bool, bool], MetaStep] = field(default_factory=dict)

    @property
    def leaves(self) -> list[Tensor]:
        return [*self.params.values(), *self.learnables.values()]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0


@dataclass(frozen=True)
class _Batch:
    """One iteration's shard of the meta-batch (None for a process without tasks)."""

    data: TaskBatch | None
    first_order: bool
    weights: tuple[float, ...] | None


class Trainer:
    """Meta-trains one run, writing into ``run_dir``.

    ``config`` is what ``mamlflow.resolve`` returned (its provenance is saved with the run) or
    a bare ``RunConfig``. The trainer writes ``config.json`` before the first step, so a run
    started from Python is evaluable (``metaflow eval``) and resumable (``--resume``) like one
    started from the CLI. A directory that already holds a run is refused unless ``resume``.

    ``on_step`` (e.g. a progress bar) is called after every iteration with the iteration count
    and the latest metrics record; ``callbacks`` are extra ``Callback`` objects besides the ones
    ``train.callbacks`` names (built with their ``callbacks.<name>`` options). Every callback
    shares ``control``, through which it may stop the run or ask for a checkpoint. With
    ``resume=True`` the run continues from ``run_dir``'s checkpoint: same meta-batches, same
    optimizer state, bitwise the same parameters as an uninterrupted run.

    ``dist`` (from ``distributed.from_env``) makes this process one of several: it computes its
    shard of every meta-batch, and only rank 0 writes into ``run_dir``, validates and calls
    ``callbacks`` and ``on_step``. The default is one process, which does no collective at all.
    """

    def __init__(
        self,
        config: ResolvedConfig | RunConfig,
        run_dir: Path,
        host: PluginHost,
        *,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        on_step: Callable[[int, MetricsRecord | None], None] | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        if not resume and not self.files.is_free():
            raise CheckpointError(
                f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                "(Trainer(..., resume=True)) or choose another run directory"
            )
        _check_can_write(self.run_dir)
        self.resolved = self._resolved(config, host, resume)
        self.config: RunConfig = self.resolved.config
        self.dist = Dist() if dist is None else dist
        self.host = host
        self.resume = resume
        self.control = TrainerControl()
        # Callbacks before components: a missing optional package (tensorboard) fails at once,
        # before data loads and long before training.
        self.callbacks = [self._build_callback(name) for name in self.config.train.callbacks]
        self.callbacks += list(callbacks)
        if not self.dist.is_main:
            # Built all the same, so a config that cannot work fails on every rank alike.
            self.callbacks = []
        for cb in self.callbacks:
            cb.control = self.control
        self.components = build_components(self.config, host)
        self.outer = host.optimizer(self.config.outer.name)(self.config.outer)
        self._check_trainable()
        self.on_step = on_step
        self.selection: Selection | None = None
        self.threads: ThreadPlan | None = None
        self._watch: ThroughputWatch | None = None
        self._selecting = False

    def request_stop(self, reason: str = "interrupted") -> None:
        """Finish the current iteration, write a checkpoint and return (Ctrl-C, SIGTERM).

        Safe to call from a signal handler: the loop only checks a flag between steps, so the
        checkpoint never holds a half-applied optimizer step. ``reason`` becomes
        ``TrainSummary.stopped_by`` (``"interrupted"``, ``"terminated"``).
        """
        self.control.request_stop(reason)
        if self._selecting:
            # Measuring or compiling kernels can take minutes; abandon it, take no step.
            raise _SelectionInterrupted

    def fit(self) -> TrainSummary:
        """Train until ``train.iterations``, the time limit or a stop request; checkpoint.

        Rank 0 holds the run directory's lock throughout (a second process is refused with one
        line) and first removes what a killed run left: temporary files, and the files of an
        attempt that wrote no checkpoint.
        """
        try:
            if not self.dist.is_main:
                return self._fit()
            with run_lock(self.run_dir, "training"):
                self._tidy()
                return self._fit()
        except DistributedError as exc:
            # Say what the user still has: the run directory outlives the processes.
            if self.files.checkpoint.is_file():
                kept = (
                    f"{self.run_dir} keeps the last complete checkpoint: continue with "
                    f"--resume {self.run_dir}"
                )
            else:
                kept = "no checkpoint was written yet: start the run again"
            raise DistributedError(f"{exc}; {kept}") from exc

    def _tidy(self) -> None:
        """Under the lock: drop a killed writer's temporaries and a checkpoint-less attempt."""
        if not self.resume and not self.files.is_free():
            # Checked in __init__ too, but a run that was finishing then may have ended since.
            raise CheckpointError(
                f"{self.run_dir} already holds a run (it was written while this one started); "
                f"continue it with --resume {self.run_dir} or choose another run directory"
            )
        for path in remove_stale_temporaries(self.run_dir):
            log.info("removed %s, left by a run that was killed while writing it", path.name)
        if not self.resume and not self.files.holds_run():
            removed = self.files.remove_leftovers()
            if removed:
                names = ", ".join(sorted(p.name for p in removed))
                log.info("removed %s of an earlier attempt that wrote no checkpoint", names)

    # -- the loop --------------------------------------------------------------------------------

    def _fit(self) -> TrainSummary:
        c = self.components
        self._prefetch = Prefetcher(
            self._sample_shard,
            enabled=type(c.family).prefetch,
            pin=c.device.type == "cuda",
        )
        try:
            return self._loop()
        finally:
            self._prefetch.close()

    def _sample_shard(self, iteration: int) -> TaskBatch:
        return self.components.family.sample_raw(self.config.seed, iteration, self._task_index)

    def _loop(self) -> TrainSummary:
        run = self._restore()
        self._begin(run)
        total = self.config.train.iterations
        while run.iteration < total:
            stop_requested, time_up = self._stop_votes(run)
            if self.dist.world_size == 1 and (stop_requested or time_up):
                run.stopped_by = self.control.stop_reason or "time_limit"
                break
            batch = self._sample(run)
            try:
                result = self._step(run, batch)
            except _SelectionInterrupted:
                run.stopped_by = self.control.stop_reason or "interrupted"
                break
            logged = self.components.source.logged(
                batch.data, self._scale, self.components.dtype, self.components.device
            )
            stop = None
            if self.dist.world_size > 1:
                result, stop, logged = self._sum_over_processes(
                    result, run, stop_requested, time_up, logged
                )
            if stop is not None:
                # Dropped before the update: every process ends on this iteration, in the state
                # one process stopping here would have.
                run.stopped_by = stop
                break
            self._update(run, batch, result)
            self._log(run, result, logged)
            self._checkpoint_if_due(run)
            if self.on_step is not None and self.dist.is_main:
                self.on_step(run.iteration, run.last_record)
        return self._finish(run)

    def _restore(self) -> _Run:
        """The initial state: θ₀ and a fresh optimizer, or the checkpoint's on a resume."""
        c = self.components
        params, learnables = (self._leaves(t) for t in c.initial_params())
        optimizer = self.outer.build([*params.values(), *learnables.values()])
        run = _Run(
            params, learnables, self.outer, optimizer, 0, 0.0, self.config.kernel.strategy, None
        )
        if self.resume:
            ckpt = load_checkpoint(self.run_dir)
            self._check_shapes(params, ckpt.params, "parameter")
            self._check_shapes(learnables, ckpt.learnables, "adapter tensor")
            with torch.no_grad():
                for k, v in ckpt.params.items():
                    params[k].copy_(v)
                for k, v in ckpt.learnables.items():
                    learnables[k].copy_(v)
            try:
                optimizer.load_state_dict(ckpt.optimizer)
                torch.set_rng_state(ckpt.rng["torch"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{self.files.checkpoint}'s optimizer or RNG state does not fit this run "
                    f"(outer.name={self.config.outer.name}: {type(exc).__name__}); resume with "
                    "the run's own config.json, unchanged, or restore the checkpoint from a copy"
                ) from exc
            run.start, run.elapsed_before, run.best = ckpt.iteration, ckpt.elapsed, ckpt.best
            # Keep the kernel the run started with, so resuming is bitwise exact.
            run.strategy = ckpt.strategy
        run.iteration = run.start
        # Every process starts from rank 0's θ and φ, however it built or loaded its own: equal
        # parameters and equal summed gradients keep them equal (and the optimizer states too).
        self.dist.broadcast_(run.leaves)
        return run

    def _begin(self, run: _Run) -> None:
        """Write what the run directory must hold before the first step; start the callbacks."""
        family = self.components.family
        if self.dist.is_main:
            with writing(rundir.CONFIG, self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_resolved(self.resolved, self.files.config)
            with plugin_code(self._family_who, "manifest()"):
                manifest = family.manifest()
            if manifest:
                content = strict_json(manifest, indent=1).encode()
                with writing(rundir.TASK_MANIFEST, self.run_dir):
                    atomic_write(self.files.task_manifest, content)
        state = TrainStart(
            iteration=run.start,
            config=self.config,
            metric=family.metric,
            higher_is_better=self._higher_is_better,
            best=run.best,
        )
        for cb in self.callbacks:
            with plugin_code(f"callback '{cb.name}'", "on_train_start()"):
                cb.on_train_start(state)
        run.t0 = run.last_checkpoint = time.perf_counter()
        run.interval = _Interval()

    def _stop_votes(self, run: _Run) -> tuple[bool, bool]:
        """Whether a stop was requested (Ctrl-C, a callback) and whether time is up.

        A stop requested during the last step outranks the time limit. Several processes must
        agree to stop on the same iteration, or one would wait forever in an all_reduce the
        others never join: each votes in the step's all_reduce (``_sum_over_processes``).
        """
        limit = self.config.train.time_limit
        return self.control.stop_reason is not None, limit is not None and run.elapsed() >= limit

    def _sample(self, run: _Run) -> _Batch:
        """This process's shard of the meta-batch, with what the algorithm asks of the step."""
        cfg, c = self.config, self.components
        total = cfg.train.iterations
        data = None
        if len(self._task_index):  # more processes than tasks leaves some without any
            following = run.iteration + 1 if run.iteration + 1 < total else None
            with plugin_code(self._family_who, "sample()", smaller="train.meta_batch_size"):
                raw = self._prefetch.take(run.iteration, following)
                raw = raw.to(c.device, c.dtype, non_blocking=c.device.type == "cuda")
                data = c.source.meta_batch(
                    c.family.prepare(raw, c.dtype),
                    run.params,
                    run.learnables,
                    seed=cfg.seed,
                    iteration=run.iteration,
                )
        first_order = c.algorithm.first_order(cfg.inner, run.iteration, total)
        weights = c.algorithm.step_weights(cfg.inner, run.iteration, total)
        return _Batch(data, first_order, weights)

    def _step(self, run: _Run, batch: _Batch) -> StepResult:
        """The shard's meta-loss and meta-gradient (the kernel chosen on first use)."""
        c = self.components
        fresh = (batch.first_order, batch.weights is not None) not in run.steps_by_kind
        meta_step = self._meta_step(run, batch)
        scale: Tensor | float = self._scale
        if batch.weights is not None:
            scale = torch.tensor(batch.weights, dtype=c.dtype, device=c.device) * self._scale
        if batch.data is None:
            return _no_tasks(run.params, run.learnables)
        support, query = batch.data.support, batch.data.query
        # A compiled kernel compiles on its first call: a stop request abandons that too (one
        # process only: with several, every process must take part in the step's all_reduce).
        first_call = self._interruptible() if fresh and self.dist.world_size == 1 else nullcontext()
        start = time.perf_counter()
        with first_call, plugin_code(self._step_who, "the meta-step", "train.meta_batch_size"):
            result = meta_step(run.params, run.learnables, support, query, scale)
        seconds = time.perf_counter() - start
        again = partial(meta_step, run.params, run.learnables, support, query, scale)
        if fresh:
            self._plan_threads(run, again, seconds)
        elif self._watch is not None and self._watch.observe(seconds):
            self._replan_threads(again, seconds)
        # Kept on the device, no sync: the first iteration whose meta-loss is not finite.
        bad = ~torch.isfinite(result.loss.detach())
        run.first_nonfinite = torch.where(
            bad & (run.first_nonfinite < 0), run.iteration, run.first_nonfinite
        )
        return result

    def _plan_threads(self, run: _Run, step: Callable[[], object], first_s: float) -> None:
        """Decide the CPU threads once the first step of a kind ran (and compiled).

        Measuring costs a few steps, so it is done where the run's remaining eager time is at
        least ``THREADS_MIN_SECONDS``; a fixed count (``kernel.threads``, ``MAMLFLOW_THREADS``,
        several processes) is applied at once.
        """
        c, cfg = self.components, self.config
        if self.threads is not None:
            return
        remaining = (cfg.train.iterations - run.iteration) * first_s
        measure = cfg.kernel.threads != "auto" or remaining >= THREADS_MIN_SECONDS
        if self.dist.world_size > 1 or not measure:
            return
        with self._interruptible():
            self.threads = plan_threads(
                cfg.kernel.threads, step, device=c.device, processes=self.dist.local_world_size
            )
        if self.dist.is_main:
            log.info("threads: %d (%s)", self.threads.threads, self.threads.reason)
        expected = self.threads.expected_seconds
        if expected is not None:
            self._watch = ThroughputWatch(expected)

    def _replan_threads(self, step: Callable[[], object], live_s: float) -> None:
        """Live steps stayed far slower than measured: the machine changed, measure again."""
        assert self.threads is not None and self._watch is not None
        before = self.threads
        with self._interruptible():
            self.threads = plan_threads(
                self.config.kernel.threads, step, device=self.components.device
            )
        expected = self.threads.expected_seconds
        if expected is not None:
            self._watch.replanned(expected)
        log.info(
            "threads: %d -> %d after live steps of ~%.3g ms against the %.3g ms measured (%s)",
            before.threads,
            self.threads.threads,
            live_s * 1e3,
            (before.expected_seconds or 0.0) * 1e3,
            self.threads.reason,
        )

    def _update(self, run: _Run, batch: _Batch, result: StepResult) -> None:
        """The outer step on the summed meta-gradient."""
        c, total = self.components, self.config.train.iterations
        for k, p in run.params.items():
            p.grad = result.grads[k]
        for k, p in run.learnables.items():
            p.grad = result.learnable_grads[k]
        run.outer.prepare_step(run.optimizer, run.leaves, run.iteration, total)
        terms = c.source.policy_terms(
            (run.params, run.learnables),
            batch.data if batch.data is not None else _empty_batch(c.device),
            meta_batch_size=self.config.train.meta_batch_size,
            first_order=batch.first_order,
            reduce=self.dist.all_reduce_,
        )
        with plugin_code(f"outer optimizer '{self.config.outer.name}'", "step()"):
            run.interval.outer = run.outer.step(run.optimizer, terms)
        run.iteration += 1

    def _log(self, run: _Run, result: StepResult, logged: Tensor | None) -> None:
        """Accumulate this step; every ``log_every`` (and at validations) write a record."""
        cfg, interval, iteration = self.config, run.interval, run.iteration
        loss_sum = interval.loss_sum
        interval.loss_sum = result.loss if loss_sum is None else loss_sum + result.loss
        if logged is not None:
            done = interval.logged_sum
            interval.logged_sum = logged if done is None else done + logged
        interval.steps += 1
        total, val_every = cfg.train.iterations, cfg.train.val_every
        validate = val_every is not None and (iteration % val_every == 0 or iteration == total)
        if not (validate or iteration % cfg.train.log_every == 0 or iteration == total):
            return
        now = time.perf_counter()
        fields: dict[str, Any] = {}
        if interval.logged_sum is not None:
            means = (interval.logged_sum / interval.steps).tolist()
            fields = self.components.source.record(means)
        record = {
            "iteration": iteration,
            "meta_loss": float(interval.loss_sum) / interval.steps,
            "tasks_per_s": interval.steps * self._batch_size / max(now - interval.started, 1e-9),
            "outer": interval.outer,
            **fields,
        }
        # Rank 0 alone validates; the others wait for it in the next all_reduce.
        if validate and self.dist.is_main:
            record.update(self._validation(run))
        run.last_record = MetricsRecord(elapsed=run.elapsed(), **record)
        for cb in self.callbacks:
            with plugin_code(f"callback '{cb.name}'", "on_log()"):
                cb.on_log(run.last_record)
        run.interval = _Interval()
        self._check_finite(run)

    def _validation(self, run: _Run) -> dict[str, Any]:
        """Validate, keep the best checkpoint, and return the record's validation fields."""
        value, ci95 = self._validate(run.params, run.learnables)
        best, higher = run.best, self._higher_is_better
        if best is None or (value > best if higher else value < best):
            run.best = value
            self._save(run, finished=False, name=rundir.BEST_CHECKPOINT)
        return {"metric": self.components.family.metric, "val": value, "val_ci95": ci95}

    def _checkpoint_if_due(self, run: _Run) -> None:
        """Checkpoint every ``checkpoint_every`` iterations or minutes, or when a callback asks."""
        train = self.config.train
        requested = self.control.take_checkpoint_request()  # taken even if saved anyway
        minutes = train.checkpoint_every_minutes
        due = (
            requested
            or run.iteration % train.checkpoint_every == 0
            or (minutes is not None and time.perf_counter() - run.last_checkpoint >= 60 * minutes)
        )
        # The last step and a stopping run write their final checkpoint in _finish.
        if due and run.iteration < train.iterations and self.control.stop_reason is None:
            self._check_finite(run)
            self._save(run, finished=False)

    def _finish(self, run: _Run) -> TrainSummary:
        """The final checkpoint, the summary, and the callbacks' end."""
        total = self.config.train.iterations
        self._check_finite(run)
        self._save(run, finished=run.iteration >= total)
        run_time = time.perf_counter() - run.t0
        record = run.last_record
        summary = TrainSummary(
            iteration=run.iteration,
            iterations=total,
            meta_loss=record.meta_loss if record else None,
            elapsed=run.elapsed(),
            tasks_per_s=(run.iteration - run.start) * self._batch_size / max(run_time, 1e-9),
            strategy=self.selection.strategy if self.selection else run.strategy,
            strategy_reason=self.selection.reason if self.selection else "no step taken",
            stopped_by=run.stopped_by,
            return_before=record.return_before if record else None,
            return_after=record.return_after if record else None,
        )
        for cb in self.callbacks:
            with plugin_code(f"callback '{cb.name}'", "on_train_end()"):
                cb.on_train_end(summary)
        return summary

    # -- helpers ---------------------------------------------------------------------------------

    def _save(self, run: _Run, *, finished: bool, name: str = rundir.CHECKPOINT) -> None:
        if not self.dist.is_main:
            return  # rank 0 owns the run directory; the others hold the same state
        checkpoint = Checkpoint(
            iteration=run.iteration,
            params=run.params,
            learnables=run.learnables,
            optimizer=run.optimizer.state_dict(),
            rng={"torch": torch.get_rng_state()},
            strategy=self.selection.strategy if self.selection else run.strategy,
            elapsed=run.elapsed(),
            finished=finished,
            best=run.best,
        )
        with writing(name, self.run_dir):
            save_checkpoint(self.run_dir, checkpoint, name)
        if name == rundir.CHECKPOINT:
            run.last_checkpoint = time.perf_counter()

    def _check_finite(self, run: _Run) -> None:
        """Stop with one line if a meta-loss or a parameter stopped being a finite number.

        Called at every metrics record and before every checkpoint (one host sync each), so no
        checkpoint ever holds NaN parameters: the last good one is kept.
        """
        first = int(run.first_nonfinite)
        if first < 0 and all(bool(torch.isfinite(p).all()) for p in run.leaves):
            return
        at = f"iteration {first + 1}'s meta-loss" if first >= 0 else "the parameters"
        if self.files.checkpoint.is_file():
            kept = f"its last good {rundir.CHECKPOINT} is kept"
        else:
            kept = "it wrote no checkpoint (the directory can be reused)"
        raise NonFiniteError(
            f"{at} is not a finite number (NaN or inf): the run stopped and {kept}; lower "
            "outer.lr or inner.lr, or clip the meta-gradient (outer.clip_norm)"
        )

    @property
    def _family_who(self) -> str:
        return f"task family '{self.config.task.name}'"

    @property
    def _step_who(self) -> str:
        cfg = self.config
        return f"task family '{cfg.task.name}' with model '{cfg.model.name}'"

    @property
    def _batch_size(self) -> int:
        return self.config.train.meta_batch_size

    @property
    def _scale(self) -> float:
        # This process's tasks are scaled by 1 / the global meta-batch (see kernels._maml).
        return 1.0 / self._batch_size

    @cached_property
    def _task_index(self) -> Tensor:
        """This process's global task indices, the same at every iteration."""
        return self.dist.shard(self._batch_size)

    @property
    def _higher_is_better(self) -> bool:
        return self.components.family.metric != "mse"

    def _leaves(self, tensors: Params) -> Params:
        c = self.components
        return {k: v.detach().to(c.device, c.dtype).clone() for k, v in tensors.items()}

    def _resolved(
        self, config: ResolvedConfig | RunConfig, host: PluginHost, resume: bool
    ) -> ResolvedConfig:
        """The config to save; a resumed bare ``RunConfig`` keeps the saved sources it shares."""
        previous = None
        if resume and not isinstance(config, ResolvedConfig) and self.files.config.is_file():
            previous = load_saved(host, self.files.config)
        return as_resolved(config, previous=previous)

    def _build_callback(self, name: str) -> Callback:
        cls = self.host.callback(name)
        # resolve() checks this too; a RunConfig built by hand gets here unchecked.
        problem = cls.check_config(self.config)
        if problem is not None:
            raise ConfigError([f"train.callbacks: {problem}"])
        return cls(self.run_dir, self.config.callbacks.get(name))

    def _check_trainable(self) -> None:
        """Refuse a run its outer optimizer or its batch source cannot train, before it starts."""
        problem = self.outer.check_task_family(self.components.family)
        if problem is not None:
            raise ConfigError([f"outer.name: {problem}"])
        self.components.source.check_training(self.config)

    def _meta_step(self, run: _Run, batch: _Batch) -> MetaStep:
        """The meta-step for this iteration's kind (order, multi-step loss), built on first use."""
        kind = (batch.first_order, batch.weights is not None)
        if kind not in run.steps_by_kind:
            self.selection = self._select(run, batch)
            if self.dist.is_main:
                log.info("kernel: %s (%s)", self.selection.strategy, self.selection.reason)
            run.steps_by_kind[kind] = self.selection.step
        return run.steps_by_kind[kind]

    def _select(self, run: _Run, batch: _Batch) -> Selection:
        """The meta-step: ``select_meta_step``, with rank 0's choice in a run of several processes.

        Timings differ between processes, and a rank without tasks has nothing to time or check,
        so rank 0 alone measures (``auto``) or checks an explicit fast strategy against the loop,
        and every process then builds the kernel it chose, or raises the ``ConfigError`` it
        raised: all of them run the same one (and a resumed run keeps it, from rank 0's
        checkpoint).
        """
        cfg, c = self.config, self.components
        limit = cfg.train.time_limit
        data = batch.data
        options: dict[str, Any] = {
            "steps": cfg.inner.steps,
            "first_order": batch.first_order,
            "remaining_iterations": cfg.train.iterations - run.iteration,
            "time_left": None if limit is None else max(limit - run.elapsed(), 0.0),
            "probe": (
                run.params,
                run.learnables,
                {} if data is None else data.support,
                {} if data is None else data.query,
            ),
            # What shapes cannot tell apart: the architecture and the task's loss.
            "signature": tuple(
                section.model_dump_json()
                for section in (cfg.model, cfg.task, cfg.algorithm, cfg.inner)
            ),
            "multi_step": batch.weights is not None,
            "autocast": c.autocast,
            "factory": c.meta_steps(),
            "strategies": c.algorithm.strategies or STRATEGIES,
            "module": c.learner.module,  # to name its vmap-unsafe layers
        }
        objective, adapter, requested = c.objective(), c.adapter, run.strategy
        dist = self.dist
        if dist.world_size == 1:
            with self._interruptible():
                return select_meta_step(requested, objective, adapter, **options)
        if dist.is_main:  # measures (auto) or checks (explicit) for every process
            try:
                with self._interruptible():
                    selection = select_meta_step(requested, objective, adapter, **options)
            except ConfigError as exc:  # refused: every process stops with the same line
                dist.broadcast_object((None, exc.issues), "sharing the kernel")
                raise
            except _SelectionInterrupted:
                dist.broadcast_object((None, None), "sharing the kernel")
                raise
            dist.broadcast_object((selection.strategy, selection.reason), "sharing the kernel")
            return selection
        chosen, reason = dist.broadcast_object(None, "sharing the kernel")
        if chosen is None and reason is None:
            raise _SelectionInterrupted  # rank 0 was stopped while measuring
        if chosen is None:
            raise ConfigError(reason)
        selection = select_meta_step(chosen, objective, adapter, **options, verify=False)
        if requested != "auto":
            return selection
        return Selection(selection.strategy, selection.step, f"rank 0 measured: {reason}")

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """While kernels are measured or compiled, a stop request abandons them at once."""
        if self.control.stop_reason is not None:
            raise _SelectionInterrupted
        self._selecting = True
        try:
            yield
        finally:
            self._selecting = False

    def _sum_over_processes(
        self,
        result: StepResult,
        run: _Run,
        want_stop: bool,
        time_up: bool,
        extras: Tensor | None = None,
    ) -> tuple[StepResult, str | None, Tensor | None]:
        """The step's one collective: θ's and φ's gradients, the loss, ``extras`` (a few logged
        scalars) and the stop votes.

        Returns the sums (the whole meta-batch's gradients and loss: each shard's are already
        scaled by 1 / the global meta-batch size), if any process asked to stop, why, and the
        summed ``extras``.
        """
        c, params, learnables = self.components, run.params, run.learnables
        grads = [result.grads[k] for k in params] + [result.learnable_grads[k] for k in learnables]
        votes = torch.tensor([float(want_stop), float(time_up)], dtype=c.dtype, device=c.device)
        extra = torch.zeros(0, dtype=c.dtype, device=c.device) if extras is None else extras
        flat = torch.cat(
            [
                *(g.reshape(-1).to(c.dtype) for g in grads),
                result.loss.reshape(1).to(c.dtype),
                extra.to(c.dtype),
                votes,
            ]
        )
        self.dist.all_reduce_(flat)
        stop_votes, time_votes = flat[-2:].tolist()  # the one host sync this adds per step
        if stop_votes or time_votes:
            reason = self.control.stop_reason
            if reason is None:
                reason = "interrupted" if stop_votes else "time_limit"
            return result, reason, extras
        summed_extras = None if extras is None else flat[-2 - extra.numel() : -2]
        pieces = flat[: -2 - extra.numel()].split([g.numel() for g in grads] + [1])
        summed = [piece.view_as(g) for piece, g in zip(pieces, grads, strict=False)]
        n = len(params)
        return (
            StepResult(
                pieces[-1].reshape(()),
                dict(zip(params, summed[:n], strict=True)),
                dict(zip(learnables, summed[n:], strict=True)),
            ),
            None,
            summed_extras,
        )

    def _validate(self, params: Params, learnables: Params) -> tuple[float, float]:
        """Mean (and 95% interval) of the metric on validation tasks after eval.steps steps."""
        cfg = self.config
        result, _ = evaluate(
            self.components,
            params,
            learnables,
            shots=cfg.task.shots,
            steps=cfg.eval.steps,
            tasks=cfg.train.val_tasks,
            query=cfg.eval.query,
            batch_size=cfg.eval.batch_size,
            split="val",
        )
        return result.mean[-1], result.ci95[-1]

    def _check_shapes(self, expected: Params, found: dict[str, Tensor], what: str) -> None:
        if set(expected) != set(found) or any(
            expected[k].shape != found[k].shape for k in expected
        ):
            raise CheckpointError(
                f"the checkpoint's {what}s do not match the model this config builds "
                f"(expected {sorted(expected)} with their shapes); resume with the run's own "
                "config.json, unchanged"
            )


class _SelectionInterrupted(BaseException):
    """A stop request while kernels were being measured or compiled: abandon them.

    A ``BaseException``, like ``KeyboardInterrupt``, so that the selection's own handling of a
    failing candidate (``except Exception``) does not take it for a compiler error.
    """


def _check_can_write(run_dir: Path) -> None:
    """Refuse, before anything is built, a run directory that cannot be made or written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a directory; choose another run directory")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(
            f"cannot make {run_dir}: {existing} is a file, not a directory; choose another run "
            "directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"cannot write in {existing} (read-only or not yours), so {run_dir} cannot hold a run; "
            "choose a run directory you can write"
        )


def _empty_batch(device: torch.device) -> TaskBatch:
    return TaskBatch({}, {}, torch.zeros(0, dtype=torch.long, device=device))


def _no_tasks(params: Params, learnables: Params) -> StepResult:
    """The step of a process without tasks: it adds nothing to the sum."""
    ref = next(iter(params.values()))
    return StepResult(
        torch.zeros((), dtype=ref.dtype, device=ref.device),
        {k: torch.zeros_like(v) for k, v in params.items()},
        {k: torch.zeros_like(v) for k, v in learnables.items()},
    )
