"""Garbage in a run directory's files: one error line that names the file, never a lost run.

``metrics.jsonl`` and ``metrics.csv`` are read line by line and skip what they cannot read;
``config.json`` and ``checkpoint.pt`` are refused with a ``CheckpointError``; a damaged
``eval.json`` is replaced by the next evaluation. The checkpoint itself is never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamlflow.core import CheckpointError, ConfigError, rundir
from mamlflow.engine import PluginHost, Trainer, load_checkpoint, load_saved, resolve
from mamlflow.plugins.callbacks import read_csv_records

HOST = PluginHost(autoload=False)
_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
garbage = st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    config = resolve(HOST, preset="sinusoid", sets=["train.iterations=2", "train.log_every=1"])
    Trainer(config, path, HOST).fit()
    return path


def test_garbage_metrics_files_are_read_line_by_line(tmp_path: Path) -> None:
    tried = []

    @_SETTINGS
    @given(garbage, garbage)
    def check(jsonl: bytes, csv: bytes) -> None:
        tried.append(1)
        good = b'{"iteration": 1, "meta_loss": 0.5}\n'
        (tmp_path / "m.jsonl").write_bytes(good + jsonl + b"\n" + good)
        records = rundir.read_records(tmp_path / "m.jsonl")
        assert records[0] == {"iteration": 1, "meta_loss": 0.5}
        assert all(isinstance(r["iteration"], int) for r in records)
        (tmp_path / "m.csv").write_bytes(b"iteration,meta_loss\n1,0.5\n" + csv)
        columns, rows = read_csv_records(tmp_path / "m.csv")
        assert columns == ["iteration", "meta_loss"] and rows[0]["iteration"] == "1"

    check()
    print(f"tried {len(tried)} pairs of metrics files")
    assert len(tried) >= 100


def test_a_garbage_config_or_checkpoint_is_one_line_and_the_run_stays(
    run_dir: Path, tmp_path: Path
) -> None:
    tried = []
    checkpoint = (run_dir / rundir.CHECKPOINT).read_bytes()

    @_SETTINGS
    @given(garbage)
    def check(content: bytes) -> None:
        tried.append(1)
        path = tmp_path / "config.json"
        path.write_bytes(content)
        try:
            load_saved(HOST, path)
        except (CheckpointError, ConfigError) as error:
            assert "\n" not in str(error).strip() or isinstance(error, ConfigError)
        bad = tmp_path / "ckpt"
        bad.mkdir(exist_ok=True)
        (bad / rundir.CHECKPOINT).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(bad)

    check()
    assert (run_dir / rundir.CHECKPOINT).read_bytes() == checkpoint
    assert load_checkpoint(run_dir).iteration == 2
    print(f"tried {len(tried)} garbage configs and checkpoints")
    assert len(tried) >= 100


def test_a_checkpoint_with_the_wrong_contents_is_one_line(tmp_path: Path) -> None:
    tried = []

    @_SETTINGS
    @given(json_values, st.sampled_from(["iteration", "params", "optimizer", "rng", "format"]))
    def check(value: object, field: str) -> None:
        tried.append(1)
        payload = {
            "format": 1,
            "iteration": 3,
            "params": {"w": torch.zeros(2)},
            "learnables": {},
            "optimizer": {},
            "rng": {"torch": torch.get_rng_state()},
            "strategy": "loop",
            "elapsed": 1.0,
            "finished": False,
            field: value,
        }
        torch.save(payload, tmp_path / rundir.CHECKPOINT)
        try:
            loaded = load_checkpoint(tmp_path)
        except CheckpointError as error:
            assert "\n" not in str(error)
            return
        assert isinstance(loaded.iteration, int) and isinstance(loaded.optimizer, dict)
        assert all(isinstance(v, torch.Tensor) for v in loaded.params.values())

    check()
    print(f"tried {len(tried)} checkpoints with a wrong field")
    assert len(tried) >= 100


def test_resuming_from_a_checkpoint_with_foreign_state_is_one_line(
    run_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint whose optimizer or RNG state is well-formed but not this run's."""
    import shutil

    config = resolve(HOST, preset="sinusoid", sets=["train.iterations=4", "train.log_every=1"])
    foreign = {
        "optimizer": {"state": {}, "param_groups": []},
        "rng": {"torch": torch.zeros(3, dtype=torch.uint8)},
    }
    for field, value in foreign.items():
        copy = tmp_path / field
        shutil.copytree(run_dir, copy)
        payload = torch.load(copy / rundir.CHECKPOINT, weights_only=True)
        payload[field] = value
        torch.save(payload, copy / rundir.CHECKPOINT)
        with pytest.raises(CheckpointError, match=r"optimizer or RNG state does not fit"):
            Trainer(config, copy, HOST, resume=True).fit()
        assert load_checkpoint(copy).iteration == 2  # left as it was


def test_a_garbage_eval_json_is_replaced_by_the_next_evaluation(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mamlflow.cli import main

    tried = []

    @settings(_SETTINGS, max_examples=15)
    @given(garbage)
    def check(content: bytes) -> None:
        tried.append(1)
        (run_dir / rundir.EVAL).write_bytes(content)
        with pytest.raises(SystemExit) as done:
            main(["eval", str(run_dir), "--shots", "5", "--steps", "1", "--tasks", "4",
                  "--no-plots", "--json"])  # fmt: skip
        assert done.value.code in (0, None), capsys.readouterr().err
        saved = json.loads((run_dir / rundir.EVAL).read_text())
        assert [r["shots"] for r in saved["results"]] == [5]

    check()
    print(f"tried {len(tried)} garbage eval.json files")
    assert len(tried) >= 10
