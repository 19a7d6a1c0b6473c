"""Small navigation runs shared by the RL tests of several packages (core, engine, plugins)."""

from __future__ import annotations

import pytest
import torch

from mamlflow.core import RunConfig
from mamlflow.engine import Components, PluginHost, Rollouts, build_components, resolve

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
"""The navigation preset, small enough for a test to train and evaluate in seconds."""


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def navigation_config(host: PluginHost, *sets: str) -> RunConfig:
    return resolve(host, preset="navigation", sets=(*SMALL, *sets)).config


def navigation_components(host: PluginHost, *sets: str) -> Components:
    return build_components(navigation_config(host, *sets), host)


def navigation_meta_batch(c: Components, tasks: int = 3):
    """``(rollouts, θ, φ, a collected meta-batch of tasks)`` at iteration 0."""
    params, learnables = c.initial_params()
    rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)
    batch = c.family.sample(0, 0, torch.arange(tasks)).to(c.device, c.dtype)
    return (
        rollouts,
        params,
        learnables,
        rollouts.meta_batch(batch, params, learnables, seed=0, iteration=0),
    )
