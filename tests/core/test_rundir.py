"""The run directory: its file names, the metrics record and callback states, crash-safe writes.

Writes replace content whole, leave nothing behind and keep permissions; the typed records read
as attributes and, for callbacks written against plain dicts, as read-only mappings too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mamlflow.core import (
    MetricsRecord,
    OuterStepReport,
    RunDir,
    TrainStart,
    TrainSummary,
    atomic_write,
    rundir,
)


def test_atomic_write_replaces_whole_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    atomic_write(path, b"first")
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, b"good")

    def crash(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_run_dir_names_every_file_once(tmp_path: Path) -> None:
    files = RunDir(tmp_path)
    assert files.config == tmp_path / "config.json" == tmp_path / rundir.CONFIG
    assert files.checkpoint.name == "checkpoint.pt" and files.metrics.name == "metrics.jsonl"
    assert files.best_checkpoint.name == rundir.BEST_CHECKPOINT == "checkpoint_best.pt"
    assert files.examples(5).name == "examples_k5.png"
    assert not files.holds_run()
    files.checkpoint.write_bytes(b"")
    assert files.holds_run()


def test_a_metrics_record_is_typed_and_its_json_has_the_documented_keys_in_order() -> None:
    plain = MetricsRecord(iteration=10, meta_loss=0.5, tasks_per_s=100.0, elapsed=2.0)
    assert list(plain.as_json()) == ["iteration", "meta_loss", "tasks_per_s", "elapsed"]
    rl = MetricsRecord(
        iteration=20,
        meta_loss=0.0,
        tasks_per_s=5.0,
        elapsed=9.0,
        return_before=-40.0,
        return_after=-12.0,
        outer=OuterStepReport(kl=0.01, loss=-0.1, line_search=3.0),
        metric="return",
        val=-11.0,
        val_ci95=0.5,
    )
    assert list(rl.as_json()) == [
        "iteration",
        "meta_loss",
        "tasks_per_s",
        "return_before",
        "return_after",
        "outer_kl",
        "outer_loss",
        "outer_line_search",
        "val_return",
        "val_return_ci95",
        "elapsed",
    ]
    assert rl.val == -11.0 and rl["val_return"] == -11.0  # typed, and a mapping for old code
    assert dict(rl) == rl.as_json() and len(rl) == 11 and "val_mse" not in rl
    assert OuterStepReport(loss=1.0).as_dict() == {"loss": 1.0}


def test_callback_states_read_as_attributes_and_as_mappings() -> None:
    start = TrainStart(iteration=3, config=None, metric="mse", higher_is_better=False, best=None)  # type: ignore[arg-type]
    assert start.iteration == start["iteration"] == 3 and dict(start)["metric"] == "mse"
    with pytest.raises(KeyError):
        start["val_mse"]
    summary = TrainSummary(4, 4, 0.1, 1.0, 10.0, "batched", "requested", "iterations")
    assert summary["stopped_by"] == "iterations" and summary.return_after is None
    assert summary.as_dict()["strategy"] == "batched"


def test_read_records_skips_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "meta_loss": 2.0}\n{"iteration": 2, "meta_lo')
    assert rundir.read_records(path) == [{"iteration": 1, "meta_loss": 2.0}]
    assert rundir.read_records(tmp_path / "absent.jsonl") == []
