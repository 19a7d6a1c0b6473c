"""Wall time of one sinusoid meta-step per strategy, at the paper's shapes (Finn et al. 2017, §5.1).

Meta-batch 25, K=10 support and 10 query points per task, MLP 1-40-40-1 (ReLU), one inner SGD
step with α=0.01, second order, float32 on CPU. Every strategy runs on the same fixed batch and
is checked against the reference loop before it is timed; ``compiled`` is compiled (and warmed
up) outside the timed region. Run with ``pytest benchmarks --benchmark-only`` (see README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from mamlflow.core.adapter import Params, sgd
from mamlflow.core.learner import Learner
from mamlflow.core.task import TaskBatch, TaskObjective
from mamlflow.kernels import MetaStep, StepResult, Strategy, make_meta_step
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig

META_BATCH = 25
INNER_LR = 0.01
INNER_STEPS = 1

# (rounds, iterations per round): 1-2 s of timing per strategy on a 2-core CPU.
SCHEDULE: dict[Strategy, tuple[int, int]] = {
    "loop": (30, 3),
    "batched": (50, 10),
    "compiled": (100, 20),
}


@dataclass(frozen=True)
class Setup:
    params: Params
    batch: TaskBatch
    objective: TaskObjective

    def step(self, strategy: Strategy) -> MetaStep:
        adapter = sgd(INNER_LR)
        return make_meta_step(
            self.objective, adapter, steps=INNER_STEPS, first_order=False, strategy=strategy
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
def reference(setup: Setup) -> StepResult:
    return setup.run(setup.step("loop"))


@pytest.mark.parametrize("strategy", ["loop", "batched", "compiled"])
def test_sinusoid_meta_step(
    benchmark: BenchmarkFixture, setup: Setup, reference: StepResult, strategy: Strategy
) -> None:
    step = setup.step(strategy)
    result = setup.run(step)  # compiles ``compiled``; checks every strategy before timing it
    for k, want in reference.grads.items():
        scale = want.abs().max().item()
        torch.testing.assert_close(result.grads[k], want, rtol=1e-5, atol=1e-5 * scale)

    rounds, iterations = SCHEDULE[strategy]
    benchmark.group = "sinusoid meta-step (25 tasks, K=10, 1-40-40-1, 1 step, 2nd order)"
    benchmark.extra_info.update(
        strategy=strategy, meta_batch=META_BATCH, threads=torch.get_num_threads()
    )
    benchmark.pedantic(
        setup.run, args=(step,), rounds=rounds, iterations=iterations, warmup_rounds=2
    )
