"""TRPO's conjugate gradient against a dense solve, and one trust-region step on a real batch."""

from __future__ import annotations

import pytest
import torch

from mamlflow.engine import (
    CollectedPolicyTerms,
    PluginHost,
)
from mamlflow.kernels import make_meta_step
from mamlflow.plugins.trpo import conjugate_gradient, conjugate_gradient_and_product
from tests.navigation import (
    navigation_components,
    navigation_meta_batch,
)


def test_conjugate_gradient_solves_a_positive_definite_system() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: [a @ v[0]], [b], iterations=6)[0]
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


@pytest.mark.parametrize("iterations", [2, 5, 40])
def test_conjugate_gradient_gives_a_times_x_from_its_own_products(iterations: int) -> None:
    # Stopped early (x is not the solution), and run far past convergence on an ill-conditioned
    # matrix, where the directions lose conjugacy: A x is still A x.
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-6, 2, 30, dtype=torch.float64)) @ q.T
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    calls = []

    def matvec(v: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(1)
        return [a @ v[0]]

    (x,), (ax,) = conjugate_gradient_and_product(matvec, [b], iterations, tolerance=0.0)
    assert len(calls) == iterations
    torch.testing.assert_close(ax, a @ x, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x, conjugate_gradient(matvec, [b], iterations, tolerance=0.0)[0])


def test_trpo_step_keeps_the_kl_bound_and_lowers_the_meta_loss(host: PluginHost) -> None:
    c = navigation_components(host, "kernel.dtype=float64", "outer.max_kl=0.002")
    rollouts, params, learnables, batch = navigation_meta_batch(c, tasks=4)
    step = make_meta_step(c.objective(), c.adapter, steps=1, first_order=False, strategy="batched")
    result = step(params, learnables, batch.support, batch.query, 1 / 4)
    outer = host.optimizer("trpo")(c.config.outer)
    optimizer = outer.build(list(params.values()))
    for k, p in params.items():
        p.grad = result.grads[k]
    before = {k: v.clone() for k, v in params.items()}
    terms = CollectedPolicyTerms(
        rollouts, (params, learnables), batch, meta_batch_size=4, first_order=False
    )
    report = outer.step(optimizer, terms)
    assert report.line_search is not None and report.line_search >= 1, report
    loss, kl = terms.loss_kl()
    assert 0 < kl <= 0.002 and loss < float(result.loss)
    assert kl == pytest.approx(report.kl) and loss == pytest.approx(report.loss)
    assert any(not torch.equal(before[k], params[k]) for k in params)


def test_trpo_steps_only_through_its_policy_step(host: PluginHost) -> None:
    outer = host.optimizer("trpo")(host.optimizer("trpo").Config(name="trpo"))
    optimizer = outer.build([torch.zeros(3, requires_grad=True)])
    with pytest.raises(TypeError, match=r"TRPO steps through TRPO.policy_step"):
        optimizer.step()
    assert optimizer.state_dict()["param_groups"][0]["lr"] == 1.0  # checkpoints hold its lr


def test_a_trpo_step_on_chunks_of_tasks_is_the_whole_batchs_step(host: PluginHost) -> None:
    """The same step to rounding. Conjugate gradient amplifies rounding by the KL Hessian's
    condition number: with the preset's damping (1e-5) on this tiny policy a 1e-16 change of
    summation order moves the float64 step by ~1%, so the comparison damps it to 0.1, where the
    rest of the step (CG, the scaling, the line search) is what is compared."""
    sets = ("kernel.dtype=float64", "outer.max_kl=0.002", "outer.cg_damping=0.1")
    c = navigation_components(host, *sets)
    rollouts, params, learnables, batch = navigation_meta_batch(c, tasks=5)
    step = make_meta_step(c.objective(), c.adapter, steps=1, first_order=False, strategy="batched")
    result = step(params, learnables, batch.support, batch.query, 1 / 5)
    start = {k: v.clone() for k, v in params.items()}
    after = []
    for chunk in (5, 2):
        moved = {k: v.clone() for k, v in start.items()}
        outer = host.optimizer("trpo")(c.config.outer)
        optimizer = outer.build(list(moved.values()))
        for k, p in moved.items():
            p.grad = result.grads[k].clone()
        terms = CollectedPolicyTerms(
            rollouts, (moved, learnables), batch, meta_batch_size=5, first_order=False
        )
        terms.chunk_tasks = chunk
        assert outer.step(optimizer, terms).line_search >= 1
        after.append(moved)
    whole, chunked = after
    for k in whole:
        assert not torch.equal(whole[k], start[k])
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-9, atol=1e-12)
