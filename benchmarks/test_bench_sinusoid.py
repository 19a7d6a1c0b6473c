"""Wall time of one sinusoid meta-step per strategy, at the paper's shapes (Finn et al. 2017, §5.1).

Meta-batch 25, K=10 support and 10 query points per task, MLP 1-40-40-1 (ReLU), one inner SGD
step with α=0.01, second and first order, float32 on CPU. Every strategy runs on the same fixed
batch and is checked against the reference loop of the same order before it is timed; the
compiled strategies are compiled (and warmed up) outside the timed region. Run with
``pytest benchmarks --benchmark-only`` (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from mamlflow.core import (
    Learner,
    MetaStep,
    Params,
    StepResult,
    Strategy,
    TaskBatch,
    TaskObjective,
    sgd,
)
from mamlflow.kernels import make_meta_step
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig

META_BATCH = 25
INNER_LR = 0.01
INNER_STEPS = 1
ORDERS = {"second": False, "first": True}  # order -> first_order

# (rounds, iterations per round): 1-2 s of timing per strategy on a 2-core CPU.
SCHEDULE: dict[Strategy, tuple[int, int]] = {
    "loop": (30, 3),
    "batched": (50, 10),
    "compiled": (100, 20),
    "compiled-loop": (30, 5),
    "compiled-split": (30, 5),
}


@dataclass(frozen=True)
class Setup:
    params: Params
    batch: TaskBatch
    objective: TaskObjective

    def step(self, strategy: Strategy, first_order: bool) -> MetaStep:
        adapter = sgd(INNER_LR)
        return make_meta_step(
            self.objective, adapter, steps=INNER_STEPS, first_order=first_order, strategy=strategy
        )

    def run(self, step: MetaStep) -> StepResult:
        return step(self.params, {}, self.batch.support, self.batch.query, 1.0 / META_BATCH)


@pytest.fixture(scope="module")
def setup() -> Setup:
    family = Sinusoid(SinusoidConfig(name="sinusoid", shots=10, query=10))
    torch.manual_seed(0)
    learner = Learner(
        MLP(MLPConfig(name="mlp", hidden=(40, 40), activation="relu")).build(family.io)
    )
    batch = family.sample(0, 0, torch.arange(META_BATCH))
    return Setup(learner.init_params(), batch, family.objective(learner))


@pytest.fixture(scope="module")
def references(setup: Setup) -> dict[str, StepResult]:
    return {order: setup.run(setup.step("loop", first)) for order, first in ORDERS.items()}


@pytest.mark.parametrize("order", list(ORDERS))
@pytest.mark.parametrize("strategy", list(SCHEDULE))
def test_sinusoid_meta_step(
    benchmark: BenchmarkFixture,
    setup: Setup,
    references: dict[str, StepResult],
    strategy: Strategy,
    order: str,
) -> None:
    step = setup.step(strategy, ORDERS[order])
    result = setup.run(step)  # compiles the compiled ones; checks every strategy before timing
    for k, want in references[order].grads.items():
        scale = want.abs().max().item()
        torch.testing.assert_close(result.grads[k], want, rtol=1e-5, atol=1e-5 * scale)

    rounds, iterations = SCHEDULE[strategy]
    benchmark.group = f"sinusoid meta-step (25 tasks, K=10, 1-40-40-1, 1 step, {order} order)"
    benchmark.extra_info.update(
        strategy=strategy, order=order, meta_batch=META_BATCH, threads=torch.get_num_threads()
    )
    benchmark.pedantic(
        setup.run, args=(step,), rounds=rounds, iterations=iterations, warmup_rounds=2
    )
