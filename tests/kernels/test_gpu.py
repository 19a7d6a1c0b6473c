"""The CUDA path: every strategy against the reference loop on the GPU, and a run end to end.

Skipped on machines without CUDA (see conftest.py); ``benchmarks/gpu_check.sh`` runs this file on
a GPU machine (``pytest -m gpu``). Kept small: each compiled case costs a compile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from mamlflow.core import Learner, ModelIO, StepResult, TaskBatch, sgd
from mamlflow.kernels import exact_float32, make_meta_step
from mamlflow.plugins.conv4 import Conv4, Conv4Config
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _check(actual: StepResult, expected: StepResult, dtype: torch.dtype) -> None:
    tol = 1e-9 if dtype == torch.float64 else 1e-4  # relative to the largest entry
    scale = max(v.abs().max().item() for v in expected.grads.values())
    assert scale > 0
    for k, want in expected.grads.items():
        got = actual.grads[k]
        assert got.device.type == "cuda" and got.shape == want.shape, k
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=k)
    torch.testing.assert_close(
        actual.loss, expected.loss, rtol=tol, atol=tol * expected.loss.abs().item()
    )


def _sinusoid(dtype: torch.dtype) -> tuple[Learner, TaskBatch, object]:
    family = Sinusoid(SinusoidConfig(name="sinusoid"))
    torch.manual_seed(0)
    learner = Learner(MLP(MLPConfig(name="mlp")).build(family.io)).to(CUDA, dtype)
    batch = family.sample(0, 0, torch.arange(25)).to(CUDA, dtype)
    return learner, batch, family.objective(learner)


@pytest.mark.parametrize(
    ("strategy", "dtype"),
    [
        (strategy, dtype)
        for strategy in ("batched", "compiled", "cudagraphs")
        for dtype in (torch.float64, torch.float32)
    ]
    + [("compiled-loop", torch.float64), ("compiled-split", torch.float64)],
)
def test_sinusoid_strategies_match_the_loop_on_cuda(strategy: str, dtype: torch.dtype) -> None:
    learner, batch, objective = _sinusoid(dtype)
    params = learner.init_params()

    def run(name: str) -> StepResult:
        step = make_meta_step(objective, sgd(0.01), steps=2, first_order=False, strategy=name)  # type: ignore[arg-type]
        return step(params, {}, batch.support, batch.query, 1 / 25)

    expected = run("loop")
    actual = run(strategy)
    _check(actual, expected, dtype)
    if strategy == "cudagraphs":  # replays must not hand out buffers the next replay overwrites
        again = run(strategy)
        _check(again, expected, dtype)
        _check(actual, expected, dtype)


def _episode(dtype: torch.dtype) -> TaskBatch:
    g = torch.Generator().manual_seed(0)

    def part() -> dict[str, Tensor]:
        x = torch.randn(4, 5, 1, 28, 28, generator=g, dtype=torch.float64)
        y = torch.stack([torch.randperm(5, generator=g) for _ in range(4)])
        return {"x": x, "y": y}

    return TaskBatch(part(), part(), torch.arange(4)).to(CUDA, dtype)


@pytest.mark.parametrize(
    ("strategy", "downsample"),
    [("batched", "stride"), ("batched", "maxpool"), ("compiled", "stride")],
)
def test_conv4_strategies_match_the_loop_on_cuda(strategy: str, downsample: str) -> None:
    dtype = torch.float32
    torch.manual_seed(1)
    config = Conv4Config(name="conv4", filters=16, downsample=downsample)
    learner = Learner(Conv4(config).build(ModelIO((1, 28, 28), 5))).to(CUDA, dtype)

    def objective(params: Mapping[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(learner(dict(params), data["x"]), data["y"])

    batch, params = _episode(dtype), learner.init_params()

    def run(name: str) -> StepResult:
        step = make_meta_step(objective, sgd(0.4), steps=1, first_order=False, strategy=name)  # type: ignore[arg-type]
        with exact_float32(CUDA):  # cuDNN's default TF32 differs by ~1e-2 between algorithms
            return step(params, {}, batch.support, batch.query, 0.25)

    _check(run(strategy), run("loop"), dtype)


def test_exact_float32_gives_ieee_convolutions_on_cuda() -> None:
    # The parity checks above rely on it: inside the block a conv net matches float64.
    torch.manual_seed(1)
    config = Conv4Config(name="conv4", filters=16, downsample="maxpool")
    learner = Learner(Conv4(config).build(ModelIO((1, 28, 28), 5))).to(CUDA)
    x = _episode(torch.float32).support["x"][0]
    params = learner.init_params()
    with exact_float32(CUDA):
        exact = learner(params, x)
    assert torch.backends.cudnn.allow_tf32  # restored
    with torch.no_grad():
        double = Learner(Conv4(config).build(ModelIO((1, 28, 28), 5))).to(CUDA, torch.float64)
        want = double({k: v.double() for k, v in params.items()}, x.double())
    assert (exact.double() - want).abs().max() < 1e-4 * want.abs().max()


def test_a_run_trains_and_evaluates_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "mamlflow"]
    sets = ["train.iterations=300", "train.log_every=100", "eval.tasks=50", "eval.steps=2"]
    run = [*cli, "run", "--plugin", "sinusoid", "--device", "cuda", "--out", str(out)]
    subprocess.run([*run, *(a for s in sets for a in ("--set", s))], check=True)
    config = json.loads((out / "config.json").read_text())
    assert "cuda" in json.dumps(config)
    shown = subprocess.run(
        [*cli, "eval", str(out), "--shots", "5", "--json", "--no-plots"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(shown.stdout)
    assert report["steps"] == [0, 1, 2]
    assert report["mean"][2] < report["mean"][0]  # adaptation helps after 300 iterations
