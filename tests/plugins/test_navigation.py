"""The navigation task family end to end: its batched environment against a per-agent loop, and
MAML-TRPO (and Adam, PPO) training, resuming, learning and evaluating on it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamlflow.engine import (
    PluginHost,
    Trainer,
    build_components,
    evaluate,
    load_checkpoint,
)
from mamlflow.plugins.navigation import NavigationConfig
from tests.navigation import (
    SMALL,
    navigation_components,
    navigation_config,
)


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
    c = navigation_components(
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
    fam = navigation_components(host).family
    a = fam.sample(3, 7, torch.arange(6)).info["goal"]
    b = fam.sample(3, 7, torch.tensor([4, 5])).info["goal"]
    torch.testing.assert_close(a[4:], b)
    assert a.abs().max() <= 0.5
    test = fam.sample(3, 7, torch.arange(6), split="test").info["goal"]
    assert not torch.allclose(a, test)


@pytest.mark.parametrize("outer", ["trpo", "adam", "ppo"])
def test_navigation_trains_and_resumes_bitwise(host: PluginHost, tmp_path: Path, outer: str):
    sets = (f"outer.name={outer}",) + (("outer.lr=0.01",) if outer != "trpo" else ())
    Trainer(navigation_config(host, "train.iterations=4", *sets), tmp_path / "a", host).fit()
    Trainer(navigation_config(host, "train.iterations=2", *sets), tmp_path / "b", host).fit()
    Trainer(
        navigation_config(host, "train.iterations=4", *sets), tmp_path / "b", host, resume=True
    ).fit()
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.iteration == b.iteration == 4
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    first = load_checkpoint(tmp_path / "a").params
    init = build_components(navigation_config(host), host).initial_params()[0]
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
    config = navigation_config(host, *sets)
    Trainer(config, tmp_path, host).fit()
    c = build_components(config, host)
    ckpt = load_checkpoint(tmp_path)
    result, _ = evaluate(c, ckpt.params, ckpt.learnables, shots=10, steps=2, tasks=20)
    assert result.metric == "return"
    before, one, two = result.mean
    assert one > before + 3 * result.ci95[0], result.mean
    assert two > before


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
