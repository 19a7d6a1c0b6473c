"""The rollout contract's pure parts: returns, the linear baseline, advantages, the Gaussian KL,
and collection under a timestep budget, each against a plain twin."""

from __future__ import annotations

import math

import pytest
import torch

from mamlflow.core import (
    SPLITS,
    discounted_returns,
    gaussian_kl,
    linear_baseline,
    per_task,
    rl,
)
from mamlflow.engine import (
    PluginHost,
)
from tests.navigation import (
    navigation_components,
    navigation_meta_batch,
)


def test_returns_and_linear_baseline_match_plain_twins() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    returns = discounted_returns(rewards, 0.9)
    for t in range(7):
        expected = sum(0.9 ** (j - t) * rewards[..., j] for j in range(t, 7))
        torch.testing.assert_close(returns[..., t], expected)
    obs = torch.randn(2, 3, 7, 2, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 3, 7, dtype=torch.float64)
    mask[0, 1, 4:] = 0
    fitted = linear_baseline(obs, returns, mask)
    for i in range(2):  # each task's ridge regression on its own valid steps, by lstsq
        t = (torch.arange(7, dtype=torch.float64) / 100).view(1, -1, 1).expand(3, 7, 1)
        o = obs[i].clamp(-10, 10)
        x = torch.cat([o, o * o, t, t * t, t**3, torch.ones_like(t)], -1)
        keep = mask[i] > 0
        # Ridge (1e-5, as rllab) as the least-squares solution of the augmented system.
        a = torch.cat([x[keep], math.sqrt(1e-5) * torch.eye(x.shape[-1], dtype=x.dtype)])
        y = torch.cat([returns[i][keep], torch.zeros(x.shape[-1], dtype=x.dtype)])
        w = torch.linalg.lstsq(a, y.unsqueeze(-1)).solution
        torch.testing.assert_close(fitted[i][keep], (x[keep] @ w).squeeze(-1), atol=1e-6, rtol=0)


def test_collected_advantages_are_normalised_per_task(host: PluginHost) -> None:
    c = navigation_components(host)
    _, _, _, batch = navigation_meta_batch(c)
    adv, mask = batch.support["advantages"], batch.support["mask"]
    for i in range(batch.num_tasks):
        valid = adv[i][mask[i] > 0]
        assert abs(float(valid.mean())) < 1e-5 and abs(float(valid.std(unbiased=False)) - 1) < 1e-4
    assert "old_logp" in batch.query and "old_logp" not in batch.support


def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    m0, m1, s0, s1 = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    p = torch.distributions.Normal(m0, s0.exp())
    q = torch.distributions.Normal(m1, s1.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(gaussian_kl(m0, s0, m1, s1), expected)


def test_a_timestep_budget_collects_whole_episodes_until_it_is_reached(host: PluginHost) -> None:
    """``eval_timesteps``: rllab's sampler, written out per task as a plain loop over episodes."""
    c = navigation_components(
        host, "task.success_radius=0.2"
    )  # episodes that end early, of varied length
    params, _ = c.initial_params()
    tasks, batch_size, budget = 3, 4, 50
    batch = c.family.sample(0, 0, torch.arange(tasks), split="test")
    policy = per_task(params, tasks)
    data = c.family.collect(
        batch,
        c.learner,
        policy,
        seed=0,
        iteration=0,
        phase=2,
        trajectories=batch_size,
        split="test",
        timesteps=budget,
    )
    chunks = data["mask"].shape[1] // batch_size
    assert chunks > 1  # it needed more than one batch of episodes
    # The twin: the same batches of episodes, unmasked (the documented keys), then the loop.
    key = rl.derive_key(rl._NOISE_STREAM, 0, SPLITS["test"], 0, 2)
    raw = [
        c.family._simulate(
            batch, c.learner, policy, key if j == 0 else rl.derive_key(key, j), batch_size
        )
        for j in range(chunks)
    ]
    lengths = torch.cat([r["mask"].sum(-1) for r in raw], 1)
    for i in range(tasks):
        collected, kept = 0.0, 0
        for n in lengths[i].tolist():
            if collected >= budget:
                break
            collected, kept = collected + n, kept + 1
        assert collected >= budget
        got = data["mask"][i].sum(-1)
        assert got[:kept].tolist() == lengths[i, :kept].tolist() and not got[kept:].any()
        score = c.family.score(c.learner)(params, {k: v[i] for k, v in data.items()})
        returns = (data["rewards"][i] * data["mask"][i]).sum(-1)[:kept]
        assert float(score) == pytest.approx(float(returns.mean()))
        valid = data["advantages"][i][data["mask"][i] > 0]  # normalised over kept steps only
        assert abs(float(valid.mean())) < 1e-5
