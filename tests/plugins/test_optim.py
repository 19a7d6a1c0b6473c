"""Outer optimizers: adam, adamw, sgd; the learning-rate schedule and meta-gradient clipping."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from mamlflow.core import ConfigError
from mamlflow.engine import PluginHost, Trainer, load_checkpoint, resolve


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


def _outer(host: PluginHost, *sets: str):  # type: ignore[no-untyped-def]
    config = resolve(host, preset="sinusoid", sets=sets).config
    return host.optimizer(config.outer.name)(config.outer)


def test_cosine_schedule_goes_from_lr_to_min_lr(host: PluginHost) -> None:
    outer = _outer(host, "outer.schedule=cosine", "outer.lr=0.01", "outer.min_lr=0.001")
    assert outer.lr_at(0, 100) == pytest.approx(0.01)
    assert outer.lr_at(50, 100) == pytest.approx(0.0055)
    assert outer.lr_at(100, 100) == pytest.approx(0.001)
    assert outer.lr_at(25, 100) == pytest.approx(0.001 + 0.0045 * (1 + math.cos(math.pi / 4)))
    lrs = [outer.lr_at(i, 100) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert _outer(host, "outer.lr=0.01").lr_at(77, 100) == 0.01  # constant by default


def test_linear_schedule_is_a_straight_line_to_min_lr(host: PluginHost) -> None:
    outer = _outer(host, "outer.schedule=linear", "outer.lr=1.0", "outer.min_lr=0.0")
    assert [outer.lr_at(i, 4) for i in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_prepare_step_sets_lr_and_clips(host: PluginHost, name: str) -> None:
    outer = _outer(
        host, f"outer.name={name}", "outer.schedule=cosine", "outer.clip_norm=1.0", "outer.lr=0.1"
    )
    p = torch.zeros(3, requires_grad=True)
    q = torch.zeros(4, requires_grad=True)
    optimizer = outer.build([p, q])
    p.grad, q.grad = torch.full((3,), 10.0), torch.full((4,), -10.0)
    outer.prepare_step(optimizer, [p, q], 50, 100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    norm = torch.cat([p.grad, q.grad]).norm()
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(p.grad, torch.full((3,), 1 / math.sqrt(7)))  # direction kept


def test_clip_value_clamps_each_entry(host: PluginHost) -> None:
    outer = _outer(host, "outer.clip_value=0.5")
    p = torch.zeros(3, requires_grad=True)
    optimizer = outer.build([p])
    p.grad = torch.tensor([2.0, -0.1, -3.0])
    outer.prepare_step(optimizer, [p], 0, 10)
    assert p.grad.tolist() == pytest.approx([0.5, -0.1, -0.5])


def test_adamw_decouples_weight_decay(host: PluginHost) -> None:
    outer = _outer(host, "outer.name=adamw", "outer.lr=0.1", "outer.weight_decay=0.5")
    p = torch.ones(2, requires_grad=True)
    optimizer = outer.build([p])
    p.grad = torch.zeros(2)  # no gradient: only the decay moves p, by lr * wd * p
    optimizer.step()
    assert p.detach().tolist() == pytest.approx([0.95, 0.95])


@pytest.mark.parametrize(
    ("key", "value"), [("outer.clip_norm", "0"), ("outer.min_lr", "-1"), ("outer.schedule", "exp")]
)
def test_bad_outer_options_are_config_errors(host: PluginHost, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve(host, preset="sinusoid", sets=(f"{key}={value}",))


def test_resume_continues_a_cosine_clipped_run_exactly(host: PluginHost, tmp_path: Path) -> None:
    sets = (
        "train.meta_batch_size=5",
        "train.log_every=5",
        "kernel.strategy=batched",
        "outer.name=adamw",
        "outer.schedule=cosine",
        "outer.clip_norm=0.5",
    )
    # The schedule spans train.iterations, so the interrupted run has the same total: stopped
    # after 10 iterations (as by Ctrl-C) and resumed, it must equal the uninterrupted one.
    whole = resolve(host, preset="sinusoid", sets=(*sets, "train.iterations=20")).config
    Trainer(whole, tmp_path / "whole", host).fit()

    def stop_at_10(iteration: int, record: object) -> None:
        if iteration == 10:
            interrupted.request_stop()

    interrupted = Trainer(whole, tmp_path / "split", host, on_step=stop_at_10)
    interrupted.fit()
    assert load_checkpoint(tmp_path / "split").iteration == 10
    Trainer(whole, tmp_path / "split", host, resume=True).fit()
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "split")
    assert a.iteration == b.iteration == 20
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
