"""Two processes, one run directory: one trains, the other is refused with the holder's PID."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mamlflow.core import CheckpointError, rundir
from mamlflow.engine import PluginHost, Trainer, load_checkpoint, resolve

from ._harness import (
    TIMEOUT_S,
    Process,
    Reference,
    assert_continuous,
    logged,
    metaflow_here,
    one_error_line,
    resume_args,
    run_args,
    start,
    training_in,
    wait_until,
)

ATTEMPTS = 5
ENDLESS = "train.iterations=10000000"
"""The runs race for a directory and the winner trains until the test has seen the loser (and
a ``--resume``) refused, then stops it with SIGTERM: no timing decides the outcome."""


@pytest.mark.slow
def test_two_runs_started_together_one_trains_and_the_other_is_refused(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    refused: Counter[str] = Counter()
    logs = tmp_path / "logs"
    stopping: list[tuple[Process, Process, Path]] = []  # (winner, loser, run dir) of each attempt
    for n in range(ATTEMPTS):
        run_dir = tmp_path / f"run{n}"
        pair = [start(run_args(run_dir, ENDLESS), logs, f"{n}{side}") for side in "ab"]
        if stopping:
            _check_stopped(*stopping[-1])  # the last winner stopped while these two started
        deadline = time.monotonic() + TIMEOUT_S
        while not any(p.running() and training_in(run_dir, p.pid)() for p in pair):
            assert any(p.running() for p in pair), [p.stderr() for p in pair]
            assert time.monotonic() < deadline
            time.sleep(0.001)
        (winner,) = [p for p in pair if training_in(run_dir, p.pid)()]
        (loser,) = [p for p in pair if p is not winner]
        wait_until(lambda p=loser: "error:" in p.stderr(), loser)
        line = one_error_line(loser.stderr())
        if line.startswith(f"error: {run_dir} already holds a run; "):
            # It checked the lock before the winner took it, and the directory after the
            # winner's first checkpoint: refused all the same, by what it found.
            refused["by the winner's checkpoint"] += 1
        else:
            in_use = re.escape(f"{run_dir} is in use by another mamlflow process (PID ")
            holder = re.search(rf"{in_use}(\d+) \((\w+)\)\)", line)
            assert holder is not None and int(holder[1]) == winner.pid, line
            refused[f"by the lock, while the winner was {holder[2]}"] += 1
        if n == 0:
            # --resume of a directory being trained is refused as well.
            resume = start(resume_args(run_dir), logs, "resume")
            assert resume.wait() != 0
            line = one_error_line(resume.stderr())
            assert f"in use by another mamlflow process (PID {winner.pid} (training))" in line
        assert wait_until(lambda d=run_dir: bool(logged(d)), winner), winner.stderr()
        winner.popen.terminate()
        stopping.append((winner, loser, run_dir))
    _check_stopped(*stopping[-1])
    summary = ", ".join(f"{v} refused {k}" for k, v in sorted(refused.items()))
    print(f"concurrent runs: {ATTEMPTS} attempts of two at once, and 1 --resume: {summary}")
    record_property("concurrent_attempts", ATTEMPTS)
    record_property("concurrent_refusals", dict(refused))


def _check_stopped(winner: Process, loser: Process, run_dir: Path) -> None:
    """The loser failed; the winner, sent SIGTERM, left its run intact."""
    assert loser.wait() != 0
    assert winner.wait() == 143, winner.stderr()
    ckpt = load_checkpoint(run_dir)
    assert ckpt.iteration > 0 and not ckpt.finished
    assert_continuous(run_dir, ckpt.iteration)


def test_a_run_that_ended_while_a_second_was_starting_is_not_overwritten(tmp_path: Path) -> None:
    """Two ``metaflow run --out X`` at once, where the first ends before the second reaches
    ``fit``: both passed the "already holds a run" check while X was empty; the lock alone
    cannot tell the second that X now holds a finished run."""
    host = PluginHost(autoload=False)

    def config(seed: int):
        sets = ("kernel.strategy=batched", "train.iterations=5", "train.log_every=1")
        return resolve(host, preset="sinusoid", sets=(*sets, f"seed={seed}"))

    second = Trainer(config(2), tmp_path, host)  # checked: X is free
    Trainer(config(1), tmp_path, host).fit()  # meanwhile the first one trains and ends
    kept = {name: (tmp_path / name).read_bytes() for name in (rundir.CHECKPOINT, rundir.METRICS)}
    with pytest.raises(CheckpointError, match="already holds a run"):
        second.fit()
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


def test_a_run_into_a_directory_being_trained_names_the_trainer(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)  # checkpointed, as a run in training is
    code = (
        "import sys\nfrom pathlib import Path\nfrom mamlflow.engine import run_lock\n"
        f"with run_lock(Path({str(run_dir)!r}), 'training'):\n"
        "    print('held', flush=True)\n    sys.stdin.readline()\n"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout is not None and trainer.stdout.readline().strip() == "held"
        exit_code, err = metaflow_here(capsys, run_args(run_dir))
    finally:
        trainer.communicate("\n", timeout=60)
    assert exit_code != 0
    assert f"(PID {trainer.pid} (training))" in one_error_line(err)
