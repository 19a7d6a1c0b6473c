"""The next meta-batch is sampled in a background thread, and it is the batch the step wanted."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from mamlflow.core import PluginError, TaskBatch, hookimpl
from mamlflow.engine import PluginHost, Trainer, load_checkpoint, resolve
from mamlflow.engine.prefetch import Prefetcher
from mamlflow.plugins.sinusoid import Sinusoid

SAMPLED_IN: dict[int, int] = {}
"""iteration -> the thread that sampled it, for the training families below."""


class PrefetchedSinusoid(Sinusoid):
    name: ClassVar[str] = "prefetched-sinusoid"
    prefetch: ClassVar[bool] = True

    def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
        if kw.get("split", "train") == "train":
            SAMPLED_IN[iteration] = threading.get_ident()
            if iteration == 5 and seed == 99:
                raise ValueError("no tasks at iteration 5")
        return super().sample(seed, iteration, task_indices, **kw)


class _Plugin:
    @hookimpl
    def register_task_families(self, register: Callable[[type], None]) -> None:
        register(PrefetchedSinusoid)


@pytest.fixture
def host() -> Iterator[PluginHost]:
    host = PluginHost(autoload=False)
    undo = host.add_plugin(_Plugin(), "prefetch-test")
    yield host
    undo()


def _batch(iteration: int) -> TaskBatch:
    x = torch.full((2, 3, 1), float(iteration))
    return TaskBatch({"x": x, "y": x}, {"x": x, "y": x}, torch.arange(2))


def test_take_returns_each_iterations_batch_and_samples_the_next_in_another_thread() -> None:
    threads: dict[int, int] = {}

    def sample(iteration: int) -> TaskBatch:
        threads[iteration] = threading.get_ident()
        return _batch(iteration)

    prefetch = Prefetcher(sample, enabled=True, pin=False)
    try:
        for i in range(4):
            batch = prefetch.take(i, i + 1 if i < 3 else None)
            assert torch.equal(batch.support["x"], _batch(i).support["x"])
    finally:
        prefetch.close()
    main = threading.get_ident()
    assert threads[0] == main  # nothing was predicted for the first one
    assert {threads[i] for i in (1, 2, 3)} != {main}
    assert sorted(threads) == [0, 1, 2, 3]  # the last take asked for nothing more


def test_an_unexpected_iteration_is_sampled_anew_and_disabled_means_the_main_thread() -> None:
    threads: list[int] = []

    def sample(iteration: int) -> TaskBatch:
        threads.append(threading.get_ident())
        return _batch(iteration)

    prefetch = Prefetcher(sample, enabled=False, pin=False)
    assert prefetch.take(0, 1).support["x"][0, 0, 0] == 0
    assert prefetch.take(7, 8).support["x"][0, 0, 0] == 7
    prefetch.close()
    assert set(threads) == {threading.get_ident()}


def _train(host: PluginHost, run_dir: Path, family: str, *sets: str) -> Trainer:
    base = ("train.iterations=8", "kernel.strategy=batched", "train.log_every=1")
    config = resolve(host, preset="sinusoid", sets=(*base, f"task.name={family}", *sets))
    trainer = Trainer(config, run_dir, host)
    trainer.fit()
    return trainer


def test_a_prefetched_run_is_bitwise_the_run_sampled_on_the_main_thread(
    host: PluginHost, tmp_path: Path
) -> None:
    SAMPLED_IN.clear()
    _train(host, tmp_path / "prefetched", "prefetched-sinusoid", "train.val_every=2")
    background = {i for i, t in SAMPLED_IN.items() if t != threading.get_ident()}
    assert background == set(range(1, 8))  # every iteration but the first
    _train(host, tmp_path / "plain", "sinusoid", "train.val_every=2")
    got, want = load_checkpoint(tmp_path / "prefetched"), load_checkpoint(tmp_path / "plain")
    assert got.params.keys() == want.params.keys()
    for name in want.params:
        assert torch.equal(got.params[name], want.params[name]), name


def test_a_background_samples_exception_is_one_line_naming_the_family(
    host: PluginHost, tmp_path: Path
) -> None:
    with pytest.raises(PluginError) as info:
        _train(host, tmp_path, "prefetched-sinusoid", "seed=99", "train.checkpoint_every=1")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "task family 'prefetched-sinusoid' raised ValueError in sample(): no tasks at iteration 5"
    ), message
    assert load_checkpoint(tmp_path).iteration == 5  # what ran before it is kept
