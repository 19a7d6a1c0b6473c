"""Meta-training: build a run's components from its config and run the outer loop.

The loop is plain Python around one kernel call per iteration: sample the meta-batch (a pure
function of seed and iteration), compute the meta-gradient, apply the outer optimizer. Logging,
callbacks, checkpoints and the time limit run between steps, never inside the compiled step.

With several processes (``dist``, see ``distributed.py``) each one samples and differentiates its
shard of the meta-batch, and one flattened ``all_reduce`` per step, outside the kernel, sums the
meta-gradients, the loss and the processes' stop requests before every process applies the same
update. Rank 0 alone writes the run directory, validates and calls callbacks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..kernels import STRATEGIES, Selection, StepResult, select_meta_step
from ._io import atomic_write
from .callbacks import Callback, TrainerControl
from .checkpoint import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .components import build_components
from .config import RunConfig
from .distributed import Dist, DistributedError
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate
from .host import PluginHost
from .learner import Params
from .rl import PolicyTerms, Rollouts, RolloutTaskFamily
from .task import TaskBatch

__all__ = ["TASK_MANIFEST", "TrainSummary", "Trainer"]

TASK_MANIFEST = "task.json"

log = logging.getLogger("mamlflow.trainer")


@dataclass(frozen=True)
class TrainSummary:
    iteration: int
    iterations: int
    meta_loss: float | None
    elapsed: float
    tasks_per_s: float
    strategy: str
    strategy_reason: str
    stopped_by: str
    """``"iterations"``, ``"time_limit"``, ``"interrupted"`` or the reason a callback gave
    ``TrainerControl.request_stop`` (e.g. ``"early_stopping"``)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Interval:
    """Metrics accumulated since the last log record (kept on device: no sync per step)."""

    loss_sum: Tensor | None = None
    returns_sum: Tensor | None = None
    """Rollout families: the summed mean returns of the support and query trajectories."""
    outer: dict[str, float] = field(default_factory=dict)
    """What the latest policy outer step reported (TRPO's KL and line-search tries)."""
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)


class Trainer:
    """Meta-trains one run, writing into ``run_dir``.

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
        config: RunConfig,
        run_dir: Path,
        host: PluginHost,
        *,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        on_step: Callable[[int, dict[str, Any] | None], None] | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.config = config
        self.dist = Dist() if dist is None else dist
        self.run_dir = Path(run_dir)
        self.host = host
        self.resume = resume
        self.control = TrainerControl()
        # Callbacks before components: a missing optional package (tensorboard) fails at once,
        # before data loads and long before training.
        self.callbacks = [self._build_callback(name) for name in config.train.callbacks]
        self.callbacks += list(callbacks)
        if not self.dist.is_main:
            # Built all the same, so a config that cannot work fails on every rank alike.
            self.callbacks = []
        for cb in self.callbacks:
            cb.control = self.control
        self.components = build_components(config, host)
        self.rollouts = self._check_rollouts()
        self.on_step = on_step
        self.selection: Selection | None = None

    def request_stop(self) -> None:
        """Finish the current iteration, write a checkpoint and return (e.g. on Ctrl-C).

        Safe to call from a signal handler: the loop only checks a flag between steps, so the
        checkpoint never holds a half-applied optimizer step.
        """
        self.control.request_stop("interrupted")

    def _build_callback(self, name: str) -> Callback:
        cls = self.host.callback(name)
        # resolve() checks this too; a RunConfig built by hand gets here unchecked.
        problem = cls.check_config(self.config)
        if problem is not None:
            raise ConfigError([f"train.callbacks: {problem}"])
        return cls(self.run_dir, self.config.callbacks.get(name))

    def _check_rollouts(self) -> Rollouts | None:
        """The rollout machinery of an RL family, after checking the run can train it."""
        cfg, c = self.config, self.components
        outer = self.host.optimizer(cfg.outer.name)
        if not isinstance(c.family, RolloutTaskFamily):
            if outer.uses_policy_terms:
                raise ConfigError(
                    [
                        f"outer.name: {cfg.outer.name} re-evaluates a policy's meta-objective and "
                        f"needs a rollout task family (metric return), not {cfg.task.name!r}; "
                        "use adam"
                    ]
                )
            return None
        if cfg.inner.steps != 1:
            raise ConfigError(
                [
                    f"inner.steps: {cfg.inner.steps}, but rollout families train with one inner "
                    "policy-gradient step, as the paper does (each further step would need "
                    "trajectories of the policy it adapts); set inner.steps=1 and evaluate more "
                    "steps with eval.steps"
                ]
            )
        return Rollouts(c.family, c.learner, c.objective(), c.adapter, cfg.inner)

    def _leaves(self, tensors: Params) -> Params:
        c = self.components
        return {k: v.detach().to(c.device, c.dtype).clone() for k, v in tensors.items()}

    def fit(self) -> TrainSummary:
        try:
            return self._fit()
        except DistributedError as exc:
            # Say what the user still has: the run directory outlives the processes.
            if (self.run_dir / CHECKPOINT_NAME).is_file():
                kept = (
                    f"{self.run_dir} keeps the last complete checkpoint: continue with "
                    f"--resume {self.run_dir}"
                )
            else:
                kept = "no checkpoint was written yet: start the run again"
            raise DistributedError(f"{exc}; {kept}") from exc

    def _fit(self) -> TrainSummary:
        cfg, c, dist = self.config, self.components, self.dist
        main = dist.is_main
        params, learnables = (self._leaves(t) for t in c.initial_params())
        outer = self.host.optimizer(cfg.outer.name)(cfg.outer)
        leaves = [*params.values(), *learnables.values()]
        optimizer = outer.build(leaves)
        start, elapsed_before, strategy = 0, 0.0, cfg.kernel.strategy
        best: float | None = None
        if self.resume:
            ckpt = load_checkpoint(self.run_dir)
            self._check_shapes(params, ckpt.params, "parameter")
            self._check_shapes(learnables, ckpt.learnables, "adapter tensor")
            with torch.no_grad():
                for k, v in ckpt.params.items():
                    params[k].copy_(v)
                for k, v in ckpt.learnables.items():
                    learnables[k].copy_(v)
            optimizer.load_state_dict(ckpt.optimizer)
            torch.set_rng_state(ckpt.rng["torch"])
            start, elapsed_before, best = ckpt.iteration, ckpt.elapsed, ckpt.best
            # Keep the kernel the run started with, so resuming is bitwise exact.
            strategy = ckpt.strategy
        # Every process starts from rank 0's θ and φ, however it built or loaded its own: equal
        # parameters and equal summed gradients keep them equal (and the optimizer states too).
        dist.broadcast_(leaves)

        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            manifest = c.family.manifest()
            if manifest:
                atomic_write(self.run_dir / TASK_MANIFEST, json.dumps(manifest, indent=1).encode())
        metric = c.family.metric
        higher_is_better = metric != "mse"
        for cb in self.callbacks:
            cb.on_train_start(
                {
                    "iteration": start,
                    "config": cfg,
                    "metric": metric,
                    "higher_is_better": higher_is_better,
                    "best": best,
                }
            )

        total = cfg.train.iterations
        batch_size = cfg.train.meta_batch_size
        # This process's tasks; the scale stays 1 / the global meta-batch (see kernels._maml).
        task_index = dist.shard(batch_size)
        scale = 1.0 / batch_size
        objective = c.objective()
        steps_by_kind: dict[tuple[bool, bool], Any] = {}
        val_every = cfg.train.val_every
        minutes = cfg.train.checkpoint_every_minutes
        checkpoint_interval = None if minutes is None else 60.0 * minutes
        t0 = last_checkpoint = time.perf_counter()
        interval = _Interval()
        last_record: dict[str, Any] | None = None
        stopped_by = "iterations"
        iteration = start

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - t0

        def save(finished: bool, name: str = CHECKPOINT_NAME) -> None:
            nonlocal last_checkpoint
            if not main:
                return  # rank 0 owns the run directory; the others hold the same state
            save_checkpoint(
                self.run_dir,
                Checkpoint(
                    iteration=iteration,
                    params=params,
                    learnables=learnables,
                    optimizer=optimizer.state_dict(),
                    rng={"torch": torch.get_rng_state()},
                    strategy=self.selection.strategy if self.selection else strategy,
                    elapsed=elapsed(),
                    finished=finished,
                    best=best,
                ),
                name,
            )
            if name == CHECKPOINT_NAME:
                last_checkpoint = time.perf_counter()

        while iteration < total:
            # A stop requested during the last step (Ctrl-C, a callback) outranks the time limit.
            requested_stop = self.control.stop_reason
            time_up = cfg.train.time_limit is not None and elapsed() >= cfg.train.time_limit
            if dist.world_size == 1 and (requested_stop is not None or time_up):
                stopped_by = requested_stop if requested_stop is not None else "time_limit"
                break
            # Several processes must agree to stop on the same iteration, or one would wait
            # forever in an all_reduce the others never join: each votes in this step's
            # all_reduce, and the step is dropped (below) if any of them wants to stop.
            batch = None
            if len(task_index):  # more processes than tasks leaves some without any
                batch = c.family.sample(cfg.seed, iteration, task_index).to(c.device, c.dtype)
                if self.rollouts is not None:
                    batch = self.rollouts.meta_batch(
                        batch, params, learnables, seed=cfg.seed, iteration=iteration
                    )
            first_order = c.algorithm.first_order(cfg.inner, iteration, total)
            weights = c.algorithm.step_weights(cfg.inner, iteration, total)
            kind = (first_order, weights is not None)
            meta_step = steps_by_kind.get(kind)
            if meta_step is None:
                self.selection = self._select(
                    strategy,
                    objective,
                    steps=cfg.inner.steps,
                    first_order=first_order,
                    remaining_iterations=total - iteration,
                    time_left=(
                        None
                        if cfg.train.time_limit is None
                        else max(cfg.train.time_limit - elapsed(), 0.0)
                    ),
                    probe=(
                        params,
                        learnables,
                        {} if batch is None else batch.support,
                        {} if batch is None else batch.query,
                    ),
                    # What shapes cannot tell apart: the architecture and the task's loss.
                    signature=(
                        cfg.model.model_dump_json(),
                        cfg.task.model_dump_json(),
                        cfg.algorithm.model_dump_json(),
                        cfg.inner.model_dump_json(),
                    ),
                    multi_step=weights is not None,
                )
                if main:
                    log.info("kernel: %s (%s)", self.selection.strategy, self.selection.reason)
                meta_step = steps_by_kind[kind] = self.selection.step
            step_scale: Tensor | float = scale
            if weights is not None:
                step_scale = torch.tensor(weights, dtype=c.dtype, device=c.device) * scale
            if batch is None:
                result = _no_tasks(params, learnables)
            else:
                result = meta_step(params, learnables, batch.support, batch.query, step_scale)
            returns = None
            if self.rollouts is not None:
                # The mean returns before and after adaptation: what an RL run is judged by.
                returns = torch.zeros(2, dtype=c.dtype, device=c.device)
                if batch is not None:
                    returns = torch.stack(
                        [_mean_return(batch.support), _mean_return(batch.query)]
                    ) * (batch.num_tasks * scale)
            if dist.world_size > 1:
                result, stop, returns = self._sum_over_processes(
                    result, params, learnables, requested_stop is not None, time_up, returns
                )
                if stop is not None:
                    # Dropped before the update: every process ends on this iteration, in the
                    # state one process stopping here would have.
                    stopped_by = stop
                    break
            for k, p in params.items():
                p.grad = result.grads[k]
            for k, p in learnables.items():
                p.grad = result.learnable_grads[k]
            outer.prepare_step(optimizer, leaves, iteration, total)
            if outer.uses_policy_terms:
                assert self.rollouts is not None  # checked in __init__
                optimizer.step(
                    PolicyTerms(
                        self.rollouts,
                        (params, learnables),
                        batch if batch is not None else _empty_batch(c.device),
                        meta_batch_size=batch_size,
                        first_order=first_order,
                        reduce=dist.all_reduce_,
                    )
                )
                interval.outer = dict(getattr(optimizer, "last", {}))
            else:
                optimizer.step()
            iteration += 1

            interval.loss_sum = (
                result.loss if interval.loss_sum is None else interval.loss_sum + result.loss
            )
            if returns is not None:
                interval.returns_sum = (
                    returns if interval.returns_sum is None else interval.returns_sum + returns
                )
            interval.steps += 1
            validate = val_every is not None and (iteration % val_every == 0 or iteration == total)
            if validate or iteration % cfg.train.log_every == 0 or iteration == total:
                now = time.perf_counter()
                last_record = {
                    "iteration": iteration,
                    "meta_loss": float(interval.loss_sum) / interval.steps,
                    "tasks_per_s": interval.steps * batch_size / max(now - interval.started, 1e-9),
                }
                if interval.returns_sum is not None:
                    before, after = (interval.returns_sum / interval.steps).tolist()
                    last_record["return_before"], last_record["return_after"] = before, after
                last_record.update({f"outer_{k}": v for k, v in interval.outer.items()})
                # Rank 0 alone validates; the others wait for it in the next all_reduce.
                if validate and main:
                    value, ci95 = self._validate(params, learnables)
                    last_record[f"val_{metric}"] = value
                    last_record[f"val_{metric}_ci95"] = ci95
                    if best is None or (value > best if higher_is_better else value < best):
                        best = value
                        save(finished=False, name=BEST_CHECKPOINT_NAME)
                last_record["elapsed"] = elapsed()
                for cb in self.callbacks:
                    cb.on_log(last_record)
                interval = _Interval()
            requested = self.control.take_checkpoint_request()  # taken even if saved anyway
            due = (
                requested
                or iteration % cfg.train.checkpoint_every == 0
                or (
                    checkpoint_interval is not None
                    and time.perf_counter() - last_checkpoint >= checkpoint_interval
                )
            )
            # The last step and a stopping run write their final checkpoint below.
            if due and iteration < total and self.control.stop_reason is None:
                save(finished=False)
            if self.on_step is not None and main:
                self.on_step(iteration, last_record)

        save(finished=iteration >= total)
        run_time = time.perf_counter() - t0
        summary = TrainSummary(
            iteration=iteration,
            iterations=total,
            meta_loss=last_record["meta_loss"] if last_record else None,
            elapsed=elapsed(),
            tasks_per_s=(iteration - start) * batch_size / max(run_time, 1e-9),
            strategy=self.selection.strategy if self.selection else strategy,
            strategy_reason=self.selection.reason if self.selection else "no step taken",
            stopped_by=stopped_by,
        )
        for cb in self.callbacks:
            cb.on_train_end(summary.as_dict())
        return summary

    def _select(
        self, requested: str, objective: Any, *, probe: Any, multi_step: bool, **options: Any
    ) -> Selection:
        """The meta-step: ``select_meta_step``, with rank 0's choice where ``auto`` measures.

        Timings differ between processes, and a rank without tasks has nothing to time, so
        rank 0 alone measures and every process then builds the kernel it chose: all of them
        run the same one (and a resumed run keeps it, from rank 0's checkpoint).
        """
        c = self.components
        common = {
            "autocast": c.autocast,
            "multi_step": multi_step,
            "factory": c.algorithm.make_meta_step,
            "strategies": c.algorithm.strategies or STRATEGIES,
            **options,
        }
        dist = self.dist
        if dist.world_size == 1 or requested != "auto":
            return select_meta_step(requested, objective, c.adapter, probe=probe, **common)
        if dist.is_main:
            selection = select_meta_step(requested, objective, c.adapter, probe=probe, **common)
            dist.broadcast_object((selection.strategy, selection.reason), "sharing the kernel")
            return selection
        chosen, reason = dist.broadcast_object(None, "sharing the kernel")
        selection = select_meta_step(chosen, objective, c.adapter, probe=probe, **common)
        return Selection(selection.strategy, selection.step, f"rank 0 measured: {reason}")

    def _sum_over_processes(
        self,
        result: StepResult,
        params: Params,
        learnables: Params,
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
        c = self.components
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


def _mean_return(trajectories: dict[str, Tensor]) -> Tensor:
    """The mean undiscounted return over a shard's tasks and trajectories."""
    return (trajectories["rewards"] * trajectories["mask"]).sum(-1).mean()


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
