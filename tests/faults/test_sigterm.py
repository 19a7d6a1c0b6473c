"""SIGTERM (what schedulers, ``docker stop`` and preemption send) at random points of a run."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mamlflow.engine import load_checkpoint

from ._harness import (
    ITERATIONS,
    Reference,
    assert_continuous,
    assert_same_run,
    checkpointed_anew,
    resume_args,
    run_args,
    start,
    training_in,
    wait_until,
)

SIGNALS = 3
SEED = 143


@pytest.mark.slow
def test_sigterm_at_random_points_checkpoints_exits_143_and_resumes_bitwise(
    reference: Reference, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Each SIGTERM ends its process with 143 after a checkpoint of the iteration it stopped
    at, its metrics complete up to there; the resumed run ends bitwise the uninterrupted one."""
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    stopped_at: list[int | str] = []
    done = 0
    for n in range(SIGNALS):
        args = resume_args(run_dir) if n else run_args(run_dir)
        trained = checkpointed_anew(run_dir)
        process = start(args, tmp_path / "logs", str(n))
        assert wait_until(training_in(run_dir, process.pid), process), process.stderr()
        if n == 0:
            # While it starts (its handler is installed): building the optimizer, choosing and
            # checking the kernel, the first steps.
            time.sleep(rng.uniform(0, 1))
        else:
            # While it trains, at a random point of its share of what is left.
            assert wait_until(trained, process), process.stderr()
            share = reference.training(ITERATIONS - done) / (SIGNALS - n)
            time.sleep(rng.uniform(0, 0.8) * share)
        process.popen.terminate()
        code = process.wait()
        ckpt = load_checkpoint(run_dir)
        if ckpt.finished:  # faster than the reference: the signal came after the last step
            assert code in (0, -signal.SIGTERM), process.stderr()
            stopped_at.append("after the end")
            break
        assert code == 128 + signal.SIGTERM, process.stderr()
        assert "terminated" in process.stdout() and "Traceback" not in process.stderr()
        assert done <= ckpt.iteration < ITERATIONS
        assert_continuous(run_dir, ckpt.iteration)  # logged up to where it stopped, no further
        assert not list(run_dir.glob(".*.tmp"))
        done = ckpt.iteration
        stopped_at.append(done)
    else:
        process = start(resume_args(run_dir), tmp_path / "logs", "last")
        assert process.wait() == 0, process.stderr()
    assert_same_run(run_dir, reference.run_dir)
    print(f"SIGTERM of metaflow run: {SIGNALS} signals, stopped at iterations {stopped_at}")
    record_property("sigterm_signals", SIGNALS)
    record_property("sigterm_stopped_at", stopped_at)
