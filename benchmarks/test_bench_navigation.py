"""Environment steps per second of batched 2D navigation against one environment at a time.

``batched`` is ``Navigation.simulate``: every task's and trajectory's agent steps as one tensor
(the paper's meta-batch: 20 tasks × 20 trajectories × 100 steps), with a fixed policy so only the
environment is timed. ``per-env`` steps the same agents one by one with ``navigation_step`` on
single-agent tensors, which is what a gym-style loop over environments costs. Both produce the
same trajectories (checked before timing). Run with
``pytest benchmarks/test_bench_navigation.py --benchmark-only`` (see README.md).
"""

from __future__ import annotations

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from mamlflow.plugins.navigation import Navigation, NavigationConfig, navigation_step

TASKS, TRAJECTORIES = 20, 20
CONFIG = NavigationConfig(name="navigation")
GOALS = Navigation(CONFIG).sample(0, 0, torch.arange(TASKS)).info["goal"]
ACTIONS = torch.randn(
    TASKS, TRAJECTORIES, CONFIG.horizon, 2, generator=torch.Generator().manual_seed(0)
)


def _batched() -> torch.Tensor:
    out = Navigation(CONFIG).simulate(
        {"goal": GOALS}, lambda obs, t: ACTIONS[:, :, t], TRAJECTORIES, torch.zeros(TASKS)
    )
    return out["rewards"] * out["mask"]


def _per_env(tasks: int = TASKS) -> torch.Tensor:
    rewards = torch.zeros(tasks, TRAJECTORIES, CONFIG.horizon)
    for i in range(tasks):
        for j in range(TRAJECTORIES):
            position, alive = torch.zeros(2), torch.ones(())
            for t in range(CONFIG.horizon):
                position, reward, done = navigation_step(
                    position, GOALS[i], ACTIONS[i, j, t], alive, CONFIG
                )
                rewards[i, j, t] = reward * alive
                alive = alive * (~done).float()
    return rewards


@pytest.mark.parametrize("variant", ["batched", "per-env"])
def test_navigation_env_steps(benchmark: BenchmarkFixture, variant: str) -> None:
    steps = TASKS * TRAJECTORIES * CONFIG.horizon
    if variant == "batched":
        torch.testing.assert_close(_batched()[:2], _per_env(2))
        benchmark.pedantic(_batched, rounds=20, iterations=1, warmup_rounds=2)
    else:
        # A quarter of the tasks: the per-environment loop is slow enough to time on fewer.
        steps //= 4
        benchmark.pedantic(lambda: _per_env(TASKS // 4), rounds=3, iterations=1)
    benchmark.extra_info["env_steps_per_s"] = steps / benchmark.stats.stats.median
