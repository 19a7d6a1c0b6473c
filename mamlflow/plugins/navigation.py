"""2D navigation (the paper's section 5.3) and its ``navigation`` preset.

A point agent starts at the origin and must reach a goal drawn uniformly from [−0.5, 0.5]²; each
action moves it by at most 0.1 per axis (the policy acts in [−1, 1], scaled and clipped to ±0.1,
as rllab's ``normalize`` wrapper did in the authors' experiments); the reward is minus the
distance to the goal (``reward=squared``: minus its square, as the paper's text says), and an
episode ends when the agent is within 0.01 of the goal on both axes (as in the authors' point
environment) or after 100 steps. All tasks' and trajectories' agents step together as one
tensor: no Python loop over environments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from mamlflow.core import (
    SPLITS,
    Policy,
    Preset,
    RolloutConfig,
    RolloutTaskFamily,
    Split,
    TaskBatch,
    TaskFamily,
    hookimpl,
    rng,
)

__all__ = ["Navigation", "NavigationConfig", "navigation_step"]

_GOAL_STREAM = 0x2D


class NavigationConfig(RolloutConfig):
    goal_range: float = Field(0.5, gt=0, description="goals are uniform in [-r, r]²")
    action_clip: float = Field(0.1, gt=0, description="each move is clipped to ±this per axis")
    normalized_actions: bool = Field(
        True,
        description="the policy acts in [-1, 1] per axis, scaled to ±action_clip (rllab's "
        "normalize wrapper, which the authors' point experiments used); false: the policy's "
        "action is the move itself",
    )
    reward: Literal["distance", "squared"] = Field(
        "distance",
        description="distance: -‖x - goal‖ (what the paper's Table 4 numbers correspond to); "
        "squared: -‖x - goal‖², as the paper's text says",
    )
    success_radius: float = Field(
        0.01, ge=0, description="an episode ends within this of the goal on both axes (0: never)"
    )


def navigation_step(
    position: Tensor, goal: Tensor, action: Tensor, alive: Tensor, config: NavigationConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of every agent: ``(new position, reward, done)``; ``goal`` broadcasts.

    Agents whose episode has ended (``alive`` 0) stay where they are.
    """
    if config.normalized_actions:
        action = action * config.action_clip
    step = action.clamp(-config.action_clip, config.action_clip)
    position = position + step * alive.unsqueeze(-1)
    offset = position - goal
    squared = offset.pow(2).sum(-1)
    reward = -squared if config.reward == "squared" else -squared.sqrt()
    done = (offset.abs() < config.success_radius).all(-1)
    return position, reward, done


class Navigation(RolloutTaskFamily):
    name: ClassVar[str] = "navigation"
    Config: ClassVar[type[RolloutConfig]] = NavigationConfig
    description: ClassVar[str] = "2D point navigation to a goal in [-0.5, 0.5]² (meta-RL)"
    obs_dim: ClassVar[int] = 2
    act_dim: ClassVar[int] = 2
    config: NavigationConfig

    def sample(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        key = rng.derive_key(seed, _GOAL_STREAM, SPLITS[split], iteration)
        r = self.config.goal_range
        goal = rng.uniform(key, task_indices, 2, dtype=torch.float64) * (2 * r) - r
        return TaskBatch({}, {}, task_indices.clone(), {"goal": goal.float()})

    def simulate(
        self, info: dict[str, Tensor], act: Policy, trajectories: int, keys: Tensor
    ) -> dict[str, Tensor]:
        # Every agent starts at the origin: nothing random here, ``keys`` go unused.
        cfg = self.config
        goal = info["goal"].unsqueeze(1)  # (tasks, 1, 2): the same goal for every trajectory
        tasks = goal.shape[0]
        position = torch.zeros(tasks, trajectories, 2, dtype=goal.dtype, device=goal.device)
        alive = torch.ones(tasks, trajectories, dtype=goal.dtype, device=goal.device)
        obs, actions, rewards, masks = [], [], [], []
        for t in range(cfg.horizon):
            action = act(position, t)
            obs.append(position)
            actions.append(action)
            position, reward, done = navigation_step(position, goal, action, alive, cfg)
            rewards.append(reward)
            masks.append(alive)
            alive = alive * (~done).to(alive.dtype)
        return {
            "obs": torch.stack(obs, 2),
            "actions": torch.stack(actions, 2),
            "rewards": torch.stack(rewards, 2),
            "mask": torch.stack(masks, 2),
        }

    def plot_examples(self, model, before, after, batch, path) -> bool:
        """Sampled trajectories of a few goals with θ and with the adapted parameters."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        few, data = self.example_rollouts(model, before, after, batch)
        shown = few.num_tasks
        paths = {label: (d["obs"].cpu(), d["mask"].cpu()) for label, d in data.items()}
        fig, axes = plt.subplots(1, shown, figsize=(3.2 * shown, 3.4), squeeze=False)
        r = self.config.goal_range
        for i, ax in enumerate(axes[0]):
            for label, style in (("before", "C0"), ("after", "C1")):
                obs, mask = paths[label]
                for j in range(obs.shape[1]):
                    valid = int(mask[i, j].sum())
                    xy = obs[i, j, : max(valid, 1)]
                    ax.plot(
                        xy[:, 0],
                        xy[:, 1],
                        color=style,
                        alpha=0.8,
                        label=f"{label} adaptation" if j == 0 else None,
                    )
            g = few.info["goal"][i].cpu()
            ax.plot([0], [0], "ks", markersize=5)
            ax.plot([float(g[0])], [float(g[1])], "r*", markersize=12, label="goal")
            ax.set_xlim(-r - 0.2, r + 0.2)
            ax.set_ylim(-r - 0.2, r + 0.2)
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, loc="lower left")
        fig.suptitle("2D navigation: trajectories before and after adaptation")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True


NAVIGATION_PRESET = Preset(
    "navigation",
    "2D navigation, MAML-TRPO as in the paper: 20 tasks × 20 trajectories, inner lr 0.1, "
    "max KL 0.01, 100 iterations",
    {
        # rllab's sampler, as the authors' test ran it: whole episodes until 4000 steps a task.
        "task": {"name": "navigation", "eval_timesteps": 4000},
        "model": {"name": "gaussian-mlp"},
        "algorithm": {"name": "maml"},
        "inner": {"steps": 1, "lr": 0.1},
        "outer": {"name": "trpo"},
        "kernel": {"strategy": "batched"},
        # 100 iterations, as the authors' point experiment (cbfinn/maml_rl, maml_trpo_point.py).
        # Returns after the later, untrained adaptation steps swing between checkpoints, so
        # validation on held-out goals keeps the best (`metaflow eval RUN --best`).
        "train": {
            "meta_batch_size": 20,
            "iterations": 100,
            "log_every": 10,
            "checkpoint_every": 10,
            "val_every": 10,
            "val_tasks": 40,
        },
        # The authors' test protocol (cbfinn/maml_rl, test_maml_point.py): 40 trajectories
        # per adaptation step, the first step at the trained rate, the later ones at half.
        "eval": {
            "steps": 3,
            "shots": [40],
            "later_steps_lr_scale": 0.5,
            "tasks": 100,
            "batch_size": 50,
        },
    },
)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(Navigation)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    register(NAVIGATION_PRESET)
