"""What a new user sees: tables and the progress bar at 80 columns, log lines, plots, summaries."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from mamlflow.cli._common import setup_logging
from mamlflow.cli._config import ExplainedKey, explain_table
from mamlflow.cli._plots import plot_learning_curve
from mamlflow.cli._progress import train_progress
from mamlflow.cli._run import _fit_with_progress, _summary_table
from mamlflow.core import TrainSummary
from mamlflow.engine import Trainer, config_schema, get_host, resolve

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# One iteration of a small navigation run: seconds, not minutes.
TINY_NAVIGATION_SETS = (
    "train.iterations=1",
    "task.shots=2",
    "task.query=2",
    "train.meta_batch_size=2",
    "task.eval_timesteps=null",
    "train.val_every=null",
)


def _cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mamlflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)},
        timeout=300,
    )


def _explained(preset: str) -> list[ExplainedKey]:
    """The rows ``metaflow config --plugin preset --explain`` must show, whole."""
    host = get_host()
    resolved = resolve(host, preset=preset)
    values = resolved.config.model_dump(mode="json")
    docs = {row.key: row.description for row in config_schema(host, preset)}
    rows = []
    for key, source in resolved.provenance.items():
        value = values
        for part in key.split("."):
            value = value[part]
        rows.append(ExplainedKey(key, json.dumps(value), source, docs.get(key, "")))
    return rows


def _cells(text: str) -> list[list[str]]:
    """The cells of each line of a box-drawn table, stripped."""
    return [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in text.splitlines()]


def _render(renderable: object, width: int) -> str:
    out = Console(width=width, file=io.StringIO(), record=True)
    out.print(renderable)
    return out.export_text()


# -- metaflow config --explain ------------------------------------------------------------------


def test_config_explain_at_80_columns_cuts_no_key_value_or_source() -> None:
    # sinusoid-reptile has the longest key, value and source together: no four columns fit.
    r = _cli("config", "--plugin", "sinusoid-reptile", "--explain")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in r.stdout
    cells = {cell for row in _cells(r.stdout) for cell in row}
    left_column = " ".join(row[0] for row in _cells(r.stdout) if row)
    for row in _explained("sinusoid-reptile"):
        assert {row.key, row.value, row.source} <= cells, row
        # Descriptions wrap under their key: every word, in order.
        assert " ".join(row.description.split()) in " ".join(left_column.split()), row


@pytest.mark.parametrize("preset", ["navigation", "omniglot-20w1s-anil"])
def test_explain_table_fits_80_columns_for_other_presets(preset: str) -> None:
    rows = _explained(preset)
    text = _render(explain_table(f"config for --plugin {preset}", rows, 80), 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    cells = {cell for row in _cells(text) for cell in row}
    assert all({row.key, row.value, row.source} <= cells for row in rows)


def test_explain_table_keeps_four_columns_on_a_wide_terminal() -> None:
    rows = _explained("sinusoid-reptile")
    text = _render(explain_table("config", rows, 160), 160)
    table = _cells(text)
    assert ["key", "value", "source", "description"] in table
    for row in rows:
        first_line = next(cells for cells in table if cells and cells[0] == row.key)
        assert first_line[1:3] == [row.value, row.source]
        assert first_line[3] == "" or row.description.startswith(first_line[3])


# -- the progress bar ---------------------------------------------------------------------------


def _bar_line(width: int, **fields: str) -> str:
    progress = train_progress(Console(width=width, file=io.StringIO()))
    task = progress.add_task("meta-train", total=70_000, **fields)
    progress.update(task, completed=12_345)
    text = _render(progress.make_tasks_table(progress.tasks), width)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("loss", "val"),
    [
        ("meta-loss 5.4391", "val mse 2.9255"),
        ("return -97.77 → -98.19", "val return -51.2345"),
        ("meta-loss 0.1234", "val accuracy 0.9876"),
    ],
)
def test_progress_bar_at_80_columns_keeps_iteration_metric_and_rate(loss: str, val: str) -> None:
    line = _bar_line(80, loss=loss, rate="1,234", val=val)
    assert len(line) <= 80 and "…" not in line, line
    for shown in ("12345/70000", loss, "1,234 tasks/s"):
        assert shown in line
    # The least important column goes first: the task's name.
    assert "meta-train" not in line


def test_progress_bar_on_a_wide_terminal_shows_every_column() -> None:
    line = _bar_line(200, loss="meta-loss 5.4391", rate="1,234", val="val mse 2.9255")
    assert re.match(r"meta-train ━[━ ]{39} 12345/70000 meta-loss 5\.4391 1,234 tasks/s ", line)
    assert "val mse 2.9255" in line and len(re.findall(r"\d:\d\d:\d\d|-:--:--", line)) == 2


def test_a_run_at_80_columns_ends_with_a_whole_bar_and_can_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = ("--set", "train.meta_batch_size=2", "--set", "train.log_every=10")
    validated = ("--set", "train.val_every=10", "--set", "train.val_tasks=4")
    sets = ("--set", "train.iterations=20", *common, *validated)
    r = _cli("run", "--plugin", "sinusoid", *sets, "--out", str(run_dir))
    assert r.returncode == 0, r.stderr
    bar = next(line for line in r.stdout.splitlines() if "20/20" in line)
    assert len(bar) <= 80 and "…" not in bar, bar
    assert "meta-loss" in bar and "tasks/s" in bar and "val mse" in bar
    # The trainer wrote config.json (the CLI does not), and --resume continues from it.
    assert json.loads((run_dir / "config.json").read_text())["config"]["train"]["iterations"] == 20
    r = _cli("run", "--resume", str(run_dir), "--set", "train.iterations=30")
    assert r.returncode == 0, r.stderr
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["train"]["iterations"] == 30
    assert saved["provenance"]["train.iterations"] == "--set"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [10, 20, 30]


# -- log lines while the bar is live --------------------------------------------------------------


@pytest.fixture
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's logging, set up afresh for this test (and taken down after it)."""
    monkeypatch.setattr(logging.getLogger("mamlflow"), "handlers", [])
    setup_logging()


@pytest.mark.usefixtures("cli_logging")
def test_the_kernel_line_prints_once_above_the_live_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = get_host()
    sets = ("train.iterations=3", "train.meta_batch_size=2", "kernel.strategy=loop")
    trainer = Trainer(resolve(host, preset="sinusoid", sets=sets), tmp_path / "run", host)
    terminal = io.StringIO()
    _fit_with_progress(trainer, Console(file=terminal, force_terminal=True, width=80))
    assert "kernel:" not in capsys.readouterr().err
    shown = ANSI.sub("", terminal.getvalue())
    assert shown.count("kernel: loop") == 1, shown
    assert shown.index("kernel: loop") < shown.rindex("3/3")
    # After the bar, log lines go back to stderr.
    logging.getLogger("mamlflow.trainer").info("after the bar")
    assert capsys.readouterr().err == "after the bar\n"


# -- the learning curve -------------------------------------------------------------------------


def _write_records(path: Path, *records: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_learning_curve_shows_a_single_record(tmp_path: Path) -> None:
    record = {"iteration": 10, "meta_loss": 0.5, "tasks_per_s": 3.0, "elapsed": 1.0}
    metrics = _write_records(tmp_path / "metrics.jsonl", record)
    assert plot_learning_curve(metrics, tmp_path / "curve.png")
    image = imread(tmp_path / "curve.png")[..., :3]
    meta_loss_panel = image[:, : image.shape[1] // 3]
    line_colour = np.array(matplotlib.colors.to_rgb("C0"))
    assert (np.abs(meta_loss_panel - line_colour).sum(-1) < 0.1).sum() > 20


def test_learning_curve_marks_single_returns_and_validations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    record = {
        "iteration": 1,
        "meta_loss": 0.0,
        "tasks_per_s": 3.0,
        "return_before": -3.0,
        "return_after": -2.0,
        "val_return": -2.5,
        "val_return_ci95": None,  # what a non-finite interval reads back as
        "elapsed": 1.0,
    }
    assert plot_learning_curve(_write_records(tmp_path / "m.jsonl", record), tmp_path / "c.png")
    returns, *validation = figures[0].axes
    assert len(returns.lines) == 2
    assert all(line.get_marker() not in (None, "None", "") for line in returns.lines)
    for ax in validation:
        assert any(line.get_marker() == "o" for line in ax.lines)


# -- the run summary ----------------------------------------------------------------------------


def _summary(**returns: float) -> TrainSummary:
    common = {"iteration": 1, "iterations": 1, "elapsed": 0.2, "tasks_per_s": 8.0}
    return TrainSummary(
        **common,
        meta_loss=0.0 if returns else 5.4391,
        strategy="batched",
        strategy_reason="requested",
        stopped_by="iterations",
        **returns,
    )


def test_summary_of_a_rollout_run_shows_returns_not_the_surrogate_loss() -> None:
    summary = _summary(return_before=-97.77, return_after=-98.19)
    text = _render(_summary_table(Path("runs/nav"), summary, []), 80)
    assert "meta-loss" not in text
    assert re.search(r"final return\s+│ -97\.77 → -98\.19 \(before → after adaptation\)", text)


def test_summary_of_a_resume_without_steps_reads_returns_from_the_last_record() -> None:
    summary = TrainSummary(1, 1, None, 0.1, 0.0, "batched", "no step taken", "iterations")
    last = {"iteration": 1, "meta_loss": 0.0, "return_before": -1.0, "return_after": 2.5}
    text = _render(_summary_table(Path("r"), summary, [last]), 80)
    assert "-1.00 → 2.50" in text and "meta-loss" not in text


def test_summary_of_a_supervised_run_is_unchanged() -> None:
    text = _render(_summary_table(Path("runs/sin"), _summary(), [{"meta_loss": 5.4391}]), 80)
    assert re.search(r"final meta-loss\s+│ 5\.4391", text) and "return" not in text


def test_a_navigation_run_reports_returns_at_80_columns(tmp_path: Path) -> None:
    sets = [arg for item in TINY_NAVIGATION_SETS for arg in ("--set", item)]
    r = _cli("run", "--plugin", "navigation", *sets, "--out", str(tmp_path / "nav"))
    assert r.returncode == 0, r.stderr
    assert "final meta-loss" not in r.stdout
    assert re.search(r"final return\s+│ -?\d+\.\d\d → -?\d+\.\d\d", r.stdout), r.stdout
    bar = next(line for line in r.stdout.splitlines() if "1/1" in line)
    assert len(bar) <= 80 and "return" in bar and "tasks/s" in bar and "…" not in bar
