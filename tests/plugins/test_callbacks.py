"""Callbacks: options from the run config, the control API, and each built-in on real runs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from mamlflow.core import (
    Callback,
    CallbackConfig,
    ConfigError,
    MetricsRecord,
    RunConfig,
    TrainerControl,
    TrainStart,
    UnknownNameError,
    hookimpl,
    rundir,
)
from mamlflow.core.rundir import read_records
from mamlflow.engine import (
    PluginHost,
    Trainer,
    config_schema,
    load_checkpoint,
    load_saved,
    resolve,
    save_resolved,
)
from mamlflow.plugins.callbacks import EarlyStopping, EarlyStoppingConfig


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost(autoload=False)


def _config(host: PluginHost, *sets: str) -> RunConfig:
    base = (
        "train.meta_batch_size=5",
        "train.log_every=5",
        "kernel.strategy=batched",
        "eval.tasks=20",
        "eval.steps=3",
        "train.val_tasks=20",
    )
    return resolve(host, preset="sinusoid", sets=(*base, *sets)).config


def _issues(host: PluginHost, *sets: str) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        resolve(host, preset="sinusoid", sets=sets)
    return excinfo.value.issues


# --- a third-party callback, registered through register_callbacks --------------------------


class ProbeConfig(CallbackConfig):
    checkpoint_at: int | None = Field(None, ge=1, description="request a checkpoint here")
    stop_at: int | None = Field(None, ge=1, description="request a stop here")


class Probe(Callback):
    """Acts on the run through its control and records what it saw."""

    name: ClassVar[str] = "probe"
    Config: ClassVar[type[CallbackConfig]] = ProbeConfig
    config: ProbeConfig
    seen: ClassVar[list[tuple[int, int | None]]] = []  # (record's iteration, checkpoint's)

    def on_train_start(self, state: TrainStart) -> None:
        Probe.seen.clear()

    def on_log(self, record: MetricsRecord) -> None:
        iteration = record.iteration
        path = self.run_dir / rundir.CHECKPOINT
        Probe.seen.append(
            (iteration, load_checkpoint(self.run_dir).iteration if path.is_file() else None)
        )
        if iteration == self.config.checkpoint_at:
            self.control.request_checkpoint()
        if iteration == self.config.stop_at:
            self.control.request_stop("probe")


class ProbePlugin:
    @hookimpl
    def register_callbacks(self, register: Callable[[type[Callback]], None]) -> None:
        register(Probe)


@pytest.fixture
def probe_host() -> Iterator[PluginHost]:
    host = PluginHost(autoload=False)
    undo = host.add_plugin(ProbePlugin(), "probe-plugin")
    yield host
    undo()


# --- config: options per callback, one-line errors, old run directories ---------------------


def test_default_config_keeps_metrics_and_records_every_option(host: PluginHost) -> None:
    resolved = resolve(host, preset="sinusoid")
    assert resolved.config.train.callbacks == ("metrics",)
    assert resolved.config.callbacks == {"metrics": CallbackConfig()}

    resolved = resolve(
        host,
        preset="sinusoid",
        sets=[
            "train.callbacks=[metrics, csv, early_stopping]",
            "train.val_every=100",
            "callbacks.early_stopping.patience=3",
        ],
    )
    options = resolved.config.callbacks
    assert list(options) == ["metrics", "csv", "early_stopping"]
    assert options["early_stopping"] == EarlyStoppingConfig(patience=3, min_delta=0.0)
    assert resolved.provenance["callbacks.early_stopping.patience"] == "--set"
    assert resolved.provenance["callbacks.early_stopping.min_delta"] == "default"
    dumped = resolved.config.model_dump(mode="json")["callbacks"]
    assert dumped == {"metrics": {}, "csv": {}, "early_stopping": {"patience": 3, "min_delta": 0.0}}


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            ["train.callbacks=[metrics, early_stoping]"],
            "train.callbacks: Unknown callback 'early_stoping'. Did you mean 'early_stopping'?",
        ),
        (
            [
                "train.callbacks=[early_stopping]",
                "train.val_every=5",
                "callbacks.early_stopping.patiense=2",
            ],
            "callbacks.early_stopping.patiense: Extra inputs are not permitted; "
            "did you mean callbacks.early_stopping.patience? (from --set)",
        ),
        (
            [
                "train.callbacks=[early_stopping]",
                "train.val_every=5",
                "callbacks.early_stopping.patience=0",
            ],
            "callbacks.early_stopping.patience: Input should be greater than or equal to 1",
        ),
        (
            ["callbacks.early_stopping.patience=2"],
            "callbacks.early_stopping: options for a callback train.callbacks does not enable; "
            "add 'early_stopping' to train.callbacks or drop these options (from --set)",
        ),
        (
            ["callbacks.tensorbord.flush_secs=2"],
            "callbacks.tensorbord: Unknown callback 'tensorbord'. Did you mean 'tensorboard'?",
        ),
        (
            ["train.callbacks=[early_stopping]"],
            "train.callbacks: early_stopping watches validation, but train.val_every is null; set "
            "train.val_every=N (validate every N iterations) or drop early_stopping (from --set)",
        ),
        (
            ["train.callbacks=[metrics, csv, metrics]"],
            "train.callbacks: 'metrics' is listed twice; list it once (from --set)",
        ),
    ],
)
def test_bad_callback_settings_are_one_line_each(
    host: PluginHost, sets: list[str], expected: str
) -> None:
    (issue,) = _issues(host, *sets)
    assert issue.startswith(expected), issue
    assert "\n" not in issue


def test_options_come_from_a_config_file_too(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "train:\n  callbacks: [metrics, csv, tensorboard]\n"
        "callbacks:\n  csv:\n  tensorboard:\n    flush_secs: 5\n"
    )
    resolved = resolve(host, preset="sinusoid", file=path)
    assert resolved.config.callbacks["tensorboard"].model_dump() == {"flush_secs": 5}
    assert resolved.provenance["callbacks.tensorboard.flush_secs"] == f"file {path}"


def test_config_schema_lists_callback_options(host: PluginHost) -> None:
    rows = {row.key: row for row in config_schema(host, preset="sinusoid")}
    assert rows["callbacks.early_stopping.patience"].default == 5
    assert rows["callbacks.tensorboard.flush_secs"].type == "int"
    assert rows["train.checkpoint_every_minutes"].default is None


def test_a_run_directory_from_before_callback_options_still_loads(
    host: PluginHost, tmp_path: Path
) -> None:
    path = tmp_path / "config.json"
    save_resolved(resolve(host, preset="sinusoid", sets=["train.callbacks=[metrics, csv]"]), path)
    payload = json.loads(path.read_text())
    # What an older mamlflow wrote: no callbacks section, no checkpoint_every_minutes.
    del payload["config"]["callbacks"]
    del payload["config"]["train"]["checkpoint_every_minutes"]
    payload["provenance"] = {
        k: v for k, v in payload["provenance"].items() if not k.startswith("callbacks")
    }
    del payload["provenance"]["train.checkpoint_every_minutes"]
    path.write_text(json.dumps(payload))
    loaded = load_saved(host, path)
    assert loaded.config.train.callbacks == ("metrics", "csv")
    assert loaded.config.callbacks == {"metrics": CallbackConfig(), "csv": CallbackConfig()}
    assert loaded.config.train.checkpoint_every_minutes is None
    assert loaded.provenance["callbacks.csv"] == "default"


def test_a_saved_run_loads_after_its_callback_plugin_is_gone(tmp_path: Path) -> None:
    host = PluginHost(autoload=False)
    undo = host.add_plugin(ProbePlugin(), "probe-plugin")
    resolved = resolve(
        host,
        preset="sinusoid",
        sets=["train.callbacks=[metrics, probe]", "callbacks.probe.stop_at=7"],
    )
    path = tmp_path / "config.json"
    save_resolved(resolved, path)
    undo()
    # Evaluating a run must not need the plugin that only watched it train; the options are
    # kept as written, and a trainer still refuses to run without the plugin.
    loaded = load_saved(host, path)
    assert loaded.config.model_dump(mode="json") == resolved.config.model_dump(mode="json")
    with pytest.raises(UnknownNameError, match="Unknown callback 'probe'"):
        Trainer(loaded.config, tmp_path / "run", host)
    # Where the user names it anew, an unknown callback is an error at once.
    with pytest.raises(ConfigError, match="Unknown callback 'probe'"):
        resolve(host, preset="sinusoid", sets=["train.callbacks=[metrics, probe]"])


# --- the control API ------------------------------------------------------------------------


def test_control_first_stop_reason_wins_and_checkpoint_requests_are_taken_once() -> None:
    control = TrainerControl()
    assert control.stop_reason is None and not control.take_checkpoint_request()
    control.request_checkpoint()
    control.request_checkpoint()
    assert control.take_checkpoint_request() and not control.take_checkpoint_request()
    control.request_stop("early_stopping")
    control.request_stop("interrupted")
    assert control.stop_reason == "early_stopping"
    with pytest.raises(ValueError, match="needs a reason"):
        control.request_stop(" ")


def test_a_callback_without_options_or_control_says_what_is_missing(tmp_path: Path) -> None:
    class Plain(Callback):
        name = "plain"

    plain = Plain(tmp_path)  # the old signature: the run directory alone
    assert plain.config == CallbackConfig()
    with pytest.raises(RuntimeError, match="attaches it before on_train_start"):
        plain.control  # noqa: B018
    with pytest.raises(TypeError, match="takes a EarlyStoppingConfig"):
        EarlyStopping(tmp_path, CallbackConfig())


def test_a_plugin_callback_stops_and_checkpoints_through_its_control(
    probe_host: PluginHost, tmp_path: Path
) -> None:
    cfg = _config(
        probe_host,
        "train.iterations=1000",
        "train.log_every=1",
        "train.callbacks=[metrics, probe]",
        "callbacks.probe.checkpoint_at=3",
        "callbacks.probe.stop_at=6",
    )
    summary = Trainer(cfg, tmp_path, probe_host).fit()
    assert summary.stopped_by == "probe" and summary.iteration == 6
    # No checkpoint until the one requested at 3 (the periodic one is every 5,000).
    assert Probe.seen == [(1, None), (2, None), (3, None), (4, 3), (5, 3), (6, 3)]
    final = load_checkpoint(tmp_path)
    assert final.iteration == 6 and not final.finished
    assert [r["iteration"] for r in read_records(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_every_minutes_writes_checkpoints_by_wall_time(
    probe_host: PluginHost, tmp_path: Path
) -> None:
    # 1e-6 minutes is 60 µs, less than one step: a checkpoint after every step.
    cfg = _config(
        probe_host,
        "train.iterations=4",
        "train.log_every=1",
        "train.callbacks=[probe]",
        "train.checkpoint_every_minutes=1e-6",
    )
    Trainer(cfg, tmp_path, probe_host).fit()
    assert Probe.seen == [(1, None), (2, 1), (3, 2), (4, 3)]
    assert load_checkpoint(tmp_path).finished


# --- early stopping ---------------------------------------------------------------------------


def _feed(
    stopper: EarlyStopping, values: list[float], *, higher_is_better: bool, best: float | None
) -> int | None:
    """Feed validation values; the 1-based validation at which a stop was requested."""
    control = TrainerControl()
    stopper.control = control
    metric = "accuracy" if higher_is_better else "mse"
    config = resolve(PluginHost(autoload=False), preset="sinusoid").config
    stopper.on_train_start(TrainStart(0, config, metric, higher_is_better, best))
    for index, value in enumerate(values, start=1):
        plain = MetricsRecord(iteration=index, meta_loss=1.0, tasks_per_s=1.0, elapsed=1.0)
        stopper.on_log(plain)  # no validation: ignored
        stopper.on_log(MetricsRecord(index, 1.0, 1.0, 1.0, metric=metric, val=value, val_ci95=0))
        if control.stop_reason is not None:
            assert control.stop_reason == "early_stopping"
            return index
    return None


@pytest.mark.parametrize(
    ("values", "higher_is_better", "options", "best", "stops_at"),
    [
        ([1.0, 0.9, 0.8, 0.7], False, {"patience": 1}, None, None),  # mse keeps falling
        ([1.0, 1.1, 1.2], False, {"patience": 2}, None, 3),
        ([1.0, 1.1, 0.95, 1.0, 1.0], False, {"patience": 2}, None, 5),  # the wait restarts
        ([0.5, 0.6, 0.7, 0.8], True, {"patience": 1}, None, None),  # accuracy keeps rising
        ([0.5, 0.4, 0.45], True, {"patience": 2}, None, 3),
        ([1.0, 0.995, 0.99], False, {"patience": 2, "min_delta": 0.01}, None, 3),  # too small
        ([1.0, 0.98], False, {"patience": 1, "min_delta": 0.01}, None, None),
        ([0.8, 0.7], False, {"patience": 2}, 0.5, 2),  # the resumed run's best counts
        ([1.0, float("nan"), float("nan")], False, {"patience": 2}, None, 3),
    ],
)
def test_early_stopping_counts_validations_without_improvement(
    tmp_path: Path,
    values: list[float],
    higher_is_better: bool,
    options: dict[str, float],
    best: float | None,
    stops_at: int | None,
) -> None:
    stopper = EarlyStopping(tmp_path, EarlyStoppingConfig(**options))
    assert _feed(stopper, values, higher_is_better=higher_is_better, best=best) == stops_at


def test_early_stopping_ends_the_run_with_final_and_best_checkpoints(
    host: PluginHost, tmp_path: Path
) -> None:
    # An outer learning rate of 1e-12 leaves θ as it is: the validation metric (the same
    # validation tasks each time) cannot improve by min_delta after the first validation.
    cfg = _config(
        host,
        "train.iterations=1000",
        "train.val_every=2",
        "train.log_every=2",
        "outer.lr=1e-12",
        "train.callbacks=[metrics, early_stopping]",
        "callbacks.early_stopping.patience=3",
        "callbacks.early_stopping.min_delta=1e-3",
    )
    summary = Trainer(cfg, tmp_path, host).fit()
    assert summary.stopped_by == "early_stopping" and summary.iteration == 8
    final, best = load_checkpoint(tmp_path), load_checkpoint(tmp_path, rundir.BEST_CHECKPOINT)
    assert final.iteration == 8 and not final.finished
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]
    assert best.best == min(r["val_mse"] for r in records) == final.best
    assert best.iteration == min(records, key=lambda r: r["val_mse"])["iteration"]


# --- metrics.csv and TensorBoard ----------------------------------------------------------------


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_csv_has_a_column_for_every_key_and_matches_metrics_jsonl(
    host: PluginHost, tmp_path: Path
) -> None:
    cfg = _config(
        host, "train.iterations=20", "train.val_every=10", "train.callbacks=[metrics, csv]"
    )
    Trainer(cfg, tmp_path, host).fit()
    records = read_records(tmp_path / "metrics.jsonl")
    columns, rows = _csv_rows(tmp_path / "metrics.csv")
    # Validation keys first appear at iteration 10: the header widened, earlier rows stay.
    assert columns == [
        "iteration",
        "meta_loss",
        "tasks_per_s",
        "elapsed",
        "val_mse",
        "val_mse_ci95",
    ]
    assert [int(r["iteration"]) for r in rows] == [5, 10, 15, 20]
    for record, row in zip(records, rows, strict=True):
        for key in columns:
            if key in record:
                assert float(row[key]) == record[key], key  # written at full precision
            else:
                assert row[key] == ""
    assert not list(tmp_path.glob(".metrics.csv.*"))  # no temporary file left behind


def test_tensorboard_scalars_match_metrics_jsonl(host: PluginHost, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = _config(
        host,
        "train.iterations=20",
        "train.val_every=10",
        "train.callbacks=[metrics, tensorboard]",
    )
    Trainer(cfg, tmp_path, host).fit()
    records = read_records(tmp_path / "metrics.jsonl")
    scalars = _scalars(tmp_path)
    assert set(scalars) == {
        "train/meta_loss",
        "train/tasks_per_s",
        "train/elapsed",
        "val/mse",
        "val/mse_ci95",
    }
    assert [s for s, _ in scalars["train/meta_loss"]] == [5, 10, 15, 20]
    assert [s for s, _ in scalars["val/mse"]] == [10, 20]
    for step, value in scalars["train/meta_loss"] + scalars["val/mse"]:
        record = next(r for r in records if r["iteration"] == step)
        key = "val_mse" if (step, value) in scalars["val/mse"] else "meta_loss"
        assert value == pytest.approx(record[key], rel=1e-6)  # TensorBoard stores float32


def test_a_resumed_run_drops_what_came_after_its_checkpoint_everywhere(
    host: PluginHost, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    callbacks = "train.callbacks=[metrics, csv, tensorboard]"
    run = tmp_path / "run"
    Trainer(_config(host, "train.iterations=10", callbacks), run, host).fit()
    at_10 = tmp_path / "checkpoint_at_10.pt"
    shutil.copy(run / rundir.CHECKPOINT, at_10)
    resumed = _config(host, "train.iterations=20", "train.val_every=20", callbacks)
    Trainer(resumed, run, host, resume=True).fit()
    # A crash after iteration 20 was logged, with the last checkpoint from iteration 10:
    # the resumed run repeats 15 and 20, and every file must still read as one run.
    shutil.copy(at_10, run / rundir.CHECKPOINT)
    Trainer(resumed, run, host, resume=True).fit()
    assert [r["iteration"] for r in read_records(run / "metrics.jsonl")] == [5, 10, 15, 20]
    columns, rows = _csv_rows(run / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [5, 10, 15, 20]
    assert columns[-2:] == ["val_mse", "val_mse_ci95"]
    scalars = _scalars(run)
    assert [s for s, _ in scalars["train/meta_loss"]] == [5, 10, 15, 20]
    assert [s for s, _ in scalars["val/mse"]] == [20]


def test_csv_resume_skips_a_row_cut_short_by_a_crash(host: PluginHost, tmp_path: Path) -> None:
    cfg = _config(host, "train.iterations=10", "train.callbacks=[csv]")
    Trainer(cfg, tmp_path, host).fit()
    path = tmp_path / "metrics.csv"
    path.write_text(path.read_text() + "15,0.51")  # no newline: the write was cut short
    Trainer(
        _config(host, "train.iterations=15", "train.callbacks=[csv]"), tmp_path, host, resume=True
    ).fit()
    _, rows = _csv_rows(path)
    assert [int(r["iteration"]) for r in rows] == [5, 10, 15]
    assert all(r["meta_loss"] != "0.51" for r in rows)


# --- TensorBoard missing ------------------------------------------------------------------------


def test_tensorboard_missing_is_one_config_error_before_anything_runs(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real failed import: None in sys.modules makes `import tensorboard` raise ImportError.
    for module in [m for m in sys.modules if m.split(".")[0] == "tensorboard"]:
        monkeypatch.delitem(sys.modules, module)
    for module in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    cfg = _config(host, "train.iterations=5", "train.callbacks=[metrics, tensorboard]")
    with pytest.raises(ConfigError) as excinfo:
        Trainer(cfg, tmp_path / "run", host)
    (issue,) = excinfo.value.issues
    assert 'pip install "mamlflow[tensorboard]"' in issue
    assert not (tmp_path / "run").exists()


def test_cli_without_tensorboard_fails_with_one_line_and_no_run_dir(tmp_path: Path) -> None:
    # A `tensorboard` that cannot be imported, first on the path: as if it were not installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tensorboard.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mamlflow", "run", "--plugin", "sinusoid", "--out", str(run_dir),
         "--set", "train.callbacks=[metrics, tensorboard]", "--set", "train.iterations=5"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(shadow)},
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "mamlflow[tensorboard]"' in lines[0], result.stderr
    assert not run_dir.exists()


# --- the documented example and the CLI ---------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONTROL_HEADING = "#### Callback options and the control API"


def test_the_documented_callback_stops_a_run_through_its_control(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = DOCS / "plugins.md"
    section = doc.read_text(encoding="utf-8").split(CONTROL_HEADING, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"{doc.name} has no python block under {CONTROL_HEADING!r}"
    module = types.ModuleType("mf_docs_callback_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # pydantic looks its module up
    exec(compile(match.group(1), str(doc), "exec"), module.__dict__)

    host = PluginHost(autoload=False)
    undo = host.add_plugin(module, "docs-example")
    try:
        cfg = _config(
            host,
            "train.iterations=1000",
            "train.callbacks=[metrics, target_loss]",
            "callbacks.target_loss.target=1e9",  # any meta-loss is below it
        )
        summary = Trainer(cfg, tmp_path, host).fit()
    finally:
        undo()
    assert summary.stopped_by == "target_loss" and summary.iteration == 5  # the first record


def test_checkpoint_every_minutes_may_change_on_resume(tmp_path: Path) -> None:
    from mamlflow.cli import main

    run_dir = tmp_path / "run"
    common = ["--set", "train.meta_batch_size=2", "--set", "kernel.strategy=batched"]
    for args in (
        ["--plugin", "sinusoid", "--out", str(run_dir), "--set", "train.iterations=2", *common],
        ["--resume", str(run_dir), "--set", "train.iterations=4"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *args, "--set", "train.checkpoint_every_minutes=30"])
        assert exit_info.value.code in (0, None)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["train"]["checkpoint_every_minutes"] == 30
    assert load_checkpoint(run_dir).iteration == 4
