"""Several processes, one run: the same training as one process, and failures that end it cleanly.

The multi-process tests start real processes (torchrun's agent, gloo on loopback, free ports via
``--standalone``) and compare with a one-process run of the same config. Each launch costs a few
seconds of interpreter and torch start-up per process, so the runs are tiny: sinusoid, the
``batched`` kernel, 6 to 12 iterations of 5 tasks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mamlflow.cli import main
from mamlflow.core import rundir
from mamlflow.engine import (
    Dist,
    PluginHost,
    Trainer,
    build_components,
    from_env,
    load_checkpoint,
    resolve,
    save_resolved,
    threads_per_process,
)

# Child processes load only the built-in plugins, like this process (see conftest.py).
CHILD_ENV = {**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "0", "PYTHONUNBUFFERED": "1"}
COMMON = [
    "train.meta_batch_size=5",
    "train.log_every=3",
    "kernel.strategy=batched",
]


def _sets(*sets: str) -> list[str]:
    return [arg for s in (*COMMON, *sets) for arg in ("--set", s)]


def _launch(*args: str, cwd: Path | None = None, timeout: float = 240):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        cwd=cwd,
        timeout=timeout,
    )


def _metaflow(*args: str, cwd: Path | None = None):
    """``metaflow ARGS`` in a fresh process (the launcher, which starts the others)."""
    return _launch("-m", "mamlflow", *args, cwd=cwd)


def _torchrun(nproc: int, *args: str, cwd: Path | None = None):
    """``torchrun --standalone --nproc-per-node N -m mamlflow ARGS``: torchrun used directly."""
    return _launch(
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mamlflow",
        *args,
        cwd=cwd,
    )


def _invoke(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    # The CLI adds a log handler on the captured stderr, which is closed after this test.
    logger = logging.getLogger("mamlflow")
    handlers = logger.handlers[:]
    with pytest.raises(SystemExit) as exit_info:
        try:
            main(list(args))
        finally:
            logger.handlers[:] = handlers
    assert exit_info.value.code in (0, None), capsys.readouterr()
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def _one_process(host: PluginHost, run_dir: Path, *sets: str) -> Path:
    """What ``metaflow run`` does in one process: a run directory ``metaflow eval`` reads."""
    resolved = resolve(host, preset="sinusoid", sets=(*COMMON, *sets))
    Trainer(resolved.config, run_dir, host).fit()
    save_resolved(resolved, run_dir / rundir.CONFIG)
    return run_dir


@pytest.fixture(scope="module")
def reference(host: PluginHost, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """One-process runs of 6 and 12 iterations: what every multi-process run must reproduce."""
    root = tmp_path_factory.mktemp("one-process")
    return {n: _one_process(host, root / f"it{n}", f"train.iterations={n}") for n in (6, 12)}


def _assert_same_parameters(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.iteration == cb.iteration
    assert ca.params.keys() == cb.params.keys()
    for k in ca.params:
        assert torch.allclose(ca.params[k], cb.params[k], rtol=1e-5, atol=1e-7), k
    # Adam's moments follow the same gradients: the runs are the same run.
    for i, state in ca.optimizer["state"].items():
        other = cb.optimizer["state"][i]
        assert torch.allclose(state["exp_avg"], other["exp_avg"], rtol=1e-5, atol=1e-9)


def _records(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _logged_iterations(run_dir: Path) -> list[int]:
    return [record["iteration"] for record in _records(run_dir)]


# --- the pieces, in one process ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "world_size", "sizes"),
    [(5, 1, [5]), (6, 2, [3, 3]), (5, 2, [3, 2]), (5, 3, [2, 2, 1]), (2, 3, [1, 1, 0])],
)
def test_shards_are_contiguous_balanced_and_cover_the_meta_batch(
    batch_size: int, world_size: int, sizes: list[int]
) -> None:
    shards = [Dist(rank, world_size).shard(batch_size) for rank in range(world_size)]
    assert [len(s) for s in shards] == sizes
    assert torch.equal(torch.cat(shards), torch.arange(batch_size))


def test_one_process_does_no_collective(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a one-process run called torch.distributed")

    for name in ("all_reduce", "broadcast", "broadcast_object_list", "barrier"):
        monkeypatch.setattr(torch.distributed, name, forbidden)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env("cpu") == Dist()
    _one_process(host, tmp_path, "train.iterations=2")
    assert load_checkpoint(tmp_path).iteration == 2
    assert not torch.distributed.is_initialized()


def test_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAMLFLOW_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert threads_per_process(1) == cores
    assert threads_per_process(cores * 4) == 1
    monkeypatch.setenv("MAMLFLOW_THREADS", "3")
    assert threads_per_process(2) == 3


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_a_kernel_on_an_empty_shard_adds_nothing(host: PluginHost, strategy: str) -> None:
    """A process can get no tasks (more processes than tasks); the trainer then skips the
    kernel, but the kernels' contract holds for an empty shard as well."""
    from mamlflow.engine import build_components
    from mamlflow.kernels import make_meta_step

    components = build_components(resolve(host, preset="sinusoid").config, host)
    params, learnables = components.initial_params()
    batch = components.family.sample(0, 0, torch.arange(0))
    step = make_meta_step(
        components.objective(), components.adapter, steps=1, first_order=False, strategy=strategy
    )
    result = step(params, learnables, batch.support, batch.query, 0.2)
    assert result.loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(params[k])) for k, g in result.grads.items())


def test_nproc_per_node_under_torchrun_is_one_clear_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mamlflow", "run", "--plugin", "sinusoid", "--nproc-per-node", "2"],
        capture_output=True,
        text=True,
        env={**CHILD_ENV, "WORLD_SIZE": "2", "RANK": "0"},
        timeout=120,
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "drop it" in r.stderr


# --- several processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(
    reference: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "two"
    r = _metaflow(
        "run",
        "--plugin",
        "sinusoid",
        "--nproc-per-node",
        "2",
        "--out",
        str(run_dir),
        *_sets("train.iterations=6"),
    )
    assert r.returncode == 0, r.stderr
    # Rank 0 alone reports: one summary, one record per logged iteration.
    assert r.stdout.count("stopped by") == 1
    assert _logged_iterations(run_dir) == _logged_iterations(reference[6]) == [3, 6]
    _assert_same_parameters(run_dir, reference[6])
    # The logged meta-loss is the whole meta-batch's, summed over the processes.
    for a, b in zip(_records(run_dir), _records(reference[6]), strict=True):
        assert math.isclose(a["meta_loss"], b["meta_loss"], rel_tol=1e-5), (a, b)

    def evaluated(path: Path) -> dict[str, object]:
        args = ("eval", str(path), "--shots", "5", "--steps", "2", "--tasks", "50")
        return json.loads(_invoke(capsys, *args, "--json", "--no-plots"))

    two, one = evaluated(run_dir), evaluated(reference[6])
    for a, b in zip([*two["mean"], *two["ci95"]], [*one["mean"], *one["ci95"]], strict=True):
        assert f"{a:.4g}" == f"{b:.4g}" or math.isclose(a, b, rel_tol=1e-4), (two, one)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [5, 2], ids=["uneven", "a-rank-without-tasks"])
def test_three_processes_under_torchrun_match_one(
    host: PluginHost, reference: dict[int, Path], tmp_path: Path, batch_size: int
) -> None:
    """torchrun used directly, without --out: rank 0 names the one run directory."""
    sets = [f"train.meta_batch_size={batch_size}", "train.iterations=6"]
    r = _torchrun(3, "run", "--plugin", "sinusoid", *_sets(*sets), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    expected = reference[6]
    if batch_size != 5:
        expected = _one_process(host, tmp_path / "one", *sets)
    _assert_same_parameters(run_dir, expected)


@pytest.mark.slow
def test_resume_with_another_number_of_processes_continues_the_run(
    host: PluginHost, reference: dict[int, Path], tmp_path: Path
) -> None:
    # 1 → 2: six iterations in one process, six more in two.
    one_then_two = _one_process(host, tmp_path / "one-two", "train.iterations=6")
    r = _metaflow(
        "run", "--resume", str(one_then_two), "--nproc-per-node", "2", "--set",
        "train.iterations=12",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    _assert_same_parameters(one_then_two, reference[12])
    assert _logged_iterations(one_then_two) == [3, 6, 9, 12]

    # 2 → 1: six iterations in two processes, six more in one.
    two_then_one = tmp_path / "two-one"
    r = _metaflow(
        "run", "--plugin", "sinusoid", "--nproc-per-node", "2", "--out", str(two_then_one),
        *_sets("train.iterations=6"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = resolve(host, preset="sinusoid", sets=(*COMMON, "train.iterations=12")).config
    Trainer(config, two_then_one, host, resume=True).fit()
    _assert_same_parameters(two_then_one, reference[12])
    assert _logged_iterations(two_then_one) == [3, 6, 9, 12]


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of the process of ``rank`` that the launcher (torchrun's agent) started."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no rank {rank} among the children of {launcher}")


def _endless_two_process_run(run_dir: Path) -> subprocess.Popen[str]:
    """``--nproc-per-node 2`` with no end in sight, once it has written its first checkpoint."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mamlflow", "run", "--plugin", "sinusoid",
            "--nproc-per-node", "2", "--out", str(run_dir),
            *_sets("train.iterations=10000000", "train.checkpoint_every=10"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError(f"the run never wrote a checkpoint: {proc.communicate()}")
        time.sleep(0.2)
    return proc


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_one_line_and_an_intact_checkpoint(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    proc = _endless_two_process_run(run_dir)
    try:
        victim = _worker_of_rank(proc.pid, 1)
        survivor = _worker_of_rank(proc.pid, 0)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=90)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 was killed by SIGKILL"), err
    assert f"--resume {run_dir}" in last
    assert "Traceback" not in err, err
    assert not Path(f"/proc/{survivor}").exists() or _is_zombie(survivor)
    ckpt = load_checkpoint(run_dir)  # complete and readable: written atomically
    assert ckpt.iteration >= 10 and ckpt.iteration % 10 == 0 and not ckpt.finished


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_ctrl_c_stops_every_process_on_the_same_iteration(host: PluginHost, tmp_path: Path) -> None:
    """torchrun passes Ctrl-C on to each process; they vote in the step's all_reduce, so none
    is left waiting in a collective the others never join, and the checkpoint is the state of
    one process stopped at that iteration."""
    run_dir = tmp_path / "run"
    proc = _endless_two_process_run(run_dir)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)  # a process left in an all_reduce hangs here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert out.count("stopped by") == 1 and "interrupted" in out, out
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT)"), err
    ckpt = load_checkpoint(run_dir)
    assert 10 <= ckpt.iteration < 10_000_000 and not ckpt.finished
    assert _logged_iterations(run_dir)[-1] <= ckpt.iteration
    same = _one_process(host, tmp_path / "one", f"train.iterations={ckpt.iteration}")
    _assert_same_parameters(run_dir, same)


@pytest.mark.slow
def test_trpo_on_navigation_under_three_processes_matches_one(
    host: PluginHost, tmp_path: Path
) -> None:
    """Rollouts shard like sampling; TRPO's products and line search are summed over ranks.

    The collected data, returns and meta-gradient agree to float64 rounding. Conjugate gradient
    on the nearly singular KL Hessian of a tiny policy amplifies that rounding (1e-16 in the
    gradient became 1e-6 in the solution and 5e-4 in its curvature when this was written), so
    the step is compared at 1e-3: a missing sum over ranks would be off by a factor of ~3.
    """
    sets = [
        "model.hidden=[16,16]",
        "task.horizon=15",
        "task.shots=4",
        "task.query=3",
        "train.meta_batch_size=5",  # 2 + 2 + 1 tasks: uneven shards
        "train.iterations=1",
        "train.log_every=1",
        "kernel.dtype=float64",
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    r = _torchrun(3, "run", "--plugin", "navigation", *args, "--out", str(tmp_path / "three"))
    assert r.returncode == 0, r.stderr
    resolved = resolve(host, preset="navigation", sets=sets)
    Trainer(resolved.config, tmp_path / "one", host).fit()
    ca, cb = load_checkpoint(tmp_path / "three"), load_checkpoint(tmp_path / "one")
    initial = build_components(resolved.config, host).initial_params()[0]
    assert ca.iteration == cb.iteration == 1
    step_a = torch.cat([(ca.params[k] - initial[k]).flatten() for k in initial])
    step_b = torch.cat([(cb.params[k] - initial[k]).flatten() for k in initial])
    assert float((step_a - step_b).norm()) <= 1e-3 * float(step_b.norm())
    ((a,), (b,)) = _records(tmp_path / "three"), _records(tmp_path / "one")
    for key in ("return_before", "return_after"):
        assert math.isclose(a[key], b[key], rel_tol=1e-12), (key, a, b)
    assert a["outer_line_search"] == b["outer_line_search"] >= 1
    for key in ("outer_kl", "outer_loss"):
        assert math.isclose(a[key], b[key], rel_tol=1e-3), (key, a, b)
