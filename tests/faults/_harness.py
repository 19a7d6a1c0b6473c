"""What the fault tests share: real ``metaflow`` processes, kill points, and run comparisons.

Every process gets one thread and no third-party plugins, so a run is cheap and computes
bitwise the same numbers however often it is interrupted and resumed. Output goes to files,
never to pipes: a process the test is not reading from must not block on a full pipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mamlflow.cli import main
from mamlflow.core import rundir
from mamlflow.engine import RUN_LOCK, load_checkpoint

ENV = {
    **os.environ,
    "MAMLFLOW_AUTOLOAD_PLUGINS": "0",
    "OMP_NUM_THREADS": "1",
    "MAMLFLOW_THREADS": "1",
}
"""A child's environment: built-in plugins only, one thread (cheap, and bitwise repeatable)."""

ITERATIONS = 300
RUN_SETS = (
    "kernel.strategy=batched",
    f"train.iterations={ITERATIONS}",
    "train.checkpoint_every=1",  # a checkpoint write every step: kills often land inside one
    "train.log_every=1",  # one metrics record per step: continuity is checkable
)
"""The run every kill, signal and full disk interrupts, and its uninterrupted reference."""

TIMEOUT_S = 180
POLL_S = 0.0002


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def run_args(run_dir: Path, *extra_sets: str) -> list[str]:
    return ["run", "--plugin", "sinusoid", "--out", str(run_dir), *sets(*RUN_SETS, *extra_sets)]


def resume_args(run_dir: Path) -> list[str]:
    return ["run", "--resume", str(run_dir)]


@dataclass
class Process:
    """A ``metaflow`` child whose stdout and stderr go to files."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"metaflow did not end in {timeout} s: {self.stderr()}") from None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def start(args: Sequence[str], logs: Path, name: str) -> Process:
    """``python -m mamlflow ARGS`` in the background; its output in ``logs/name.{out,err}``."""
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-m", "mamlflow", *args], stdout=stdout, stderr=stderr, env=ENV
        )
    return Process(popen, out, err)


def wait_until(condition: Callable[[], bool], process: Process, timeout: float = TIMEOUT_S) -> bool:
    """Poll ``condition`` until it holds (True) or the process has ended (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not process.running():
            return condition()
        if time.monotonic() > deadline:
            process.popen.kill()
            raise AssertionError(f"gave up waiting after {timeout} s: {process.stderr()}")
        time.sleep(POLL_S)
    return True


def temporaries(run_dir: Path, name: str = "") -> set[str]:
    """The ``atomic_write`` temporaries in ``run_dir`` (of ``name`` only, when given)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return set()
    return {n for n in names if n.startswith(f".{name}") and n.endswith(".tmp")}


def lock_holder(run_dir: Path) -> str:
    try:
        return (run_dir / RUN_LOCK).read_text()
    except FileNotFoundError:
        return ""


def training_in(run_dir: Path, pid: int) -> Callable[[], bool]:
    """Whether process ``pid`` holds ``run_dir``'s lock to train (it is inside ``fit``)."""
    return lambda: lock_holder(run_dir).startswith(f"{pid} (training)")


def checkpointed_anew(run_dir: Path) -> Callable[[], bool]:
    """Whether a checkpoint was written in ``run_dir`` since this was called (each one is a
    new file, renamed over the last)."""

    def inode() -> int | None:
        try:
            return (run_dir / rundir.CHECKPOINT).stat().st_ino
        except FileNotFoundError:
            return None

    before = inode()
    return lambda: inode() not in (before, None)


def logged(run_dir: Path) -> list[tuple[int, float]]:
    """(iteration, meta-loss) of every metrics record, in file order."""
    return [(r["iteration"], r["meta_loss"]) for r in rundir.read_records(run_dir / rundir.METRICS)]


def assert_continuous(run_dir: Path, last: int) -> None:
    """One metrics record per iteration 1..last, in order, none twice (``log_every=1``)."""
    iterations = [i for i, _ in logged(run_dir)]
    assert iterations == list(range(1, last + 1)), f"metrics not continuous: {iterations}"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bitwise the same final state (θ, φ, optimizer) and the same logged meta-losses."""
    got, want = load_checkpoint(run_dir), load_checkpoint(reference)
    assert (got.iteration, got.finished) == (want.iteration, True)
    _assert_equal(got.params, want.params, "params")
    _assert_equal(got.learnables, want.learnables, "learnables")
    _assert_equal(got.optimizer, want.optimizer, "optimizer")
    assert_continuous(run_dir, want.iteration)
    assert logged(run_dir) == logged(reference)  # every step's meta-loss, bit for bit


def _assert_equal(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, where
        assert torch.equal(got, want), f"{where} differs"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_equal(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_equal(a, b, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def strict_load(data: bytes) -> Any:
    """``json.loads`` that rejects what strict parsers reject (NaN, Infinity)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(data, parse_constant=refuse)


def metaflow_here(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    """``metaflow ARGS`` in this process: its exit code and what it printed on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def one_error_line(process_stderr: str) -> str:
    """The one line a failed command printed on stderr (asserting there is exactly one)."""
    lines = process_stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), process_stderr
    return lines[0]


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run, and how long its process took to start training and to train."""

    run_dir: Path
    started_training_s: float
    """Seconds from the process's start to its first checkpoint."""
    training_s: float
    """Seconds of training (the last metrics record's ``elapsed``)."""

    def training(self, remaining: int) -> float:
        """About how long ``remaining`` iterations train."""
        return self.training_s * remaining / ITERATIONS

    def window(self, remaining: int) -> float:
        """How long a process with ``remaining`` iterations to go takes to train them all."""
        return self.started_training_s + self.training(remaining)
