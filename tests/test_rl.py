"""Meta-RL: the batched navigation environment, policy-gradient losses, TRPO and training.

Every fast path here has a plain twin: the vectorised environment against a per-agent Python
loop, the batched meta-gradient and policy terms against the per-task ``torch.autograd`` loop and
against finite differences (float64), conjugate gradient against a dense solve.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamlflow.core import rl
from mamlflow.core.checkpoint import load_checkpoint
from mamlflow.core.components import build_components
from mamlflow.core.config import resolve
from mamlflow.core.errors import ConfigError
from mamlflow.core.evaluate import evaluate
from mamlflow.core.host import PluginHost
from mamlflow.core.rl import (
    PolicyTerms,
    Rollouts,
    discounted_returns,
    gaussian_kl,
    linear_baseline,
    per_task,
    standard_normal,
)
from mamlflow.core.task import ModelIO
from mamlflow.core.trainer import Trainer
from mamlflow.kernels import make_meta_step
from mamlflow.kernels._policy import make_policy_terms
from mamlflow.plugins.navigation import NavigationConfig
from mamlflow.plugins.trpo import conjugate_gradient


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


SMALL = (
    "model.hidden=[16,16]",
    "task.shots=6",
    "task.query=5",
    "task.horizon=20",
    "train.meta_batch_size=4",
    "train.log_every=1",
    "eval.tasks=6",
    "eval.batch_size=3",
    # Exactly eval.shots episodes per step; the timestep budget has a test of its own.
    "task.eval_timesteps=null",
)


def _config(host: PluginHost, *sets: str):
    return resolve(host, preset="navigation", sets=(*SMALL, *sets)).config


def _components(host: PluginHost, *sets: str):
    return build_components(_config(host, *sets), host)


def _meta_batch(c, tasks: int = 3):
    params, learnables = c.initial_params()
    rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)
    batch = c.family.sample(0, 0, torch.arange(tasks)).to(c.device, c.dtype)
    return (
        rollouts,
        params,
        learnables,
        rollouts.meta_batch(batch, params, learnables, seed=0, iteration=0),
    )


# --- The environment ---------------------------------------------------------------------------


def _reference_rollout(goal, actions, cfg: NavigationConfig):
    """One agent, plain Python floats: what ``Navigation.simulate`` must match."""
    x = y = 0.0
    obs, rewards, mask, alive = [], [], [], 1.0
    for ax, ay in actions:
        obs.append((x, y))
        if cfg.normalized_actions:
            ax, ay = ax * cfg.action_clip, ay * cfg.action_clip
        if alive:
            x += max(-cfg.action_clip, min(cfg.action_clip, ax))
            y += max(-cfg.action_clip, min(cfg.action_clip, ay))
        dx, dy = x - goal[0], y - goal[1]
        d2 = dx * dx + dy * dy
        rewards.append(-d2 if cfg.reward == "squared" else -math.sqrt(d2))
        mask.append(alive)
        if abs(dx) < cfg.success_radius and abs(dy) < cfg.success_radius:
            alive = 0.0
    return obs, rewards, mask


@pytest.mark.parametrize(
    ("reward", "normalized"), [("distance", True), ("squared", True), ("distance", False)]
)
def test_vectorised_navigation_matches_a_per_agent_loop(
    host: PluginHost, reward: str, normalized: bool
) -> None:
    c = _components(
        host,
        f"task.reward={reward}",
        "task.success_radius=0.05",
        f"task.normalized_actions={str(normalized).lower()}",
    )
    cfg = c.family.config
    tasks, traj = 3, 4
    batch = c.family.sample(0, 0, torch.arange(tasks))
    goal = batch.info["goal"].double()
    # Agents that head for their goal (so some finish early) with some noise, some that wander.
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(tasks, traj, cfg.horizon, 2, generator=gen, dtype=torch.float64)

    def act(obs, t):
        toward = (goal.unsqueeze(1) - obs) * torch.tensor([1.0, 1.0, 0.0, 0.3]).view(1, -1, 1)
        move = toward.double() + 0.05 * noise[:, :, t]
        return move / cfg.action_clip if normalized else move

    fam = type(c.family)(cfg)
    out = fam.simulate({"goal": goal}, act, traj, torch.zeros(tasks, dtype=torch.long))
    assert out["obs"].shape == (tasks, traj, cfg.horizon, 2)
    finished = 0
    for i in range(tasks):
        for j in range(traj):
            acts = out["actions"][i, j].tolist()
            obs, rewards, mask = _reference_rollout(goal[i].tolist(), acts, cfg)
            torch.testing.assert_close(out["obs"][i, j], torch.tensor(obs, dtype=torch.float64))
            torch.testing.assert_close(
                out["rewards"][i, j], torch.tensor(rewards, dtype=torch.float64)
            )
            assert out["mask"][i, j].tolist() == mask
            finished += mask[-1] == 0.0
    assert finished > 0  # the early-termination branch was exercised


def test_goals_are_pure_per_task_and_split(host: PluginHost) -> None:
    fam = _components(host).family
    a = fam.sample(3, 7, torch.arange(6)).info["goal"]
    b = fam.sample(3, 7, torch.tensor([4, 5])).info["goal"]
    torch.testing.assert_close(a[4:], b)
    assert a.abs().max() <= 0.5
    test = fam.sample(3, 7, torch.arange(6), split="test").info["goal"]
    assert not torch.allclose(a, test)


def test_standard_normal_is_keyed_and_normal() -> None:
    z = standard_normal(11, torch.arange(4), 50_000, torch.float64)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    torch.testing.assert_close(
        standard_normal(11, torch.tensor([2, 3]), 50_000, torch.float64), z[2:]
    )
    assert not torch.equal(standard_normal(12, torch.arange(4), 10, torch.float64), z[:, :10])


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
    c = _components(host)
    _, _, _, batch = _meta_batch(c)
    adv, mask = batch.support["advantages"], batch.support["mask"]
    for i in range(batch.num_tasks):
        valid = adv[i][mask[i] > 0]
        assert abs(float(valid.mean())) < 1e-5 and abs(float(valid.std(unbiased=False)) - 1) < 1e-4
    assert "old_logp" in batch.query and "old_logp" not in batch.support


# --- Second order through the policy-gradient step ---------------------------------------------


def test_meta_gradient_batched_matches_loop_and_finite_differences(host: PluginHost) -> None:
    c = _components(host, "kernel.dtype=float64")
    _, params, learnables, batch = _meta_batch(c)
    objective = c.objective()
    steps = {
        s: make_meta_step(objective, c.adapter, steps=1, first_order=False, strategy=s)
        for s in ("loop", "batched")
    }
    loop = steps["loop"](params, learnables, batch.support, batch.query, 1.0)
    fast = steps["batched"](params, learnables, batch.support, batch.query, 1.0)
    for k in params:
        torch.testing.assert_close(fast.grads[k], loop.grads[k], rtol=1e-9, atol=1e-11)
    # Finite differences of the meta-loss (the query surrogate after the inner PG step).
    terms = make_policy_terms(
        objective, c.family.kl(c.learner), c.adapter, steps=1, first_order=False
    )
    gen = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    eps = 1e-5

    def at(sign: float) -> float:
        moved = {k: v + sign * eps * direction[k] for k, v in params.items()}
        return float(terms(moved, learnables, batch.support, batch.query)[0])

    numeric = (at(1) - at(-1)) / (2 * eps)
    analytic = sum(float((loop.grads[k] * direction[k]).sum()) for k in params)
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    # First order differs: the second-order term is really there.
    fo = make_meta_step(objective, c.adapter, steps=1, first_order=True, strategy="batched")
    first = fo(params, learnables, batch.support, batch.query, 1.0)
    gap = max(float((first.grads[k] - loop.grads[k]).abs().max()) for k in params)
    assert gap > 1e-6


def test_policy_terms_batched_match_loop_and_the_kl_is_a_metric(host: PluginHost) -> None:
    c = _components(host, "kernel.dtype=float64")
    rollouts, params, learnables, batch = _meta_batch(c)
    kl = c.family.kl(c.learner)
    fns = {
        s: make_policy_terms(c.objective(), kl, c.adapter, steps=1, first_order=False, strategy=s)
        for s in ("loop", "batched")
    }
    values = {s: f(params, learnables, batch.support, batch.query) for s, f in fns.items()}
    torch.testing.assert_close(values["batched"][0], values["loop"][0], rtol=1e-10, atol=1e-12)
    # At the collecting parameters the adapted policies are the collecting ones: KL 0.
    assert abs(float(values["batched"][1])) < 1e-10
    terms = PolicyTerms(rollouts, (params, learnables), batch, meta_batch_size=3, first_order=False)
    gen = torch.Generator().manual_seed(5)
    u = [torch.randn(v.shape, generator=gen, dtype=v.dtype) for v in params.values()]
    v = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in params.values()]
    hu, hv = terms.hvp(u), terms.hvp(v)
    dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(v, hu) == pytest.approx(dot(u, hv), rel=1e-8)  # symmetric
    assert dot(u, hu) > 0  # and positive: the KL's Hessian at its minimum
    # The reference: the same product through the per-task loop, by double backward.
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    _, kl_loop = fns["loop"](theta, learnables, batch.support, batch.query)
    g = torch.autograd.grad(kl_loop / 3, list(theta.values()), create_graph=True)
    ref = torch.autograd.grad(
        sum((a * b).sum() for a, b in zip(g, u, strict=True)), list(theta.values())
    )
    for a, b in zip(hu, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    terms.release()


def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    m0, m1, s0, s1 = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    p = torch.distributions.Normal(m0, s0.exp())
    q = torch.distributions.Normal(m1, s1.exp())
    expected = torch.distributions.kl_divergence(p, q).sum(-1)
    torch.testing.assert_close(gaussian_kl(m0, s0, m1, s1), expected)


# --- TRPO --------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_a_positive_definite_system() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: [a @ v[0]], [b], iterations=6)[0]
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


def test_trpo_step_keeps_the_kl_bound_and_lowers_the_meta_loss(host: PluginHost) -> None:
    c = _components(host, "kernel.dtype=float64", "outer.max_kl=0.002")
    rollouts, params, learnables, batch = _meta_batch(c, tasks=4)
    step = make_meta_step(c.objective(), c.adapter, steps=1, first_order=False, strategy="batched")
    result = step(params, learnables, batch.support, batch.query, 1 / 4)
    outer = host.optimizer("trpo")(c.config.outer)
    optimizer = outer.build(list(params.values()))
    for k, p in params.items():
        p.grad = result.grads[k]
    before = {k: v.clone() for k, v in params.items()}
    terms = PolicyTerms(rollouts, (params, learnables), batch, meta_batch_size=4, first_order=False)
    optimizer.step(terms)
    last = optimizer.last
    assert last["line_search"] >= 1, last
    loss, kl = terms.loss_kl()
    assert 0 < kl <= 0.002 and loss < float(result.loss)
    assert kl == pytest.approx(last["kl"]) and loss == pytest.approx(last["loss"])
    assert any(not torch.equal(before[k], params[k]) for k in params)


# --- Training, evaluation, the CLI -------------------------------------------------------------


@pytest.mark.parametrize("outer", ["trpo", "adam", "ppo"])
def test_navigation_trains_and_resumes_bitwise(host: PluginHost, tmp_path: Path, outer: str):
    sets = (f"outer.name={outer}",) + (("outer.lr=0.01",) if outer != "trpo" else ())
    Trainer(_config(host, "train.iterations=4", *sets), tmp_path / "a", host).fit()
    Trainer(_config(host, "train.iterations=2", *sets), tmp_path / "b", host).fit()
    Trainer(_config(host, "train.iterations=4", *sets), tmp_path / "b", host, resume=True).fit()
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.iteration == b.iteration == 4
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    first = load_checkpoint(tmp_path / "a").params
    init = build_components(_config(host), host).initial_params()[0]
    assert any(not torch.equal(first[k], init[k]) for k in init)  # it did move
    record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["return_before"] < 0 and record["return_after"] < 0


@pytest.mark.slow
def test_navigation_learns_to_adapt(host: PluginHost, tmp_path: Path) -> None:
    """A short run already makes one adaptation step worth a lot, as in the paper's table."""
    sets = (
        "model.hidden=[32,32]",
        "task.horizon=30",
        "train.meta_batch_size=10",
        "task.shots=10",
        "task.query=10",
        "train.iterations=25",
        "eval.tasks=20",
        "eval.batch_size=20",
    )
    config = _config(host, *sets)
    Trainer(config, tmp_path, host).fit()
    c = build_components(config, host)
    ckpt = load_checkpoint(tmp_path)
    result, _ = evaluate(c, ckpt.params, ckpt.learnables, shots=10, steps=2, tasks=20)
    assert result.metric == "return"
    before, one, two = result.mean
    assert one > before + 3 * result.ci95[0], result.mean
    assert two > before


def test_rl_config_errors_name_the_fix(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inner\.steps=1"):
        Trainer(_config(host, "inner.steps=2"), tmp_path / "a", host)
    sinusoid = resolve(host, preset="sinusoid", sets=("outer.name=trpo",)).config
    with pytest.raises(ConfigError, match=r"needs a rollout task family.*use adam"):
        Trainer(sinusoid, tmp_path / "b", host)
    with pytest.raises(ConfigError, match="gaussian-mlp is a policy"):
        plugin = host.model("gaussian-mlp")
        plugin(plugin.Config(name="gaussian-mlp")).build(
            ModelIO((1,), 1)
        )  # sinusoid's regression io


def test_cli_eval_reports_returns_with_intervals_and_plots(tmp_path: Path) -> None:
    run = tmp_path / "nav"
    base = [sys.executable, "-m", "mamlflow"]
    sets = [a for s in (*SMALL, "train.iterations=2") for a in ("--set", s)]
    subprocess.run(
        [*base, "run", "--plugin", "navigation", *sets, "--out", str(run)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run(
        [*base, "eval", str(run), "--json"], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout)
    assert result["metric"] == "return" and result["steps"] == [0, 1, 2, 3]
    assert len(result["mean"]) == len(result["ci95"]) == 4
    assert all(m < 0 for m in result["mean"]) and all(c > 0 for c in result["ci95"])
    assert (run / "eval_curve.png").stat().st_size > 0
    # The preset's protocol: 40 trajectories per adaptation step.
    assert result["shots"] == 40
    assert (run / "examples_k40.png").stat().st_size > 0


def test_evaluation_collects_fresh_trajectories_per_step_and_scales_later_steps(
    host: PluginHost,
) -> None:
    """``Rollouts.curve`` against the protocol written out: collect, score, one SGD step, …"""
    c = _components(host, "kernel.dtype=float64")
    params, learnables = c.initial_params()
    rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)
    batch = c.family.sample(0, 0, torch.arange(3), split="test").to(c.device, c.dtype)
    curve = rollouts.curve(
        batch, params, learnables, steps=2, trajectories=4, seed=0, split="test", later_scale=0.5
    )
    objective, lr = c.objective(), c.config.inner.lr
    for i in range(3):
        task = batch.shard(i, i + 1)
        current = dict(params)
        for k, rate in enumerate((lr, 0.5 * lr, None)):
            data = c.family.collect(
                task,
                c.learner,
                per_task(current, 1),
                seed=0,
                iteration=0,
                phase=2 + k,
                trajectories=4,
                split="test",
            )
            expected = float((data["rewards"] * data["mask"]).sum(-1).mean())
            assert float(curve.returns[i, k]) == pytest.approx(expected, rel=1e-9)
            if rate is None:
                break
            leaves = {n: v.detach().requires_grad_(True) for n, v in current.items()}
            loss = objective(leaves, {n: v[0] for n, v in data.items()})
            grads = torch.autograd.grad(loss, list(leaves.values()))
            current = {
                n: v.detach() - rate * g for (n, v), g in zip(leaves.items(), grads, strict=True)
            }
        for n in params:
            torch.testing.assert_close(curve.adapted[n][i], current[n])


def test_a_timestep_budget_collects_whole_episodes_until_it_is_reached(host: PluginHost) -> None:
    """``eval_timesteps``: rllab's sampler, written out per task as a plain loop over episodes."""
    c = _components(host, "task.success_radius=0.2")  # episodes that end early, of varied length
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
    key = rl.derive_key(rl._NOISE_STREAM, 0, rl._SPLITS["test"], 0, 2)
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
