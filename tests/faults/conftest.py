"""The uninterrupted reference run every fault test compares its interrupted runs against."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mamlflow.core import rundir
from mamlflow.engine import load_checkpoint

from ._harness import ITERATIONS, Reference, checkpointed_anew, run_args, start, wait_until


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """``metaflow run`` of ``RUN_SETS``, never interrupted, and how long it took to start and
    to train (kill points are drawn over that time)."""
    root = tmp_path_factory.mktemp("reference")
    run_dir = root / "run"
    t0 = time.monotonic()
    process = start(run_args(run_dir), root, "run")
    assert wait_until(checkpointed_anew(run_dir), process), process.stderr()
    started_training = time.monotonic() - t0
    assert process.wait() == 0, process.stderr()
    assert load_checkpoint(run_dir).iteration == ITERATIONS
    records = rundir.read_records(run_dir / rundir.METRICS)
    return Reference(Path(run_dir), started_training, records[-1]["elapsed"])
