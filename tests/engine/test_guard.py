"""A plugin's exception, running out of memory or disk: one line that names what to fix."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from mamlflow.core import (
    Callback,
    CheckpointError,
    PluginError,
    ResourceError,
    TaskBatch,
    TrainStart,
    hookimpl,
    rundir,
)
from mamlflow.engine import PluginHost, Trainer, plugin_code, resolve, writing
from mamlflow.plugins.sinusoid import Sinusoid


class BrokenSample(Sinusoid):
    name: ClassVar[str] = "broken-sample"

    def sample(self, seed: int, iteration: int, task_indices: Tensor, **kw: Any) -> TaskBatch:
        if iteration == 2:
            raise ValueError("amplitude range is empty")
        return super().sample(seed, iteration, task_indices, **kw)


class BrokenStart(Callback):
    name: ClassVar[str] = "broken-start"

    def on_train_start(self, state: TrainStart) -> None:
        raise KeyError("best")


class _Plugin:
    @hookimpl
    def register_task_families(self, register: Callable[[type], None]) -> None:
        register(BrokenSample)

    @hookimpl
    def register_callbacks(self, register: Callable[[type], None]) -> None:
        register(BrokenStart)


@pytest.fixture
def broken_host() -> Iterator[PluginHost]:
    host = PluginHost(autoload=False)
    undo = host.add_plugin(_Plugin(), "broken")
    yield host
    undo()


def _config(host: PluginHost, *sets: str) -> Any:
    base = ("train.iterations=6", "kernel.strategy=batched", "train.checkpoint_every=1")
    return resolve(host, preset="sinusoid", sets=(*base, *sets))


def test_an_exception_in_a_task_family_is_one_line_naming_it(
    broken_host: PluginHost, tmp_path: Path
) -> None:
    trainer = Trainer(_config(broken_host, "task.name=broken-sample"), tmp_path, broken_host)
    with pytest.raises(PluginError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "task family 'broken-sample' raised ValueError in sample(): amplitude range is empty; "
        "fix the plugin"
    ), message
    assert isinstance(info.value.__cause__, ValueError)  # MAMLFLOW_DEBUG=1 shows it
    # The run keeps what it did before: the checkpoint of iteration 2 loads.
    from mamlflow.engine import load_checkpoint

    assert load_checkpoint(tmp_path).iteration == 2


def test_an_exception_in_a_callback_is_one_line_naming_it(
    broken_host: PluginHost, tmp_path: Path
) -> None:
    config = _config(broken_host, "train.callbacks=[metrics, broken-start]")
    with pytest.raises(PluginError, match=r"^callback 'broken-start' raised KeyError in "
                       r"on_train_start\(\): 'best'; fix the plugin"):  # fmt: skip
        Trainer(config, tmp_path, broken_host).fit()


def test_running_out_of_memory_building_a_model_says_what_to_shrink(tmp_path: Path) -> None:
    host = PluginHost(autoload=False)
    config = _config(host, "model.hidden=[100000000,100000000]")
    with pytest.raises(ResourceError, match=r"^out of memory in build\(\) of model 'mlp' .*; make "
                       r"the model \(model\.\*\) smaller$"):  # fmt: skip
        Trainer(config, tmp_path, host)
    assert not (tmp_path / rundir.CONFIG).exists()  # nothing half-made


def test_a_full_disk_and_an_unwritable_place_are_one_line_each(tmp_path: Path) -> None:
    def fail(code: int) -> None:
        with writing(rundir.CHECKPOINT, tmp_path):
            raise OSError(code, errno.errorcode[code])

    with pytest.raises(ResourceError, match=r"no space left on the device writing checkpoint\.pt"):
        fail(errno.ENOSPC)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint\.pt in .* \(EROFS\)"):
        fail(errno.EROFS)


def test_mamlflow_errors_and_interrupts_pass_through_unchanged() -> None:
    with pytest.raises(CheckpointError, match=r"^as it was$"), plugin_code("model 'x'", "build()"):
        raise CheckpointError("as it was")
    with pytest.raises(KeyboardInterrupt), plugin_code("model 'x'", "build()"):
        raise KeyboardInterrupt
    with pytest.raises(ResourceError), plugin_code("model 'x'", "build()"):
        torch.empty(2**62, dtype=torch.uint8)
