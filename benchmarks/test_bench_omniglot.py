"""Wall time of one Omniglot conv-4 meta-step per strategy, at the paper's shapes (§5.2).

The ``omniglot`` preset: 5-way 1-shot with 15 queries per class (``task.query=15``, 80 images of
28×28 per task), meta-batch 32, conv-4 with 64 filters and batch norm, one inner SGD step with
α=0.4, float32 on CPU. Both downsampling variants are timed: ``stride`` (stride-2 convs, the
paper's Omniglot net) and ``maxpool`` (stride-1 convs and 2×2 max-pools, the MiniImagenet net at
Omniglot's size), each in second and first order.

Strategies: ``loop`` (the reference), ``batched`` (vmap: grouped convolutions on a CPU),
``compiled-loop`` (one task's step compiled, channels-last), ``compiled-split`` (the adaptation
of all tasks vmapped and compiled, each task's query loss compiled on its own) and, for ``stride``
only,
``compiled`` (the vmapped step compiled; its cold compile takes a minute or more here). Every
strategy runs on the same meta-batch and its meta-gradient is checked against the loop of the
same model and order before it is timed; compiling happens in that check, outside the timed
region. A loop step takes 1-3 s on a 2-core CPU, so the rounds are few. Needs the Omniglot
archives (``MAMLFLOW_DATA=<root>`` with ``omniglot/images_*.zip``); the module skips without them.
Run with ``pytest benchmarks/test_bench_omniglot.py --benchmark-only`` (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from mamlflow.core import (
    Adapter,
    DataError,
    MetaStep,
    Params,
    StepResult,
    Strategy,
    TaskBatch,
    TaskObjective,
)
from mamlflow.engine import build_components, get_host, resolve
from mamlflow.kernels import make_meta_step

META_BATCH = 32
SETS = ("task.query=15", f"train.meta_batch_size={META_BATCH}", "task.download=false")
ORDERS = {"second": False, "first": True}  # order -> first_order

# (strategy, downsample) -> rounds of one call each, after one warm-up round: 3-15 s apiece.
CASES: dict[tuple[Strategy, str], int] = {
    ("loop", "stride"): 3,
    ("batched", "stride"): 3,
    ("compiled-loop", "stride"): 5,
    ("compiled-split", "stride"): 5,
    ("compiled", "stride"): 3,
    ("loop", "maxpool"): 3,
    ("batched", "maxpool"): 3,
    ("compiled-loop", "maxpool"): 5,
    ("compiled-split", "maxpool"): 5,
}

# Parity is judged against the whole meta-gradient's scale: conv biases before batch norm have a
# zero meta-gradient in exact arithmetic and only float32 rounding noise in practice. Second order
# through max-pools amplifies that noise: compiled-loop vs loop measured 1.2e-4 to 2e-4 of the
# largest entry in float32 here, and 6e-15 in float64, so the tolerance is 1e-3 (a wrong kernel is
# off by far more).
RTOL = 1e-3


@dataclass(frozen=True)
class Setup:
    """One model variant's first meta-batch and initial θ, φ, as a run of the preset has them."""

    params: Params
    learnables: Params
    batch: TaskBatch
    objective: TaskObjective
    adapter: Adapter
    inner_steps: int

    def step(self, strategy: Strategy, first_order: bool) -> MetaStep:
        return make_meta_step(
            self.objective,
            self.adapter,
            steps=self.inner_steps,
            first_order=first_order,
            strategy=strategy,
        )

    def run(self, step: MetaStep) -> StepResult:
        return step(
            self.params, self.learnables, self.batch.support, self.batch.query, 1.0 / META_BATCH
        )


def _build(downsample: str) -> Setup:
    host = get_host()
    config = resolve(
        host, preset="omniglot", sets=[*SETS, f"model.downsample={downsample}", "device=cpu"]
    ).config
    components = build_components(config, host)
    try:
        batch = components.family.sample(config.seed, 0, torch.arange(META_BATCH))
    except DataError as error:
        pytest.skip(f"no Omniglot data, so no Omniglot benchmark: {error}")
    params, learnables = components.initial_params()
    return Setup(
        params,
        learnables,
        batch.to(components.device, components.dtype),
        components.family.objective(components.learner),
        components.adapter,
        config.inner.steps,
    )


@pytest.fixture(scope="module")
def setups() -> dict[str, Setup]:
    """Both model variants; skips the whole module (once) when Omniglot cannot be found."""
    return {downsample: _build(downsample) for downsample in ("stride", "maxpool")}


@pytest.fixture(scope="module")
def references() -> dict[tuple[str, str], StepResult]:
    """Loop meta-gradients by (downsample, order), computed once each."""
    return {}


def _assert_matches(result: StepResult, want: StepResult) -> None:
    expected = {**want.grads, **{f"φ.{k}": v for k, v in want.learnable_grads.items()}}
    got = {**result.grads, **{f"φ.{k}": v for k, v in result.learnable_grads.items()}}
    scale = max(v.abs().max().item() for v in expected.values())
    for k, v in expected.items():
        torch.testing.assert_close(
            got[k], v, rtol=RTOL, atol=RTOL * scale, msg=lambda m, k=k: f"{k}: {m}"
        )


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize(("strategy", "downsample"), list(CASES))
def test_omniglot_meta_step(
    benchmark: BenchmarkFixture,
    setups: dict[str, Setup],
    references: dict[tuple[str, str], StepResult],
    strategy: Strategy,
    downsample: str,
    order: str,
) -> None:
    setup = setups[downsample]
    first_order = ORDERS[order]
    if (downsample, order) not in references:
        references[downsample, order] = setup.run(setup.step("loop", first_order))
    step = setup.step(strategy, first_order)
    _assert_matches(setup.run(step), references[downsample, order])  # compiles, checks

    benchmark.group = (
        f"omniglot conv-4 ({downsample}) meta-step (32 tasks, 5-way 1-shot, 15 query, "
        f"1 step, {order} order)"
    )
    benchmark.extra_info.update(
        strategy=strategy,
        downsample=downsample,
        order=order,
        meta_batch=META_BATCH,
        threads=torch.get_num_threads(),
    )
    benchmark.pedantic(
        setup.run, args=(step,), rounds=CASES[strategy, downsample], iterations=1, warmup_rounds=1
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["tasks_per_s"] = META_BATCH / benchmark.stats.stats.median
