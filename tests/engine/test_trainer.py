"""Meta-training loop: resume is bitwise exact, the time limit stops cleanly, records are kept."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from mamlflow.core import CheckpointError, rundir
from mamlflow.engine import (
    PluginHost,
    Trainer,
    build_components,
    evaluate,
    load_checkpoint,
    resolve,
)


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def _config(host: PluginHost, *sets: str):
    base = (
        "train.meta_batch_size=5",
        "train.log_every=5",
        "kernel.strategy=batched",
        "eval.tasks=20",
        "eval.steps=3",
    )
    return resolve(host, preset="sinusoid", sets=(*base, *sets)).config


@pytest.mark.parametrize(
    "strategy", ["batched", "loop", pytest.param("compiled", marks=pytest.mark.slow)]
)
def test_resume_is_bitwise_identical(host: PluginHost, tmp_path: Path, strategy: str) -> None:
    kernel = f"kernel.strategy={strategy}"
    straight = Trainer(_config(host, "train.iterations=20", kernel), tmp_path / "a", host)
    straight.fit()
    half = Trainer(_config(host, "train.iterations=10", kernel), tmp_path / "b", host)
    half.fit()
    resumed = Trainer(
        _config(host, "train.iterations=20", kernel), tmp_path / "b", host, resume=True
    )
    summary = resumed.fit()
    assert summary.strategy == strategy
    assert summary.iteration == 20
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a.iteration == b.iteration == 20 and b.finished
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
    # Adam's moments too: the two runs are the same run.
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"])
    # metrics.jsonl reads as one run: every logged iteration exactly once.
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [5, 10, 15, 20]


def test_training_lowers_the_meta_loss_and_adaptation_helps(
    host: PluginHost, tmp_path: Path
) -> None:
    cfg = _config(
        host,
        "train.iterations=500",
        "train.meta_batch_size=10",
        "train.log_every=100",
        "outer.lr=0.01",
    )
    trainer = Trainer(cfg, tmp_path, host)
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [100, 200, 300, 400, 500]
    assert records[-1]["meta_loss"] < records[0]["meta_loss"]
    assert all(r["tasks_per_s"] > 0 and r["elapsed"] > 0 for r in records)

    components = build_components(cfg, host)
    ckpt = load_checkpoint(tmp_path)
    kwargs = {"shots": 10, "steps": 3, "tasks": 200, "query": 50}
    trained, _ = evaluate(components, ckpt.params, ckpt.learnables, **kwargs)
    untrained, _ = evaluate(components, *components.initial_params(), **kwargs)
    assert trained.metric == "mse" and trained.steps == [0, 1, 2, 3]
    # Meta-training must make one adaptation step worth much more than from θ₀
    # (measured: 0.27-0.28 of it over seeds 0 and 1).
    assert trained.mean[1] < 0.5 * untrained.mean[1]
    assert trained.mean[1] < trained.mean[0]


def test_time_limit_stops_with_an_evaluable_checkpoint(host: PluginHost, tmp_path: Path) -> None:
    cfg = _config(host, "train.iterations=1000000", "train.time_limit=1.5")
    summary = Trainer(cfg, tmp_path, host).fit()
    assert summary.stopped_by == "time_limit"
    assert 0 < summary.iteration < 1_000_000
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.iteration == summary.iteration and not ckpt.finished


def test_first_and_second_order_runs_differ(host: PluginHost, tmp_path: Path) -> None:
    second = Trainer(_config(host, "train.iterations=5"), tmp_path / "so", host)
    first = Trainer(
        _config(host, "train.iterations=5", "algorithm.name=fomaml"), tmp_path / "fo", host
    )
    second.fit()
    first.fit()
    a, b = load_checkpoint(tmp_path / "so"), load_checkpoint(tmp_path / "fo")
    assert any(not torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_damaged_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / rundir.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_resume_rejects_a_checkpoint_from_another_model(host: PluginHost, tmp_path: Path) -> None:
    Trainer(_config(host, "train.iterations=2"), tmp_path, host).fit()
    other = _config(host, "train.iterations=4", "model.hidden=[8]")
    with pytest.raises(CheckpointError, match="do not match the model"):
        Trainer(other, tmp_path, host, resume=True).fit()


def test_float64_runs(host: PluginHost, tmp_path: Path) -> None:
    cfg = _config(host, "train.iterations=3", "kernel.dtype=float64")
    Trainer(cfg, tmp_path, host).fit()
    assert all(v.dtype == torch.float64 for v in load_checkpoint(tmp_path).params.values())


def test_validation_is_logged_and_the_best_checkpoint_kept(
    host: PluginHost, tmp_path: Path
) -> None:
    cfg = _config(
        host,
        "train.iterations=40",
        "train.val_every=20",
        "train.val_tasks=30",
        "train.log_every=10",
        "outer.lr=0.01",
    )
    Trainer(cfg, tmp_path, host).fit()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validated = [r for r in records if "val_mse" in r]
    assert [r["iteration"] for r in validated] == [20, 40]
    assert all(r["val_mse"] > 0 and r["val_mse_ci95"] > 0 for r in validated)
    best = load_checkpoint(tmp_path, rundir.BEST_CHECKPOINT)
    assert best.best == min(r["val_mse"] for r in validated)
    assert best.iteration == min(validated, key=lambda r: r["val_mse"])["iteration"]
    # The best value survives a resume, so a worse later validation cannot replace it.
    assert load_checkpoint(tmp_path).best == best.best


# -- the run directory a Python run leaves behind ----------------------------------------------


def test_the_trainer_saves_the_config_before_the_first_step(
    host: PluginHost, tmp_path: Path
) -> None:
    resolved = resolve(host, preset="sinusoid", sets=("train.iterations=3",))
    seen: list[bool] = []
    trainer = Trainer(resolved, tmp_path, host)
    trainer.on_step = lambda iteration, record: seen.append(
        rundir.RunDir(tmp_path).config.is_file()
    )
    trainer.fit()
    assert seen and all(seen)
    saved = json.loads((tmp_path / rundir.CONFIG).read_text())
    assert saved["provenance"]["train.iterations"] == "--set"
    assert saved["provenance"]["task.shots"] == "preset sinusoid"
    assert saved["config"]["train"]["iterations"] == 3


def test_a_bare_run_config_is_saved_with_python_as_its_source_and_keeps_it_on_resume(
    host: PluginHost, tmp_path: Path
) -> None:
    config = _config(host, "train.iterations=4")
    Trainer(config, tmp_path, host).fit()
    first = json.loads((tmp_path / rundir.CONFIG).read_text())["provenance"]
    assert set(first.values()) == {"Python"}
    longer = config.model_copy(update={"train": config.train.model_copy(update={"iterations": 6})})
    Trainer(longer, tmp_path, host, resume=True).fit()
    saved = json.loads((tmp_path / rundir.CONFIG).read_text())
    assert saved["config"]["train"]["iterations"] == 6
    assert saved["provenance"] == first  # unchanged values keep their (saved) sources


def test_a_fresh_run_refuses_a_directory_that_holds_one(host: PluginHost, tmp_path: Path) -> None:
    Trainer(_config(host, "train.iterations=2"), tmp_path, host).fit()
    before = (tmp_path / rundir.CHECKPOINT).read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a run; continue it with --resume"):
        Trainer(_config(host, "train.iterations=2"), tmp_path, host)
    assert (tmp_path / rundir.CHECKPOINT).read_bytes() == before


def test_a_python_run_is_evaluable_and_resumable_from_the_cli(
    host: PluginHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mamlflow.cli import main

    run = tmp_path / "embedded"
    Trainer(_config(host, "train.iterations=10"), run, host).fit()
    with pytest.raises(SystemExit) as done:
        main(["eval", str(run), "--json", "--tasks", "10", "--shots", "5", "--no-plots"])
    assert done.value.code in (None, 0)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["metric"] == "mse" and result["tasks"] == 10
    with pytest.raises(SystemExit) as done:
        main(["run", "--resume", str(run), "--set", "train.iterations=15"])
    assert done.value.code in (None, 0)
    assert load_checkpoint(run).iteration == 15


# -- non-finite values stop the run --------------------------------------------------------------


def test_a_nan_meta_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    host: PluginHost, tmp_path: Path
) -> None:
    from mamlflow.core import NonFiniteError

    good = _config(host, "train.iterations=4", "train.checkpoint_every=2")
    Trainer(good, tmp_path, host).fit()
    before = load_checkpoint(tmp_path)
    # Resume it with a learning rate no number survives: the next steps turn θ into NaN.
    exploding = _config(
        host,
        "train.iterations=40",
        "train.checkpoint_every=2",
        "outer.lr=1e30",
        "train.log_every=1",
    )
    with pytest.raises(NonFiniteError) as info:
        Trainer(exploding, tmp_path, host, resume=True).fit()
    message = str(info.value)
    assert "\n" not in message and "is not a finite number (NaN or inf)" in message, message
    assert "its last good checkpoint.pt is kept" in message and "outer.lr" in message
    after = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in after.params.values())
    assert after.iteration >= before.iteration
    # metrics.jsonl stays strict JSON: the NaN loss is null, never a bare NaN token.
    text = (tmp_path / rundir.METRICS).read_text()
    assert "NaN" not in text and "Infinity" not in text and '"meta_loss": null' in text
    for line in text.splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"non-strict {token}"))


def test_a_stop_while_a_kernel_compiles_abandons_it_and_takes_no_step(
    host: PluginHost, tmp_path: Path
) -> None:
    """A compile takes minutes on a small CPU: Ctrl-C or SIGTERM must not wait for it."""
    import os
    import signal
    import time
    from typing import ClassVar

    from mamlflow.core import MetaStep, hookimpl
    from mamlflow.plugins.maml import MAML

    class SlowFirstCall(MAML):
        """MAML whose kernel's first call takes a minute, as a cold torch.compile does."""

        name: ClassVar[str] = "slow-first-call"

        def make_meta_step(self, *args: Any, **kwargs: Any) -> MetaStep:
            step = super().make_meta_step(*args, **kwargs)
            calls = []

            def first_call_compiles(*a: Any) -> Any:
                if not calls:
                    calls.append(1)
                    os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C meanwhile
                    time.sleep(60)
                return step(*a)

            return first_call_compiles

    class Plugin:
        @hookimpl
        def register_algorithms(self, register: Any) -> None:
            register(SlowFirstCall)

    undo = host.add_plugin(Plugin(), "slow")
    try:
        config = _config(host, "algorithm.name=slow-first-call", "train.iterations=50")
        trainer = Trainer(config, tmp_path, host)
        previous = signal.signal(signal.SIGINT, lambda *_: trainer.request_stop())
        try:
            started = time.perf_counter()
            summary = trainer.fit()
            took = time.perf_counter() - started
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        undo()
    assert took < 30 and summary.stopped_by == "interrupted" and summary.iteration == 0
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.iteration == 0 and checkpoint.strategy == "batched"


_HOST_READS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}
)


class _HostReads(TorchFunctionMode):
    """Counts, per iteration, the calls that read a tensor's value back into Python.

    On a GPU each one waits for every queued kernel (a host sync). Torch's own optimizers read
    their step counters, which torch keeps on the host by design (``capturable=False``), so reads
    made inside ``torch.optim`` are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.iteration = 1
        self.by_iteration: dict[int, list[str]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _HOST_READS:
            where = traceback.extract_stack(limit=3)[0]
            if f"torch{os.sep}optim{os.sep}" not in where.filename:
                self.by_iteration.setdefault(self.iteration, []).append(
                    f"{name} at {Path(where.filename).name}:{where.lineno}"
                )
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("algorithm", ["maml", "mamlpp", "metasgd"])
def test_steps_between_records_read_nothing_back_from_the_device(
    host: PluginHost, tmp_path: Path, algorithm: str
) -> None:
    # The loss, the non-finite check and the metrics stay on the device; they are read once per
    # metrics record (log_every, validation) and at the end, so a GPU never waits on the host
    # between records. The first step of each kind (MAML++ turns second order and changes its
    # step weights on the way) is allowed its reads: it selects and checks that kind's kernel.
    cfg = _config(
        host,
        f"algorithm.name={algorithm}",
        "train.iterations=12",
        "train.log_every=4",
        "train.val_every=6",
        "train.checkpoint_every=100",
        "train.val_tasks=5",
    )
    reads = _HostReads()

    def next_iteration(iteration: int, _record: object) -> None:
        reads.iteration = iteration + 1

    trainer = Trainer(cfg, tmp_path / "run", host, on_step=next_iteration)
    with reads:
        trainer.fit()
    records = {4, 6, 8, 12, 13}  # 13: the final checkpoint and summary, after the last step
    quiet = {
        i: r
        for i, r in reads.by_iteration.items()
        if i not in records and i not in _first_steps_of_each_kind(trainer)
    }
    assert quiet == {}, f"host reads between metrics records: {quiet}"
    # The counter does see reads: every record reads the accumulated loss.
    assert all(reads.by_iteration.get(i) for i in (4, 8, 12))


def _first_steps_of_each_kind(trainer: Trainer) -> set[int]:
    """The 1-based steps at which a run meets a (first order, step weights) kind it has not."""
    cfg, algorithm = trainer.config, trainer.components.algorithm
    total, seen, firsts = cfg.train.iterations, set(), set()
    for i in range(total):
        kind = (
            algorithm.first_order(cfg.inner, i, total),
            algorithm.step_weights(cfg.inner, i, total) is not None,
        )
        if kind not in seen:
            seen.add(kind)
            firsts.add(i + 1)
    return firsts
