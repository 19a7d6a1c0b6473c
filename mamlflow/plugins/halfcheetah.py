"""HalfCheetah goal velocity and goal direction (the paper's section 5.3) and their presets.

Both families run gymnasium's ``HalfCheetah-v5`` (MuJoCo) and compute the reward themselves, as
the authors' rllab environments do: ``halfcheetah-vel`` pays ``-|v_x - v_goal|`` for a goal
velocity drawn from U[0, 2], ``halfcheetah-dir`` pays ``direction · v_x`` for a direction of −1
or +1 with probability 1/2 each; both subtract ``ctrl_cost · ‖a‖²`` of the clipped action with
the paper's 0.05 (rllab's ``1e-1 * 0.5``; gymnasium's own reward uses 0.1). Episodes never end
early: every trajectory runs exactly ``horizon`` steps.

gymnasium and mujoco are the ``mujoco`` extra: they are imported when a family is built, never
when the plugin loads, so listing plugins works without them.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from mamlflow.core import (
    SPLITS,
    ConfigError,
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

from ._envblocks import EnvBlocks, EnvsHere, make_env

__all__ = [
    "HALFCHEETAH_PRESETS",
    "EnvBlocks",
    "EnvsHere",
    "HalfCheetahConfig",
    "HalfCheetahDir",
    "HalfCheetahVel",
    "HalfCheetahVelConfig",
    "env_seed",
    "make_env",
]

_GOAL_STREAM = 0xC4EE
_RESET_STREAM = 0x2E5E
_ENV_ID = "HalfCheetah-v5"
_X_VELOCITY = 8
"""Index of the root's x velocity (``qvel[0]``) in v5's observation, which drops ``qpos[0]``."""
_INSTALL = 'pip install "mamlflow[mujoco]"'
_DT = 0.05
"""Seconds per environment step: HalfCheetah-v5's frame skip 5 × MuJoCo's 0.01 s time step."""


class HalfCheetahConfig(RolloutConfig):
    horizon: int = Field(200, ge=1, description="time steps per trajectory (the paper's 200)")
    ctrl_cost: float = Field(
        0.05, ge=0, description="weight of ‖a‖² in the reward (the paper's; gymnasium's v5: 0.1)"
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="processes that step the environments (1: this process); auto: one per "
        "usable core, shared among torchrun's local processes. Trajectories are the same for "
        "any count",
    )

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "auto" and (isinstance(value, bool) or value < 1):
            raise ValueError(f"workers must be auto or a count ≥ 1, got {value!r}")
        return value


class HalfCheetahVelConfig(HalfCheetahConfig):
    velocity: tuple[float, float] = Field(
        (0.0, 2.0), description="goal velocities are uniform in [low, high]"
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> HalfCheetahVelConfig:
        low, high = self.velocity
        if not low <= high:
            raise ValueError(f"velocity must be [low, high] with low <= high, got {[low, high]}")
        return self


def env_seed(key: int, trajectory: int) -> int:
    """The seed environment ``trajectory`` of a task with rollout key ``key`` is reset with.

    Each (task, trajectory) starts from its own keyed initial state, so the same keys give the
    same rollouts in any process and on a resume.
    """
    return rng.derive_key(key, _RESET_STREAM, trajectory) & ((1 << 63) - 1)


def _import_gymnasium(family: str) -> Any:
    """gymnasium with MuJoCo, or a ConfigError naming the extra to install."""
    try:
        import gymnasium
        import mujoco  # noqa: F401  (gymnasium imports it only when an env is made)
    except ImportError as exc:
        raise ConfigError(
            [f"task.name: {family} needs gymnasium with MuJoCo ({exc}): {_INSTALL}"]
        ) from exc
    return gymnasium


class _HalfCheetah(RolloutTaskFamily):
    """What both families share: the environments and the rollout; only the reward differs."""

    obs_dim: ClassVar[int] = 17
    act_dim: ClassVar[int] = 6
    config: HalfCheetahConfig

    def __init__(self, config: HalfCheetahConfig) -> None:
        super().__init__(config)
        self._gym = _import_gymnasium(self.name)
        self._envs: EnvsHere | EnvBlocks | None = None
        self._bounds: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))

    @abstractmethod
    def _task_reward(self, info: dict[str, Tensor], x_velocity: Tensor) -> Tensor:
        """The task's reward term for ``x_velocity (tasks, traj, T)``, before the control cost."""

    def _environments(self) -> EnvsHere | EnvBlocks:
        """This process's environments, or ``task.workers`` processes' (kept between calls)."""
        if self._envs is None:
            probe = make_env(_ENV_ID, self.config.horizon)
            act = probe.action_space
            self._bounds = (act.low, act.high)
            workers = self.workers
            if workers == 1:
                self._envs = EnvsHere(_ENV_ID, self.config.horizon, keep=probe)
            else:
                spaces = (probe.observation_space.shape[0], act.low, act.high)
                self._envs = EnvBlocks(_ENV_ID, self.config.horizon, workers, spaces)
        return self._envs

    @property
    def workers(self) -> int:
        """Processes that step the environments: ``task.workers``, or one per usable core,
        shared among the local processes of a torchrun launch."""
        if self.config.workers != "auto":
            return self.config.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    def simulate(
        self, info: dict[str, Tensor], act: Policy, trajectories: int, keys: Tensor
    ) -> dict[str, Tensor]:
        envs = self._environments()
        if isinstance(envs, EnvBlocks):
            with _one_torch_thread():
                return self._rollout(envs, info, act, trajectories, keys)
        return self._rollout(envs, info, act, trajectories, keys)

    def _rollout(
        self,
        envs: EnvsHere | EnvBlocks,
        info: dict[str, Tensor],
        act: Policy,
        trajectories: int,
        keys: Tensor,
    ) -> dict[str, Tensor]:
        cfg = self.config
        ref = next(iter(info.values()))
        tasks, dtype, device = ref.shape[0], ref.dtype, ref.device
        seeds = [env_seed(key, j) for key in keys.tolist() for j in range(trajectories)]
        observation = envs.reset(seeds)
        low, high = self._bounds
        obs, actions, velocities, clipped = [], [], [], []
        for t in range(cfg.horizon):
            o = torch.as_tensor(observation, dtype=dtype, device=device)
            o = o.view(tasks, trajectories, self.obs_dim)
            a = act(o, t)
            a_np = a.detach().cpu().double().numpy().reshape(tasks * trajectories, self.act_dim)
            a_np = np.clip(a_np, low, high)
            observation, x_velocity = envs.step(a_np)
            obs.append(o)
            actions.append(a)
            velocities.append(x_velocity)
            clipped.append(a_np)
        shape = (tasks, trajectories, cfg.horizon)
        x_velocity = torch.as_tensor(np.stack(velocities, 1)).view(shape)
        control = torch.as_tensor(np.square(np.stack(clipped, 1)).sum(-1)).view(shape)
        task_info = {k: v.detach().cpu().double() for k, v in info.items()}
        rewards = self._task_reward(task_info, x_velocity) - cfg.ctrl_cost * control
        return {
            "obs": torch.stack(obs, 2),
            "actions": torch.stack(actions, 2),
            "rewards": rewards.to(dtype=dtype, device=device),
            "mask": torch.ones(shape, dtype=dtype, device=device),
        }

    def plot_examples(self, model, before, after, batch, path) -> bool:
        """Forward velocity over an episode for a few tasks, with θ and with the adapted θ′."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        few, data = self.example_rollouts(model, before, after, batch)
        shown = few.num_tasks
        speeds = {
            label: d["obs"][..., _X_VELOCITY].double().mean(1).cpu() for label, d in data.items()
        }
        fig, axes = plt.subplots(1, shown, figsize=(3.2 * shown, 3.0), squeeze=False)
        time = np.arange(self.config.horizon) * _DT
        for i, ax in enumerate(axes[0]):
            for label, color in (("before", "C0"), ("after", "C1")):
                ax.plot(time, speeds[label][i], color=color, label=f"{label} adaptation")
            title, goal = self._goal(few.info, i)
            if goal is not None:
                ax.axhline(goal, color="r", ls="--", label="goal")
            ax.axhline(0.0, color="k", lw=0.5)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("time (s)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("forward velocity")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{self.name}: forward velocity before and after adaptation")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True

    @abstractmethod
    def _goal(self, info: dict[str, Tensor], task: int) -> tuple[str, float | None]:
        """Task ``task``'s goal as the plot's panel title, and a velocity to draw (if any)."""


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread while environment workers step: between two steps the policy's tiny
    matmuls are all torch does here, and an OpenMP thread waiting for the next parallel region
    spins on a core a worker needs (benchmarks/rl_iteration.py measures the difference)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _uniform_tasks(seed: int, split: Split, iteration: int, task_indices: Tensor) -> Tensor:
    """One U[0, 1) number per task, keyed by its global index (float64)."""
    key = rng.derive_key(seed, _GOAL_STREAM, SPLITS[split], iteration)
    return rng.uniform(key, task_indices, 1, dtype=torch.float64)[:, 0]


class HalfCheetahVel(_HalfCheetah):
    name: ClassVar[str] = "halfcheetah-vel"
    Config: ClassVar[type[RolloutConfig]] = HalfCheetahVelConfig
    description: ClassVar[str] = (
        "HalfCheetah: run at a goal velocity in [0, 2] (meta-RL, MuJoCo; Finn et al. 2017, §5.3)"
    )
    config: HalfCheetahVelConfig

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
        low, high = self.config.velocity
        goal = low + (high - low) * _uniform_tasks(seed, split, iteration, task_indices)
        return TaskBatch({}, {}, task_indices.clone(), {"goal_vel": goal.float()})

    def _task_reward(self, info: dict[str, Tensor], x_velocity: Tensor) -> Tensor:
        return -(x_velocity - info["goal_vel"].view(-1, 1, 1)).abs()

    def _goal(self, info: dict[str, Tensor], task: int) -> tuple[str, float | None]:
        goal = float(info["goal_vel"][task])
        return f"goal velocity {goal:.2f}", goal


class HalfCheetahDir(_HalfCheetah):
    name: ClassVar[str] = "halfcheetah-dir"
    Config: ClassVar[type[RolloutConfig]] = HalfCheetahConfig
    description: ClassVar[str] = (
        "HalfCheetah: run forward or backward (meta-RL, MuJoCo; Finn et al. 2017, §5.3)"
    )

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
        # rllab draws v ~ U[0, 2] and runs backward when v < 1: the same coin flip.
        u = _uniform_tasks(seed, split, iteration, task_indices)
        direction = torch.where(u < 0.5, -1.0, 1.0)
        return TaskBatch({}, {}, task_indices.clone(), {"direction": direction.float()})

    def _task_reward(self, info: dict[str, Tensor], x_velocity: Tensor) -> Tensor:
        return info["direction"].view(-1, 1, 1) * x_velocity

    def _goal(self, info: dict[str, Tensor], task: int) -> tuple[str, float | None]:
        # A direction has no target speed: the title says which way pays.
        forward = float(info["direction"][task]) > 0
        return f"goal: run {'forward' if forward else 'backward'}", None


def _preset(family: type[_HalfCheetah], description: str) -> Preset:
    return Preset(
        family.name,
        description,
        {
            "task": {"name": family.name, "shots": 20, "query": 20, "horizon": 200},
            "model": {"name": "gaussian-mlp"},
            "algorithm": {"name": "maml"},
            "inner": {"steps": 1, "lr": 0.1},
            "outer": {"name": "trpo", "max_kl": 0.01},
            "kernel": {"strategy": "batched"},
            # The paper's cheetah result is the authors' snapshot at iteration 475 of their
            # released script (maml_examples/test_maml_cheetah.py in cbfinn/maml_rl).
            "train": {
                "meta_batch_size": 40,
                "iterations": 500,
                "log_every": 10,
                "checkpoint_every": 25,
            },
            "eval": {"steps": 3, "tasks": 40, "batch_size": 40},
        },
    )


HALFCHEETAH_PRESETS: tuple[Preset, ...] = (
    _preset(
        HalfCheetahVel,
        "HalfCheetah goal velocity, MAML-TRPO as in the paper: 40 tasks × 20 trajectories of "
        "200 steps, inner lr 0.1, max KL 0.01",
    ),
    _preset(
        HalfCheetahDir,
        "HalfCheetah goal direction, MAML-TRPO as in the paper: 40 tasks × 20 trajectories of "
        "200 steps, inner lr 0.1, max KL 0.01",
    ),
)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(HalfCheetahVel)
    register(HalfCheetahDir)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in HALFCHEETAH_PRESETS:
        register(preset)
