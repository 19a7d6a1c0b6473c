"""Rollout collection for training and evaluation, and the policy terms TRPO and PPO re-evaluate.

A rollout family's "data" do not exist before a step: ``Rollouts.meta_batch`` collects support
trajectories with θ in every task at once, adapts each task's policy on them (the inner step) and
collects query trajectories with the adapted θ′; from there on the kernels treat the batch like
regression data. ``Rollouts.curve`` is the paper's evaluation: collect, score, adapt on what was
collected, and again. ``CollectedPolicyTerms`` is the ``PolicyTerms`` of one collected
meta-batch (see ``mamlflow.core.optim``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from ..core import (
    Adapter,
    InnerConfig,
    LossAndKL,
    PolicyGradient,
    PolicyTerms,
    RolloutTaskFamily,
    Split,
    TaskBatch,
    TaskObjective,
    per_task,
    policy_gradient_loss,
)
from ..kernels import make_adapt, make_adapt_on_each, make_policy_terms

__all__ = ["HVP_CHUNK_ROWS", "CollectedPolicyTerms", "RolloutCurve", "Rollouts", "tasks_per_chunk"]

TensorDict = dict[str, Tensor]
Model = Callable[[TensorDict, Tensor], Tensor]
SUPPORT, QUERY = 0, 1
"""Rollout phases of a training step; evaluation step ``k`` collects in phase ``2 + k``."""


@dataclass(frozen=True)
class RolloutCurve:
    """Mean return per task after 0..steps adaptation steps, and the policies that earned it."""

    returns: Tensor
    """``(tasks, steps + 1)``."""
    adapted: TensorDict
    """Parameters after the last step, with a task dimension."""


class Rollouts:
    """A run's rollout machinery: meta-batches for training and return curves for evaluation."""

    def __init__(
        self,
        family: RolloutTaskFamily,
        model: Model,
        objective: TaskObjective,
        adapter: Adapter,
        inner: InnerConfig,
    ) -> None:
        self.family, self.model, self.objective = family, model, objective
        self.adapter, self.inner = adapter, inner
        self._adapt = make_adapt(objective, adapter, steps=inner.steps)

    def meta_batch(
        self,
        batch: TaskBatch,
        params: TensorDict,
        learnables: TensorDict,
        *,
        seed: int,
        iteration: int,
    ) -> TaskBatch:
        """Support trajectories with θ, then query trajectories with each task's adapted θ′."""
        cfg = self.family.config
        support = self.family.collect(
            batch,
            self.model,
            per_task(params, batch.num_tasks),
            seed=seed,
            iteration=iteration,
            phase=SUPPORT,
            trajectories=cfg.shots,
        )
        adapted = self._adapt(params, learnables, support)
        query = self.family.collect(
            batch,
            self.model,
            adapted,
            seed=seed,
            iteration=iteration,
            phase=QUERY,
            trajectories=cfg.query,
            record_policy=True,
        )
        return TaskBatch(support, query, batch.task_index, batch.info)

    def curve(
        self,
        batch: TaskBatch,
        params: TensorDict,
        learnables: TensorDict,
        *,
        steps: int,
        trajectories: int,
        seed: int,
        split: Split,
        later_scale: float = 1.0,
    ) -> RolloutCurve:
        """Collect, score, adapt on what was collected, and again: the paper's evaluation."""
        params = {k: v.detach() for k, v in params.items()}
        learnables = {k: v.detach() for k, v in learnables.items()}
        score = vmap(self.family.score(self.model), in_dims=(0, 0))
        adapt = make_adapt_on_each(self.objective, self.adapter, later_scale=later_scale)
        current = per_task(params, batch.num_tasks)
        datas: list[TensorDict] = []
        returns = []
        for k in range(steps + 1):
            data = self.family.collect(
                batch,
                self.model,
                current,
                seed=seed,
                iteration=0,
                phase=2 + k,
                trajectories=trajectories,
                split=split,
                timesteps=self.family.config.eval_timesteps,
            )
            returns.append(score(current, data))
            if k == steps:
                break
            datas.append(data)
            current = adapt(params, learnables, datas)
        return RolloutCurve(torch.stack(returns, 1), current)


class CollectedPolicyTerms(PolicyTerms):
    """The meta-objective and KL of one collected meta-batch as functions of θ (and φ).

    What a trust-region or clipped outer step re-evaluates: ``loss_kl`` at the leaves' current
    values (during a line search), ``hvp`` of the mean KL at the collecting parameters, and
    ``grad`` of the (optionally clipped) surrogate. Both terms run through the inner adaptation
    from the support trajectories (second order unless the run is first order). Per-shard sums
    are reduced with ``reduce`` (the sum over processes) and divided by the global meta-batch.

    On a CPU the sums run over chunks of about ``HVP_CHUNK_ROWS`` time steps (whole tasks, at
    least one), each with its own autograd graph: the meta-batch's activations outgrow the
    caches (HalfCheetah's 40 tasks × 4,000 steps × 100 units are 64 MB a layer), and a chunk's
    fit. The sums are the same up to float rounding (tested); a GPU takes every task at once.
    """

    def __init__(
        self,
        rollouts: Rollouts,
        leaves: tuple[TensorDict, TensorDict],
        batch: TaskBatch,
        *,
        meta_batch_size: int,
        first_order: bool,
        reduce: Callable[[Tensor], Tensor] = lambda t: t,
    ) -> None:
        self.params, self.learnables = leaves
        self.batch, self.reduce = batch, reduce
        self.scale = 1.0 / meta_batch_size
        fam, model = rollouts.family, rollouts.model
        steps = rollouts.inner.steps
        self._terms = make_policy_terms(
            rollouts.objective,
            fam.kl(model),
            rollouts.adapter,
            steps=steps,
            first_order=first_order,
        )
        self._make_clipped = lambda clip: make_policy_terms(
            policy_gradient_loss(model, clip=clip),
            fam.kl(model),
            rollouts.adapter,
            steps=steps,
            first_order=first_order,
            inner_objective=rollouts.objective,
        )
        self._kl_graphs: tuple[list[Tensor], list[list[Tensor]]] | None = None
        self.chunk_tasks = tasks_per_chunk(batch)

    def _alias(self) -> tuple[TensorDict, TensorDict, list[Tensor]]:
        """Autograd leaves sharing the parameters' storage: they see a line search's moves."""
        theta = {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
        phi = {k: v.detach().requires_grad_(True) for k, v in self.learnables.items()}
        return theta, phi, [*theta.values(), *phi.values()]

    def _local(
        self,
        terms: Callable[..., tuple[Tensor, Tensor]],
        theta: TensorDict,
        phi: TensorDict,
        tasks: slice = slice(None),
    ) -> tuple[Tensor, Tensor]:
        b = self.batch
        if b.num_tasks == 0:  # a process without tasks adds nothing to the sums
            ref = next(iter(theta.values()))
            zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
            return zero, zero
        support = {k: v[tasks] for k, v in b.support.items()}
        query = {k: v[tasks] for k, v in b.query.items()}
        return terms(theta, phi, support, query)

    def _chunks(self) -> list[slice]:
        step = self.chunk_tasks
        return [slice(i, i + step) for i in range(0, max(self.batch.num_tasks, 1), step)]

    def loss_kl(self) -> LossAndKL:
        with torch.no_grad():
            theta, phi = self.params, self.learnables
            parts = [torch.stack(self._local(self._terms, theta, phi, c)) for c in self._chunks()]
            local = torch.stack(parts).sum(0)
            both = self.reduce(local.reshape(2) * self.scale)
        return LossAndKL(float(both[0]), float(both[1]))

    def hvp(self, vector: Sequence[Tensor]) -> list[Tensor]:
        if self._kl_graphs is None:
            theta, phi, leaves = self._alias()
            grads = []
            for chunk in self._chunks():
                _, kl = self._local(self._terms, theta, phi, chunk)
                grads.append(_grads(kl * self.scale, leaves, create_graph=True))
            self._kl_graphs = (leaves, grads)
        leaves, kl_grads = self._kl_graphs
        local: list[Tensor] | None = None
        for kl_grad in kl_grads:
            dot = sum((g * v).sum() for g, v in zip(kl_grad, vector, strict=True))
            part = _grads(dot, leaves, retain_graph=True)
            local = part if local is None else [a + b for a, b in zip(local, part, strict=True)]
        assert local is not None
        return _reduce_list(local, self.reduce)

    def grad(self, clip: float | None = None) -> PolicyGradient:
        theta, phi, leaves = self._alias()
        terms = self._terms if clip is None else self._make_clipped(clip)
        loss, kl = self._local(terms, theta, phi)
        grads = _grads(loss * self.scale, leaves)
        both = self.reduce(torch.stack([loss.detach(), kl.detach()]).reshape(2) * self.scale)
        return PolicyGradient(float(both[0]), float(both[1]), _reduce_list(grads, self.reduce))

    def release(self) -> None:
        self._kl_graphs = None


HVP_CHUNK_ROWS = 8192
"""Time steps per chunk of the policy terms on a CPU, from ``benchmarks/trpo_hvp.py``'s sweeps
of 1 to all tasks a chunk: 4 of navigation's tasks (2,000 steps each) and 2 of HalfCheetah's
(4,000) are within about 20% of the fastest chunk on both, on a 2-core CPU."""


def tasks_per_chunk(batch: TaskBatch) -> int:
    """Tasks per chunk: whole tasks of about ``HVP_CHUNK_ROWS`` time steps, all on a GPU."""
    tasks = max(batch.num_tasks, 1)
    mask = batch.query.get("mask")
    if mask is None or mask.device.type != "cpu" or batch.num_tasks == 0:
        return tasks
    per_task = max(mask[0].numel(), 1)
    return max(1, min(tasks, HVP_CHUNK_ROWS // per_task))


def _grads(
    total: Tensor, leaves: list[Tensor], *, create_graph: bool = False, retain_graph: bool = False
) -> list[Tensor]:
    if not isinstance(total, Tensor) or not total.requires_grad:
        return [torch.zeros_like(leaf) for leaf in leaves]
    got = torch.autograd.grad(
        total,
        leaves,
        allow_unused=True,
        create_graph=create_graph,
        retain_graph=retain_graph or create_graph,
    )
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, got, strict=True)]


def _reduce_list(tensors: list[Tensor], reduce: Callable[[Tensor], Tensor]) -> list[Tensor]:
    flat = reduce(torch.cat([t.reshape(-1) for t in tensors]))
    return [
        piece.view_as(t)
        for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)
    ]
