"""MuJoCo environments stepped in several processes, in blocks (gymnasium's ``AsyncVectorEnv``).

A HalfCheetah rollout steps tasks × trajectories environments at every time step (800 in the
paper's meta-batch). In one process they step one after the other, MuJoCo's physics plus
gymnasium's Python around it, while every other core idles. ``EnvBlocks`` splits them into
``workers`` contiguous blocks; each block is one ``_Block`` environment, a process of
gymnasium's ``AsyncVectorEnv`` (shared memory, no autoreset), that steps its environments in
turn. The blocks step in parallel while the policy waits for their observations.

Every environment is reset with its own seed and stepped with its own action, as in one process:
the trajectories are bitwise the same for any number of workers (``tests/plugins/
test_halfcheetah.py``).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

import numpy as np

__all__ = ["EnvBlocks", "EnvsHere", "make_env", "quiet_mujoco"]


@contextmanager
def quiet_mujoco() -> Iterator[None]:
    """Swallow MuJoCo's deprecation of ``settotalmass``, which v5's model file still uses.

    Recent MuJoCo (4.0 here) prints it and appends it to ``MUJOCO_LOG.TXT`` in the working
    directory for every environment built, hundreds per run; any other MuJoCo warning is
    re-raised as a Python one.
    """
    import mujoco

    previous = mujoco.get_mju_user_warning()
    caught: list[str] = []
    mujoco.set_mju_user_warning(caught.append)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
        for message in caught:
            if "settotalmass" not in message:
                warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=3)


def make_env(env_id: str, horizon: int) -> Any:
    """One environment whose time limit agrees with the horizon (it never ends one early)."""
    import gymnasium

    with quiet_mujoco():
        return gymnasium.make(env_id, max_episode_steps=horizon, disable_env_checker=True)


class _Cheetahs:
    """HalfCheetah-v5 environments, reset through gymnasium and stepped as its ``step`` does.

    ``HalfCheetahEnv.step`` sets the controls, runs ``frame_skip`` MuJoCo steps and reads the
    state; around that, gymnasium spends more time than the physics (wrappers, the reward and
    info dicts it builds, the control check). Stepping the MuJoCo data directly gives the same
    state, bit for bit (``tests/plugins/test_halfcheetah.py`` against ``env.step``); the x
    velocity is computed as v5 computes it. Resets go through gymnasium: its seeding and noise.
    """

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)
        raw = [env.unwrapped for env in self.envs]
        first = raw[0] if raw else None
        if first is not None and not (
            type(first).__name__ == "HalfCheetahEnv"
            and first._exclude_current_positions_from_observation
        ):
            raise TypeError(f"{type(first).__name__} is not HalfCheetah-v5 as mamlflow builds it")
        self._steps = [(env.model, env.data, env.frame_skip, env.dt) for env in raw]

    def reset(self, seeds: Sequence[int], out: np.ndarray) -> None:
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            out[i, :-1], _ = env.reset(seed=int(seed))
            out[i, -1] = 0.0

    def step(self, actions: np.ndarray, out: np.ndarray) -> None:
        """Row ``i`` of ``out``: environment ``i``'s observation, then its x velocity."""
        import mujoco

        for i, (model, data, frame_skip, dt) in enumerate(self._steps):
            before = data.qpos[0]
            data.ctrl[:] = actions[i]
            mujoco.mj_step(model, data, nstep=frame_skip)
            row = out[i]
            row[-1] = (data.qpos[0] - before) / dt
            position, velocity = data.qpos[1:], data.qvel
            row[: len(position)] = position
            row[len(position) : -1] = velocity


def _worker(*args: Any) -> None:
    """gymnasium's worker loop, with the signal handling a worker needs.

    A forked worker inherits the training process's handlers: Ctrl-C would make it stop
    "after this step" like the trainer (so it would never exit on the SIGTERM that ends it at
    shutdown, and the parent would wait for it forever). The parent alone handles Ctrl-C and
    closes its workers; a worker ends on SIGTERM.
    """
    import signal

    from gymnasium.vector.async_vector_env import _async_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _async_worker(*args)


def _block_slice(total: int, block: int, blocks: int) -> slice:
    """Block ``block``'s contiguous share of ``total`` environments (sizes differ by ≤ 1)."""
    return slice(total * block // blocks, total * (block + 1) // blocks)


class _Block:
    """``capacity`` environments as one gymnasium environment, living in a worker process.

    Its observation is ``(capacity, obs_dim + 1)``: each environment's observation and, last,
    the x velocity of its latest step (the families' reward needs it; 0 after a reset). Rows
    past the environments this block steps in the current rollout stay 0. The environments are
    built on the first reset, in the worker: gymnasium also builds one block in the main process,
    only to read its spaces.
    """

    def __init__(
        self,
        env_id: str,
        horizon: int,
        capacity: int,
        block: int,
        blocks: int,
        spaces: tuple[int, np.ndarray, np.ndarray],
    ) -> None:
        import gymnasium

        obs_dim, low, high = spaces
        self.env_id, self.horizon, self.capacity, self.obs_dim = env_id, horizon, capacity, obs_dim
        self.envs: list[Any] = []
        self.observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (capacity, obs_dim + 1), np.float64
        )
        self.action_space = gymnasium.spaces.Box(
            np.tile(low.astype(np.float64), (capacity, 1)),
            np.tile(high.astype(np.float64), (capacity, 1)),
            dtype=np.float64,
        )
        self.metadata: dict[str, Any] = {}
        self.render_mode = None
        self.block, self.blocks = block, blocks
        self._cheetahs = _Cheetahs([])
        self._out = np.zeros((capacity, obs_dim + 1))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        seeds: Sequence[int] = (options or {})["seeds"]
        mine = seeds[_block_slice(len(seeds), self.block, self.blocks)]
        if not self.envs:
            self.envs = [make_env(self.env_id, self.horizon) for _ in range(self.capacity)]
        self._cheetahs = _Cheetahs(self.envs[: len(mine)])
        self._out[:] = 0.0
        self._cheetahs.reset(mine, self._out)
        return self._out.copy(), {}

    def step(self, actions: np.ndarray):
        self._cheetahs.step(actions, self._out)
        return self._out.copy(), 0.0, False, False, {}

    def close(self) -> None:
        for env in self.envs:
            env.close()


class EnvsHere:
    """Any number of environments stepped one after the other in this process (one worker).

    Environments are kept: a change of count (the last, smaller evaluation batch) reuses the
    ones already built instead of loading the model again.
    """

    def __init__(self, env_id: str, horizon: int, *, keep: Any = None) -> None:
        """``keep``: an environment already built, the pool's first."""
        self.env_id, self.horizon = env_id, horizon
        self.pool: list[Any] = [] if keep is None else [keep]
        self._cheetahs = _Cheetahs([])
        self._out = np.zeros((0, 0))

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        count = len(seeds)
        while len(self.pool) < count:
            self.pool.append(make_env(self.env_id, self.horizon))
        if len(self._cheetahs.envs) != count:
            self._cheetahs = _Cheetahs(self.pool[:count])
        obs_dim = self.pool[0].observation_space.shape[0]
        self._out = np.zeros((count, obs_dim + 1))
        self._cheetahs.reset(seeds, self._out)
        return self._out[:, :-1].copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._cheetahs.step(actions, self._out)
        return self._out[:, :-1].copy(), self._out[:, -1].copy()

    def close(self) -> None:
        for env in self.pool:
            env.close()
        self.pool = []


class EnvBlocks:
    """``workers`` processes that reset and step any number of environments as one batch."""

    def __init__(
        self, env_id: str, horizon: int, workers: int, spaces: tuple[int, np.ndarray, np.ndarray]
    ) -> None:
        """``spaces``: one environment's observation size and action bounds (low, high)."""
        self.env_id, self.horizon, self.workers, self.spaces = env_id, horizon, workers, spaces
        self._vector: Any = None
        self._capacity = 0
        self._blocks: list[slice] = []
        """Each worker's rows of the current rollout's environments."""

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Reset ``len(seeds)`` environments, each with its seed; their observations."""
        count = len(seeds)
        self._blocks = [_block_slice(count, b, self.workers) for b in range(self.workers)]
        capacity = math.ceil(count / self.workers)
        if capacity > self._capacity:
            self._build(capacity)
        out, _ = self._vector.reset(options={"seeds": [int(s) for s in seeds]})
        return self._gather(out)[:, :-1]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every environment with its row of ``actions``: observations and x velocities."""
        padded = np.zeros((self.workers, self._capacity, actions.shape[1]))
        for b, rows in enumerate(self._blocks):
            padded[b, : rows.stop - rows.start] = actions[rows]
        out, _, _, _, _ = self._vector.step(padded)
        rows = self._gather(out)
        return rows[:, :-1], rows[:, -1]

    def close(self) -> None:
        if self._vector is not None:
            self._vector.close()
            self._vector = None

    def _gather(self, out: np.ndarray) -> np.ndarray:
        """The workers' rows ``(workers, capacity, …)`` back in environment order."""
        return np.concatenate([out[b, : r.stop - r.start] for b, r in enumerate(self._blocks)])

    def _build(self, capacity: int) -> None:
        import gymnasium

        self.close()
        self._capacity = capacity
        make = [
            partial(_Block, self.env_id, self.horizon, capacity, b, self.workers, self.spaces)
            for b in range(self.workers)
        ]
        # Fork on Linux, as torch's DataLoader does: a spawned worker would import the user's
        # main script again, which runs a script without a main guard a second time. The child
        # only steps MuJoCo: no torch, no imports (the parent already imported what it needs).
        self._vector = gymnasium.vector.AsyncVectorEnv(
            make,
            shared_memory=True,
            context="fork" if sys.platform.startswith("linux") else "spawn",
            worker=_worker,
            autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED,
        )

    def __del__(self) -> None:
        # At interpreter shutdown the daemon workers go with the process anyway.
        with suppress(Exception):
            self.close()
