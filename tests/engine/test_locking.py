"""One process per run directory; what a killed run leaves behind is cleaned, never a result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mamlflow.core import CheckpointError, RunDir, rundir
from mamlflow.engine import (
    RUN_LOCK,
    PluginHost,
    Trainer,
    check_unlocked,
    load_checkpoint,
    remove_stale_temporaries,
    resolve,
    run_lock,
)


def _config(*sets: str):
    base = ("train.iterations=4", "kernel.strategy=batched")
    return resolve(PluginHost(autoload=False), preset="sinusoid", sets=(*base, *sets))


@pytest.fixture
def holder(tmp_path: Path):
    """Another process holding ``tmp_path/run``'s lock until told to stop."""
    run_dir = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from mamlflow.engine import run_lock
        with run_lock(Path({str(run_dir)!r}), "training"):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield run_dir, process.pid
    process.communicate("\n", timeout=60)


def test_a_second_process_is_refused_with_the_holders_pid(holder: tuple[Path, int]) -> None:
    run_dir, pid = holder
    expected = rf"^{run_dir} is in use by another mamlflow process \(PID {pid} \(training\)\)"
    with pytest.raises(CheckpointError, match=expected):
        check_unlocked(run_dir)
    trainer = Trainer(_config(), run_dir, PluginHost(autoload=False))
    with pytest.raises(CheckpointError, match=expected):
        trainer.fit()
    assert not RunDir(run_dir).checkpoint.exists()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = (
        "import os\nfrom pathlib import Path\nfrom mamlflow.engine import run_lock\n"
        f"with run_lock(Path({str(run_dir)!r}), 'training'):\n    os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert (run_dir / RUN_LOCK).is_file()
    check_unlocked(run_dir)  # a killed holder leaves the file, not the lock
    with run_lock(run_dir, "training"):
        assert (run_dir / RUN_LOCK).read_text().startswith(f"{os.getpid()} (training)")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    # Environment workers are forked from the training process: when it ends, its lock must
    # end too, even while a child it forked still runs.
    run_dir = tmp_path / "run"
    read, write = os.pipe()
    started_r, started_w = os.pipe()
    with run_lock(run_dir, "training"):
        child = os.fork()
        if child == 0:  # the child outlives the lock's holder, until the test lets it go
            os.write(started_w, b"s")  # fork's hooks have run by now
            os.read(read, 1)
            os._exit(0)
        os.read(started_r, 1)
    try:
        check_unlocked(run_dir)
        with run_lock(run_dir, "training"):
            pass
    finally:
        os.write(write, b"x")
        os.waitpid(child, 0)


def test_stale_temporary_files_of_the_runs_own_writes_are_removed(tmp_path: Path) -> None:
    stale = [tmp_path / ".checkpoint.pt.x1y2.tmp", tmp_path / ".metrics.jsonl.abc.tmp"]
    kept = [tmp_path / ".eval.json.zz.tmp", tmp_path / "notes.tmp"]  # not the run's own
    for path in stale + kept:
        path.write_bytes(b"half")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_a_fresh_run_cleans_a_killed_runs_temporaries(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")
    Trainer(_config(), tmp_path, PluginHost(autoload=False)).fit()
    assert not (tmp_path / ".checkpoint.pt.killed.tmp").exists()
    assert load_checkpoint(tmp_path).iteration == 4


def test_an_attempt_that_wrote_no_checkpoint_leaves_a_reusable_directory(tmp_path: Path) -> None:
    host = PluginHost(autoload=False)
    # What a run killed before its first checkpoint leaves: its config, a metrics line.
    Trainer(_config(), tmp_path, host).fit()
    (tmp_path / rundir.CHECKPOINT).unlink()
    (tmp_path / rundir.METRICS).write_text('{"iteration": 1, "meta_loss": 9.0}\n')
    assert RunDir(tmp_path).is_free()
    Trainer(_config("train.iterations=2"), tmp_path, host).fit()
    records = [json.loads(line) for line in (tmp_path / rundir.METRICS).read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2]  # the dead attempt's record is gone
    assert load_checkpoint(tmp_path).iteration == 2


def test_a_config_mamlflow_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / rundir.CONFIG).write_text("{}")
    assert not RunDir(tmp_path).is_free()
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(_config(), tmp_path, PluginHost(autoload=False))
    assert (tmp_path / rundir.CONFIG).read_text() == "{}"
