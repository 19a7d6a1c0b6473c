"""CPU threads are planned like kernels: measured interleaved, fixed when asked, re-measured
when the live step time stays far above the plan's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mamlflow.core import ConfigError
from mamlflow.engine import PluginHost, Trainer, resolve, threads_per_process
from mamlflow.engine import trainer as trainer_module
from mamlflow.engine.threads import (
    ThroughputWatch,
    measure_threads,
    plan_threads,
    usable_cores,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MAMLFLOW_THREADS", raising=False)
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_candidates_are_interleaved_and_the_count_restored() -> None:
    seen: list[int] = []
    torch.set_num_threads(1)
    seconds = measure_threads(lambda: seen.append(torch.get_num_threads()), [1, 2], repeats=3)
    assert seen == [1, 2] + [1, 2] * 3  # a warm-up each, then rounds of every candidate
    assert set(seconds) == {1, 2} and torch.get_num_threads() == 1


def test_a_fixed_count_is_applied_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def never() -> None:
        raise AssertionError("measured")

    plan = plan_threads(1, never, device=CPU)
    assert (plan.threads, plan.reason, plan.seconds) == (1, "kernel.threads", {})
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("MAMLFLOW_THREADS", "2")
    plan = plan_threads("auto", never, device=CPU)
    assert (plan.threads, plan.reason) == (2, "MAMLFLOW_THREADS=2")
    assert threads_per_process(1) == 2
    monkeypatch.setenv("MAMLFLOW_THREADS", "zero")
    with pytest.raises(ConfigError, match="MAMLFLOW_THREADS: 'zero' is not a positive number"):
        plan_threads("auto", never, device=CPU)
    monkeypatch.delenv("MAMLFLOW_THREADS")
    plan = plan_threads("auto", never, device=CPU, processes=usable_cores())
    assert plan.threads == 1 and "processes share the cores" in plan.reason


def test_auto_keeps_fewer_threads_unless_more_are_clearly_faster() -> None:
    if usable_cores() < 2:
        pytest.skip("one core: nothing to choose")
    x = torch.randn(256, 256)

    def step() -> None:  # fast with more threads, unless the machine is busy
        for _ in range(20):
            x @ x

    plan = plan_threads("auto", step, device=CPU, repeats=3)
    assert set(plan.seconds) == {1, usable_cores()}
    fastest = min(plan.seconds, key=plan.seconds.__getitem__)
    assert plan.threads in (1, fastest)
    if plan.threads != 1:
        assert plan.seconds[plan.threads] * 1.05 < plan.seconds[1]
    assert torch.get_num_threads() == plan.threads and "median of 3" in plan.reason


def test_the_watch_fires_once_the_median_of_a_window_is_too_slow_then_cools_down() -> None:
    watch = ThroughputWatch(0.010, factor=2.0, window=5, cooldown=3)
    assert not any(watch.observe(0.011) for _ in range(10))
    assert [watch.observe(0.05) for _ in range(5)] == [False, False, True, False, False]
    watch.replanned(0.04)
    assert not any(watch.observe(0.05) for _ in range(20))  # the new plan expects it


def _train(tmp_path: Path, *sets: str) -> Trainer:
    host = PluginHost()
    base = ("train.iterations=6", "kernel.strategy=batched", "device=cpu")
    trainer = Trainer(resolve(host, preset="sinusoid", sets=(*base, *sets)), tmp_path, host)
    trainer.fit()
    return trainer


def test_a_run_applies_kernel_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mamlflow.trainer"):
        trainer = _train(tmp_path, "kernel.threads=1")
    assert trainer.threads is not None and trainer.threads.threads == 1
    assert torch.get_num_threads() == 1
    assert "threads: 1 (kernel.threads)" in caplog.text


def test_a_short_auto_run_does_not_spend_steps_measuring(tmp_path: Path) -> None:
    assert _train(tmp_path).threads is None


def test_a_long_enough_auto_run_measures_and_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "THREADS_MIN_SECONDS", 0.0)
    trainer = _train(tmp_path)
    assert trainer.threads is not None and set(trainer.threads.seconds) == {1, usable_cores()}
    assert trainer._watch is not None
