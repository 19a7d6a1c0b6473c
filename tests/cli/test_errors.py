"""Bad input on the command line: one ``error:`` line, a non-zero exit, nothing lost.

Each case here printed a traceback (or silently did the wrong thing) before issue 14.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamlflow.core import rundir
from mamlflow.engine import load_checkpoint

SHORT = (
    "run",
    "--plugin",
    "sinusoid",
    "--set",
    "train.iterations=3",
    "--set",
    "kernel.strategy=batched",
)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mamlflow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (("inner.lr=inf",), "error: inner.lr: Input should be a finite number (from --set)"),
        (("train.time_limit=inf",), "error: train.time_limit: Input should be a finite number"),
        (("outer.lr=nan",), "error: outer.lr: Input should be a finite number"),
        (("outer.betas=[0.9,3]",), "error: outer.betas.1: Input should be less than 1"),
        (("model.hidden=[40,-1]",), "error: model.hidden.1: Input should be greater than 0"),
        (("train.iterations=true",), "error: train.iterations: Input should be a number, not true"),
        (("outer.name=sgd", "outer.nesterov=true"), "error: outer: Value error, nesterov needs"),
    ],
)
def test_values_a_later_library_call_would_reject_are_one_line(
    tmp_path: Path, sets: tuple[str, ...], expected: str
) -> None:
    result = _cli(*SHORT, *(x for s in sets for x in ("--set", s)), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert _one_error_line(result).startswith(expected)
    assert not (tmp_path / "r").exists()


def test_a_seed_beyond_64_bits_is_one_line(tmp_path: Path) -> None:
    result = _cli(*SHORT, "--seed", "99999999999999999999999", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert _one_error_line(result).startswith("error: seed: Input should be less than")


def test_a_model_too_big_for_the_machine_is_one_line(tmp_path: Path) -> None:
    big = ("--set", "model.hidden=[100000000,100000000]")
    result = _cli(*SHORT, *big, "--out", str(tmp_path / "r"))
    assert result.returncode == 1
    assert _one_error_line(result).startswith("error: out of memory in build() of model 'mlp'")


def _read_only_directory() -> Path | None:
    """A directory of a read-only file system on this machine, if there is one."""
    for candidate in ("/proc/sys", "/sys/fs", "/usr/share"):
        path = Path(candidate)
        if path.is_dir() and not os.access(path, os.W_OK):
            return path
    return None


@pytest.mark.parametrize("place", ["a file", "under a file", "read-only"])
def test_an_out_that_cannot_hold_a_run_is_one_line(tmp_path: Path, place: str) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    read_only = _read_only_directory()
    if place == "read-only" and read_only is None:
        read_only = Path("/")  # as root everywhere is writable: then / must at least work
    out = {
        "a file": a_file,
        "under a file": a_file / "run",
        "read-only": (read_only or tmp_path) / "mamlflow-run",
    }[place]
    result = _cli(*SHORT, "--out", str(out))
    if place == "read-only" and _read_only_directory() is None:
        assert result.returncode == 0, result.stderr  # nothing read-only to try here
        return
    assert result.returncode == 1
    line = _one_error_line(result)
    assert "choose another run directory" in line or "choose a run directory you can" in line
    assert a_file.read_text() == "mine"


def test_resume_with_another_out_is_refused(tmp_path: Path) -> None:
    assert _cli(*SHORT, "--out", str(tmp_path / "a")).returncode == 0
    result = _cli("run", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert "continues that run in its own directory: drop --out" in _one_error_line(result)


def test_garbage_in_metrics_does_not_stop_a_resume(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert _cli(*SHORT, "--out", str(run), "--set", "train.log_every=1").returncode == 0
    with (run / rundir.METRICS).open("ab") as f:
        f.write(bytes(range(256)) * 4 + b"\n")
    result = _cli("run", "--resume", str(run), "--set", "train.iterations=5")
    assert result.returncode == 0, result.stderr
    lines = (run / rundir.METRICS).read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4, 5]


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_143(tmp_path: Path) -> None:
    run = tmp_path / "r"
    env = {**os.environ, "MAMLFLOW_AUTOLOAD_PLUGINS": "0", "OMP_NUM_THREADS": "1"}
    args = ["--plugin", "sinusoid", "--set", "kernel.strategy=batched", "--out", str(run)]
    process = subprocess.Popen(
        [sys.executable, "-m", "mamlflow", "run", *args, "--set", "train.iterations=1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (run / rundir.METRICS).is_file() or not (run / rundir.METRICS).read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    checkpoint = load_checkpoint(run)
    assert checkpoint.iteration > 0 and not checkpoint.finished
    assert "terminated" in out and "Traceback" not in err


def test_evaluating_learned_rates_beyond_their_steps_warns(tmp_path: Path) -> None:
    run = tmp_path / "r"
    metasgd = ("--set", "algorithm.name=metasgd")
    assert _cli(*SHORT, *metasgd, "--out", str(run)).returncode == 0
    result = _cli(
        "eval", str(run), "--shots", "5", "--steps", "3", "--tasks", "10", "--json", "--no-plots"
    )
    assert result.returncode == 0
    assert "warning: metasgd learned its per-parameter inner rates for 1 step(s)" in result.stderr
    assert json.loads(result.stdout)["steps"] == [0, 1, 2, 3]
