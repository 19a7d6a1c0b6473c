"""HalfCheetah families: keyed tasks, the vector env against one env by hand, training."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")


from mamlflow.engine import PluginHost, Trainer, evaluate, load_checkpoint, resolve
from mamlflow.plugins.halfcheetah import (
    EnvBlocks,
    HalfCheetahConfig,
    HalfCheetahDir,
    HalfCheetahVel,
    HalfCheetahVelConfig,
    env_seed,
    make_env,
)

HORIZON = 30


def _vel(**options: object) -> HalfCheetahVel:
    options.setdefault("workers", 1)
    return HalfCheetahVel(HalfCheetahVelConfig(name="halfcheetah-vel", **options))


def _dir(**options: object) -> HalfCheetahDir:
    options.setdefault("workers", 1)
    return HalfCheetahDir(HalfCheetahConfig(name="halfcheetah-dir", **options))


def _policy(obs: Tensor, t: int) -> Tensor:
    """Deterministic and large enough that some actions fall outside [-1, 1]."""
    weight = torch.linspace(-1.0, 1.0, 17 * 6, dtype=obs.dtype).view(17, 6)
    return 2.0 * torch.tanh(obs @ weight + 0.1 * t)


@pytest.mark.parametrize("family", [_vel, _dir])
def test_sample_is_keyed_by_seed_iteration_split_and_global_index(family) -> None:
    fam = family()
    key = "goal_vel" if fam.name == "halfcheetah-vel" else "direction"
    index = torch.arange(16)
    batch = fam.sample(3, 7, index)
    assert batch.support == {} and batch.query == {}
    assert torch.equal(batch.task_index, index)
    assert torch.equal(batch.info[key], fam.sample(3, 7, index).info[key])
    # Task i is the same however the meta-batch is cut or ordered.
    picked = torch.tensor([15, 2, 9])
    assert torch.equal(fam.sample(3, 7, picked).info[key], batch.info[key][picked])
    for other in (fam.sample(4, 7, index), fam.sample(3, 8, index)):
        assert not torch.equal(other.info[key], batch.info[key])
    splits = [fam.sample(3, 7, index, split=s).info[key] for s in ("train", "val", "test")]
    assert not torch.equal(splits[0], splits[1]) and not torch.equal(splits[1], splits[2])


def test_goal_velocities_and_directions_follow_the_paper() -> None:
    index = torch.arange(2000)
    goal = _vel().sample(0, 0, index).info["goal_vel"]
    assert float(goal.min()) >= 0.0 and float(goal.max()) < 2.0
    assert abs(float(goal.mean()) - 1.0) < 0.05
    assert torch.equal(
        _vel(velocity=(0.5, 0.5)).sample(0, 0, index).info["goal_vel"], torch.full((2000,), 0.5)
    )
    direction = _dir().sample(0, 0, index).info["direction"]
    assert set(direction.tolist()) == {-1.0, 1.0}
    assert abs(float(direction.mean())) < 0.06  # each with probability 1/2


def test_simulate_matches_one_gymnasium_env_stepped_by_hand() -> None:
    """The vector env's reference twin: a single HalfCheetah-v5, same seed, same actions."""
    fam = _dir(horizon=HORIZON)
    info = {"direction": torch.tensor([-1.0, 1.0])}
    keys = torch.tensor([11, 12])
    data = fam.simulate(info, _policy, 2, keys)
    for name, width in (("obs", (17,)), ("actions", (6,)), ("rewards", ()), ("mask", ())):
        assert data[name].shape == (2, 2, HORIZON, *width), name
        assert data[name].dtype == torch.float32, name
    assert torch.equal(data["mask"], torch.ones(2, 2, HORIZON))
    # The trajectory keeps what the policy sampled (its log-prob is of those), not the clip.
    assert float(data["actions"].abs().max()) > 1.0

    env = make_env("HalfCheetah-v5", HORIZON)  # quiet: no MUJOCO_LOG.TXT in the working dir
    task, trajectory = 1, 1
    observation, _ = env.reset(seed=env_seed(int(keys[task]), trajectory))
    for t in range(HORIZON):
        obs = torch.as_tensor(observation, dtype=torch.float32)
        assert torch.equal(obs, data["obs"][task, trajectory, t]), t
        # Batched and single matmuls may round differently: step with what the policy chose.
        action = data["actions"][task, trajectory, t]
        torch.testing.assert_close(action, _policy(obs.view(1, 1, 17), t).view(6))
        clipped = action.double().clamp(-1.0, 1.0).numpy()
        observation, gym_reward, terminated, truncated, step_info = env.step(clipped)
        assert not terminated and truncated == (t == HORIZON - 1)
        control = float((clipped**2).sum())
        expected = step_info["x_velocity"] - 0.05 * control
        assert float(data["rewards"][task, trajectory, t]) == pytest.approx(expected, abs=1e-5)
        # The paper's control cost is half of gymnasium's v5 reward's.
        assert expected - gym_reward == pytest.approx(0.05 * control, abs=1e-9)
    env.close()


def test_velocity_reward_and_control_cost_follow_the_formula() -> None:
    """-|v - goal| - c‖clip(a)‖², with the velocity read off the direction family's reward."""
    info_vel, info_dir = {"goal_vel": torch.tensor([0.7])}, {"direction": torch.tensor([1.0])}
    keys = torch.tensor([5])
    free = _dir(horizon=HORIZON, ctrl_cost=0.0).simulate(info_dir, _policy, 2, keys)
    velocity = free["rewards"].double()  # direction +1, no control cost: exactly v_x
    vel = _vel(horizon=HORIZON).simulate(info_vel, _policy, 2, keys)
    assert torch.equal(vel["obs"], free["obs"])
    control = (vel["actions"].double().clamp(-1, 1) ** 2).sum(-1)
    expected = -(velocity - 0.7).abs() - 0.05 * control
    torch.testing.assert_close(vel["rewards"].double(), expected, atol=1e-5, rtol=0)


def test_simulate_is_deterministic_per_key_and_reuses_its_environments() -> None:
    fam = _vel(horizon=10)
    info = {"goal_vel": torch.tensor([0.5, 1.5, 1.0])}
    keys = torch.tensor([1, 2, 3])
    first = fam.simulate(info, _policy, 2, keys)
    envs = fam._envs
    cheetahs = list(envs._cheetahs.envs)
    again = fam.simulate(info, _policy, 2, keys)
    assert fam._envs is envs and envs._cheetahs.envs == cheetahs  # reset, not rebuilt
    for name in first:
        assert torch.equal(first[name], again[name]), name
    start = first["obs"][:, :, 0]
    assert not torch.equal(start[0, 0], start[0, 1])  # trajectories of a task differ
    assert not torch.equal(start[0, 0], start[1, 0])  # and tasks differ
    moved = fam.simulate(info, _policy, 2, torch.tensor([1, 2, 4]))
    assert torch.equal(moved["obs"][:2], first["obs"][:2])  # each task only by its own key
    assert not torch.equal(moved["obs"][2, :, 0], start[2])
    fewer = fam.simulate({"goal_vel": info["goal_vel"][:1]}, _policy, 2, keys[:1])
    assert len(fam._envs._cheetahs.envs) == 2
    assert torch.equal(fewer["obs"], first["obs"][:1])


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_collect_bitwise_what_one_process_does(workers: int) -> None:
    """Blocks of environments in worker processes: the same trajectories, whatever the count,
    including a count that does not divide the environments and a batch that outgrows them."""
    one, many = _vel(horizon=12), _vel(horizon=12, workers=workers)
    info = {"goal_vel": torch.tensor([0.5, 1.5, 1.0])}
    keys = torch.tensor([1, 2, 3])
    try:
        for tasks, trajectories in ((3, 2), (1, 1), (3, 3)):
            part = {"goal_vel": info["goal_vel"][:tasks]}
            want = one.simulate(part, _policy, trajectories, keys[:tasks])
            got = many.simulate(part, _policy, trajectories, keys[:tasks])
            for name in want:
                assert torch.equal(got[name], want[name]), (tasks, trajectories, name)
        assert isinstance(many._envs, EnvBlocks) and many._envs.workers == workers
    finally:
        many._envs.close()


def test_workers_default_to_the_usable_cores_shared_among_local_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = len(os.sched_getaffinity(0))
    assert _vel(workers="auto").workers == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert _vel(workers="auto").workers == 1
    with pytest.raises(ValueError, match="workers must be auto or a count"):
        _vel(workers=0)


@pytest.mark.parametrize("preset", ["halfcheetah-vel", "halfcheetah-dir"])
def test_presets_are_the_papers(preset: str) -> None:
    cfg = resolve(PluginHost(), preset=preset).config
    assert (cfg.task.name, cfg.task.horizon, cfg.task.ctrl_cost) == (preset, 200, 0.05)
    assert (cfg.task.shots, cfg.task.query, cfg.train.meta_batch_size) == (20, 20, 40)
    assert (cfg.model.name, cfg.algorithm.name, cfg.outer.name) == ("gaussian-mlp", "maml", "trpo")
    assert (cfg.inner.steps, cfg.inner.lr, cfg.outer.max_kl) == (1, 0.1, 0.01)
    assert (cfg.eval.steps, cfg.kernel.strategy) == (3, "batched")


_TINY_SETS = (
    "train.meta_batch_size=2",
    "train.log_every=1",
    "task.shots=2",
    "task.query=2",
    "task.horizon=15",
)


def _tiny(host: PluginHost, iterations: int):
    sets = [*_TINY_SETS, f"train.iterations={iterations}"]
    return resolve(host, preset="halfcheetah-vel", sets=sets).config


def test_training_and_evaluation_run_end_to_end(tmp_path: Path) -> None:
    host = PluginHost()
    trainer = Trainer(_tiny(host, 2), tmp_path / "straight", host)
    summary = trainer.fit()
    assert summary.iteration == 2
    records = [
        json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["iteration"] for r in records] == [1, 2]
    # Rollouts are keyed, not drawn from a generator: a resumed run collects what this one did.
    Trainer(_tiny(host, 1), tmp_path / "resumed", host).fit()
    Trainer(_tiny(host, 2), tmp_path / "resumed", host, resume=True).fit()
    a, b = (load_checkpoint(tmp_path / name) for name in ("straight", "resumed"))
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    theta = {k: v.detach() for k, v in trainer.components.initial_params()[0].items()}
    result, examples = evaluate(
        trainer.components, theta, {}, shots=2, steps=1, tasks=2, batch_size=2
    )
    assert result.metric == "return" and result.steps == [0, 1]
    assert all(torch.isfinite(torch.tensor(result.mean)))
    # Returns of 15 steps: -|v - goal| - cost is at most 0 and, for a slow start, not tiny.
    assert all(-15 * 20 < m < 0 for m in result.mean)
    assert examples.after["mean.0.weight"].shape[0] == 2
    c = trainer.components
    plot = tmp_path / "examples.png"
    assert c.family.plot_examples(c.learner, theta, examples.after, examples.batch, str(plot))
    assert plot.stat().st_size > 0


def test_missing_gymnasium_is_one_line_naming_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['gymnasium'] = None\n"
        "from mamlflow.engine import PluginHost\n"
        "from mamlflow.core import ConfigError\n"
        "host = PluginHost()\n"
        "family = host.task_family('halfcheetah-dir')\n"  # listing works without gymnasium
        "try:\n"
        "    family(family.Config(name='halfcheetah-dir'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith("task.name: halfcheetah-dir needs gymnasium")
    assert lines[0].endswith('pip install "mamlflow[mujoco]"')


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-to-the-group", "sigterm-to-main"])
def test_a_stop_signal_with_environment_workers_stops_cleanly_and_leaves_no_process(
    tmp_path: Path, to_group: bool
) -> None:
    """Ctrl-C reaches the whole process group, workers included; a scheduler's SIGTERM only
    the training process. Either way the run stops after its step with a checkpoint and every
    process exits (a worker that inherited the trainer's "stop after this step" handler would
    ignore the SIGTERM that ends it at shutdown, and the run would hang there)."""
    run_dir = tmp_path / "run"
    sets = [*_TINY_SETS, "train.iterations=100000", "task.workers=2"]
    command = [sys.executable, "-m", "mamlflow", "run", "--plugin", "halfcheetah-vel"]
    command += ["--out", str(run_dir), *[f"--set={s}" for s in sets]]
    proc = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no metrics record within 120 s"
            time.sleep(0.2)
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        # SIGTERM exits as a killed process would, after the checkpoint (TERMINATED_EXIT).
        assert proc.wait(timeout=60) == (0 if to_group else 128 + signal.SIGTERM)
        assert load_checkpoint(run_dir).iteration >= 1
        for _ in range(100):  # the workers end with their parent
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("a process of the run's group outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
