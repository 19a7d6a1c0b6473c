"""Reinforcement learning on the same core: rollout task families and policy-gradient losses.

A task of a rollout family is an environment's parameters (a goal, a velocity); its "data" are
trajectories that do not exist before the step. ``RolloutTaskFamily.collect`` runs the policy in
all tasks' environments at once (tasks × trajectories as the batch dimension) and returns tensors
with a leading task dimension, so from there on the kernels treat RL like regression: the inner
loss is the REINFORCE surrogate on the support trajectories, the meta-loss the same surrogate (an
importance ratio against the collecting policy, which is 1 at θ) on trajectories collected after
adaptation. See ``docs/rl.md``.

Everything random in a rollout (the exploration noise) is a pure function of (seed, split,
iteration, phase, global task index), like task sampling, so a meta-batch is the same however it is
split across processes and a resumed run collects exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import ClassVar, TypeVar

import torch
from pydantic import Field
from torch import Tensor
from torch.func import vmap

from .rng import derive_key, normal
from .task import (
    SPLITS,
    BatchSources,
    ModelIO,
    Split,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
)

__all__ = [
    "Policy",
    "RolloutConfig",
    "RolloutTaskFamily",
    "discounted_returns",
    "gaussian_kl",
    "gaussian_log_prob",
    "linear_baseline",
    "per_task",
    "policy_gradient_loss",
    "policy_kl",
]

_T = TypeVar("_T")
TensorDict = dict[str, Tensor]
Model = Callable[[TensorDict, Tensor], Tensor]
Policy = Callable[[Tensor, int], Tensor]
"""``act(obs, t)``: actions for observations ``(tasks, trajectories, obs_dim)`` at time ``t``."""

_NOISE_STREAM = 0x5EED


class RolloutConfig(TaskConfig):
    """Options of every rollout family: ``shots``/``query`` count trajectories per task."""

    shots: int = Field(20, ge=2, description="trajectories per task to adapt on (support)")
    query: int = Field(20, ge=1, description="trajectories per task after adaptation (meta-loss)")
    horizon: int = Field(100, ge=1, description="time steps per trajectory")
    gamma: float = Field(0.99, gt=0, le=1, description="discount of the returns advantages use")
    baseline: bool = Field(
        True, description="subtract a linear feature baseline fitted per task (rllab's)"
    )
    normalize_advantages: bool = Field(
        True, description="centre and scale each task's advantages to unit variance"
    )
    eval_timesteps: int | None = Field(
        None,
        ge=1,
        description="evaluation collects whole trajectories, eval.shots at a time, until each "
        "task has this many time steps, and scores the mean return of those trajectories, as "
        "rllab's samplers did for the paper (its navigation test: 4000); episodes that end early "
        "leave room for more of them. null: exactly eval.shots trajectories",
    )


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of diagonal Gaussians, summed over the last (action) axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N0 ‖ N1) of diagonal Gaussians, summed over the last axis."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


def _split_output(out: Tensor) -> tuple[Tensor, Tensor]:
    """A policy's output ``(…, 2·act_dim)``: the mean, then the log standard deviation."""
    act_dim = out.shape[-1] // 2
    return out[..., :act_dim], out[..., act_dim:]


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def policy_gradient_loss(model: Model, *, clip: float | None = None) -> TaskObjective:
    """The per-task policy-gradient surrogate ``(params, data) -> scalar``.

    Data without ``old_logp`` (support trajectories) gives REINFORCE, ``-mean(log π(a|s) · A)``,
    the paper's inner loss. Data with it (query trajectories) gives the importance-sampled
    surrogate ``-mean(π/π_old · A)`` TRPO needs for its line search; at the collecting
    parameters the two have the same value of gradient. ``clip`` gives PPO's clipped surrogate.
    Means run over the valid (unmasked) time steps of all the task's trajectories.
    """

    def loss(params: TensorDict, data: Mapping[str, Tensor]) -> Tensor:
        mean, log_std = _split_output(model(params, data["obs"]))
        logp = gaussian_log_prob(mean, log_std, data["actions"])
        adv, mask = data["advantages"], data["mask"]
        if "old_logp" not in data:
            return -_masked_mean(logp * adv, mask)
        ratio = torch.exp(logp - data["old_logp"])
        surrogate = ratio * adv
        if clip is not None:
            surrogate = torch.minimum(surrogate, ratio.clamp(1 - clip, 1 + clip) * adv)
        return -_masked_mean(surrogate, mask)

    return loss


def policy_kl(model: Model) -> TaskObjective:
    """Mean KL(π_old ‖ π_params) over a task's valid query time steps (TRPO's constraint)."""

    def kl(params: TensorDict, data: Mapping[str, Tensor]) -> Tensor:
        mean, log_std = _split_output(model(params, data["obs"]))
        value = gaussian_kl(data["old_mean"], data["old_log_std"], mean, log_std)
        return _masked_mean(value, data["mask"])

    return kl


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """``G_t = Σ_{j≥t} γ^{j-t} r_j`` along the last axis, as one matmul (no loop over time)."""
    horizon = rewards.shape[-1]
    t = torch.arange(horizon, device=rewards.device)
    power = (t.view(1, -1) - t.view(-1, 1)).to(rewards.dtype)  # [i, j] = j - i
    discount = torch.where(power >= 0, gamma**power, torch.zeros_like(power))
    return rewards @ discount.T


def _baseline_features(obs: Tensor, horizon: int) -> Tensor:
    """rllab's LinearFeatureBaseline features: obs, obs², t, t², t³ (t/100) and 1."""
    o = obs.clamp(-10, 10)
    t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0).view(-1, 1)
    t = t.expand(*obs.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], -1)


def linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Per-task least-squares fit of the returns on ``_baseline_features``, evaluated back.

    ``obs (tasks, traj, T, d)``, ``returns`` and ``mask`` ``(tasks, traj, T)``. Ridge-regularised
    like rllab (1e-5, ten times more until the solve is finite), solved in float64.
    """
    x = _baseline_features(obs, obs.shape[-2]).double() * mask.double().unsqueeze(-1)
    x = x.flatten(1, 2)  # (tasks, traj·T, F)
    y = (returns.double() * mask.double()).flatten(1, 2).unsqueeze(-1)
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    reg = 1e-5
    for _ in range(6):
        w = torch.linalg.solve(xtx + reg * eye, xty)
        if bool(torch.isfinite(w).all()):
            break
        reg *= 10
    return (x @ w).squeeze(-1).view_as(returns).to(returns.dtype)


class RolloutTaskFamily(TaskFamily):
    """A task family whose data are trajectories of a Gaussian policy in per-task environments.

    Subclasses set ``obs_dim`` and ``act_dim``, sample task parameters into ``TaskBatch.info``
    (with empty support and query) and implement ``simulate``. The policy model maps an
    observation to ``2·act_dim`` numbers: the action mean, then its log standard deviation.
    """

    Config: ClassVar[type[TaskConfig]] = RolloutConfig
    metric: ClassVar = "return"
    obs_dim: ClassVar[int]
    act_dim: ClassVar[int]
    config: RolloutConfig

    @property
    def io(self) -> ModelIO:
        return ModelIO((self.obs_dim,), 2 * self.act_dim, input_key="obs")

    def batch_source(self, sources: BatchSources[_T]) -> _T:
        """Trajectories collected in every task, with θ (support) and the adapted θ′ (query)."""
        return sources.rollouts(self)

    @abstractmethod
    def simulate(
        self, info: TensorDict, act: Policy, trajectories: int, keys: Tensor
    ) -> TensorDict:
        """Run ``trajectories`` episodes per task, all tasks at once, for ``config.horizon`` steps.

        ``info`` holds the tasks' parameters (leading task dimension); ``act(obs, t)`` returns
        the actions for observations ``(tasks, trajectories, obs_dim)``. ``keys`` (int64, one per
        task) seed anything random in the environments themselves (initial states): they differ
        between tasks, phases and iterations and repeat exactly on a resume. Returns ``obs``,
        ``actions`` (as the policy chose them, before any clipping), ``rewards`` and ``mask``
        (1 until and including the step an episode ends, 0 after), each ``(tasks, traj, T, …)``.
        """

    def objective(self, model: Model) -> TaskObjective:
        return policy_gradient_loss(model)

    def score(self, model: Model) -> TaskObjective:
        """The mean undiscounted return of the task's trajectories (the paper's metric)."""

        def mean_return(params: TensorDict, data: Mapping[str, Tensor]) -> Tensor:
            # Over the trajectories collected (a trajectory masked out from its first step was
            # not: see ``eval_timesteps``).
            kept = data["mask"][..., 0]
            returns = (data["rewards"] * data["mask"]).sum(-1)
            return (returns * kept).sum() / kept.sum().clamp_min(1.0)

        return mean_return

    def kl(self, model: Model) -> TaskObjective:
        return policy_kl(model)

    def example_rollouts(
        self,
        model: Model,
        before: TensorDict,
        after: TensorDict,
        batch: TaskBatch,
        *,
        tasks: int = 4,
        trajectories: int = 2,
    ) -> tuple[TaskBatch, dict[str, TensorDict]]:
        """What ``plot_examples`` draws: a few tasks' trajectories with θ and with θ′.

        ``before`` is θ, ``after`` the adapted parameters with a task dimension (as
        ``plot_examples`` receives them). Returns the tasks shown and ``{"before": data,
        "after": data}``, collected in a phase of their own so they repeat exactly.
        """
        shown = min(tasks, batch.num_tasks)
        few = batch.shard(0, shown)
        policies = {
            "before": per_task(before, shown),
            "after": {k: v[:shown] for k, v in after.items()},
        }
        data = {
            label: self.collect(
                few,
                model,
                params,
                seed=0,
                iteration=0,
                phase=1000,
                trajectories=trajectories,
                split="test",
            )
            for label, params in policies.items()
        }
        return few, data

    def collect(
        self,
        batch: TaskBatch,
        model: Model,
        params: TensorDict,
        *,
        seed: int,
        iteration: int,
        phase: int,
        trajectories: int,
        split: Split = "train",
        record_policy: bool = False,
        timesteps: int | None = None,
    ) -> TensorDict:
        """Trajectories of the policy ``params`` (leading task dimension) in every task.

        Returns what the objective needs: ``obs``, ``actions``, ``rewards``, ``mask`` and
        ``advantages`` (discounted returns less the per-task baseline). ``record_policy`` adds
        the collecting policy's ``old_logp``, ``old_mean`` and ``old_log_std``: query data.
        ``timesteps``: collect ``trajectories`` at a time until every task has that many time
        steps; each task keeps its trajectories in order up to the one that reaches the budget,
        the others are masked out entirely.
        """
        cfg = self.config
        params = {k: v.detach() for k, v in params.items()}
        key = derive_key(_NOISE_STREAM, seed, SPLITS[split], iteration, phase)
        with torch.no_grad():
            data = self._simulate(batch, model, params, key, trajectories)
            if timesteps is not None:
                data = self._until(batch, model, params, key, trajectories, timesteps, data)
            mask = data["mask"]
            rewards = data["rewards"] * mask
            returns = discounted_returns(rewards, cfg.gamma)
            adv = returns
            if cfg.baseline:
                adv = returns - linear_baseline(data["obs"], returns, mask)
            if cfg.normalize_advantages:
                count = mask.sum((1, 2), keepdim=True).clamp_min(1.0)
                centred = adv - (adv * mask).sum((1, 2), keepdim=True) / count
                std = ((centred.pow(2) * mask).sum((1, 2), keepdim=True) / count).sqrt()
                adv = centred / (std + 1e-8)
            out = {
                "obs": data["obs"],
                "actions": data["actions"],
                "rewards": rewards,
                "mask": mask,
                "advantages": adv * mask,
            }
            if record_policy:
                mean, log_std = _split_output(vmap(model, in_dims=(0, 0))(params, data["obs"]))
                out["old_mean"], out["old_log_std"] = mean, log_std
                out["old_logp"] = gaussian_log_prob(mean, log_std, data["actions"])
        return out

    def _simulate(
        self, batch: TaskBatch, model: Model, params: TensorDict, key: int, trajectories: int
    ) -> TensorDict:
        """One batch of ``trajectories`` per task, with exploration noise keyed by ``key``."""
        tasks, horizon = batch.num_tasks, self.config.horizon
        ref = next(iter(params.values()))
        noise = normal(
            key, batch.task_index.cpu(), trajectories * horizon * self.act_dim, ref.dtype
        ).to(ref.device)
        noise = noise.view(tasks, trajectories, horizon, self.act_dim)
        forward = vmap(model, in_dims=(0, 0))

        def act(obs: Tensor, t: int) -> Tensor:
            mean, log_std = _split_output(forward(params, obs))
            return mean + torch.exp(log_std) * noise[:, :, t]

        keys = torch.tensor(
            [derive_key(key, int(i)) & ((1 << 63) - 1) for i in batch.task_index.tolist()],
            dtype=torch.int64,
        )
        return self.simulate(batch.info, act, trajectories, keys)

    def _until(
        self,
        batch: TaskBatch,
        model: Model,
        params: TensorDict,
        key: int,
        trajectories: int,
        timesteps: int,
        first: TensorDict,
    ) -> TensorDict:
        """More batches of trajectories until every task has ``timesteps`` steps; then mask.

        rllab's sampler runs whole episodes until the budget is reached, so a task whose
        episodes end early gets more of them: it keeps trajectories in order while the steps
        before each are under the budget.
        """
        chunks = [first]
        # Each batch adds at least one step per trajectory: this bounds the loop.
        while float(torch.stack([c["mask"].sum((1, 2)) for c in chunks]).sum(0).min()) < timesteps:
            extra_key = derive_key(key, len(chunks))
            chunks.append(self._simulate(batch, model, params, extra_key, trajectories))
        data = {k: torch.cat([c[k] for c in chunks], 1) for k in first}
        lengths = data["mask"].sum(-1)
        before = lengths.cumsum(1) - lengths
        kept = (before < timesteps).to(data["mask"].dtype)
        data["mask"] = data["mask"] * kept.unsqueeze(-1)
        return data


def per_task(params: TensorDict, tasks: int) -> TensorDict:
    """θ with a task dimension (a view, no copy): every task's policy before adaptation."""
    return {k: v.detach().unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}
