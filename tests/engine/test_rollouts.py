"""Rollout meta-batches, the policy terms TRPO and PPO re-evaluate, and the paper's evaluation
protocol: batched paths against the per-task ``torch.autograd`` loop and finite differences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mamlflow.core import (
    ConfigError,
    ModelIO,
    TaskBatch,
    per_task,
)
from mamlflow.engine import (
    CollectedPolicyTerms,
    PluginHost,
    Rollouts,
    Trainer,
    resolve,
)
from mamlflow.engine.rollouts import HVP_CHUNK_ROWS, tasks_per_chunk
from mamlflow.kernels import make_meta_step, make_policy_terms
from tests.navigation import (
    navigation_components,
    navigation_config,
    navigation_meta_batch,
)


def test_meta_gradient_batched_matches_loop_and_finite_differences(host: PluginHost) -> None:
    c = navigation_components(host, "kernel.dtype=float64")
    _, params, learnables, batch = navigation_meta_batch(c)
    objective = c.objective()
    steps = {
        s: make_meta_step(objective, c.adapter, steps=1, first_order=False, strategy=s)
        for s in ("loop", "batched")
    }
    loop = steps["loop"](params, learnables, batch.support, batch.query, 1.0)
    fast = steps["batched"](params, learnables, batch.support, batch.query, 1.0)
    for k in params:
        torch.testing.assert_close(fast.grads[k], loop.grads[k], rtol=1e-9, atol=1e-11)
    # Finite differences of the meta-loss (the query surrogate after the inner PG step).
    terms = make_policy_terms(
        objective, c.family.kl(c.learner), c.adapter, steps=1, first_order=False
    )
    gen = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    eps = 1e-5

    def at(sign: float) -> float:
        moved = {k: v + sign * eps * direction[k] for k, v in params.items()}
        return float(terms(moved, learnables, batch.support, batch.query)[0])

    numeric = (at(1) - at(-1)) / (2 * eps)
    analytic = sum(float((loop.grads[k] * direction[k]).sum()) for k in params)
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    # First order differs: the second-order term is really there.
    fo = make_meta_step(objective, c.adapter, steps=1, first_order=True, strategy="batched")
    first = fo(params, learnables, batch.support, batch.query, 1.0)
    gap = max(float((first.grads[k] - loop.grads[k]).abs().max()) for k in params)
    assert gap > 1e-6


def test_policy_terms_batched_match_loop_and_the_kl_is_a_metric(host: PluginHost) -> None:
    c = navigation_components(host, "kernel.dtype=float64")
    rollouts, params, learnables, batch = navigation_meta_batch(c)
    kl = c.family.kl(c.learner)
    fns = {
        s: make_policy_terms(c.objective(), kl, c.adapter, steps=1, first_order=False, strategy=s)
        for s in ("loop", "batched")
    }
    values = {s: f(params, learnables, batch.support, batch.query) for s, f in fns.items()}
    torch.testing.assert_close(values["batched"][0], values["loop"][0], rtol=1e-10, atol=1e-12)
    # At the collecting parameters the adapted policies are the collecting ones: KL 0.
    assert abs(float(values["batched"][1])) < 1e-10
    terms = CollectedPolicyTerms(
        rollouts, (params, learnables), batch, meta_batch_size=3, first_order=False
    )
    gen = torch.Generator().manual_seed(5)
    u = [torch.randn(v.shape, generator=gen, dtype=v.dtype) for v in params.values()]
    v = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in params.values()]
    hu, hv = terms.hvp(u), terms.hvp(v)
    dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(v, hu) == pytest.approx(dot(u, hv), rel=1e-8)  # symmetric
    assert dot(u, hu) > 0  # and positive: the KL's Hessian at its minimum
    # The reference: the same product through the per-task loop, by double backward.
    theta = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    _, kl_loop = fns["loop"](theta, learnables, batch.support, batch.query)
    g = torch.autograd.grad(kl_loop / 3, list(theta.values()), create_graph=True)
    ref = torch.autograd.grad(
        sum((a * b).sum() for a, b in zip(g, u, strict=True)), list(theta.values())
    )
    for a, b in zip(hu, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    terms.release()


def test_rl_config_errors_name_the_fix(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inner\.steps=1"):
        Trainer(navigation_config(host, "inner.steps=2"), tmp_path / "a", host)
    sinusoid = resolve(host, preset="sinusoid", sets=("outer.name=trpo",)).config
    with pytest.raises(ConfigError, match=r"needs a rollout task family.*use adam"):
        Trainer(sinusoid, tmp_path / "b", host)
    with pytest.raises(ConfigError, match="gaussian-mlp is a policy"):
        plugin = host.model("gaussian-mlp")
        plugin(plugin.Config(name="gaussian-mlp")).build(
            ModelIO((1,), 1)
        )  # sinusoid's regression io


def test_evaluation_collects_fresh_trajectories_per_step_and_scales_later_steps(
    host: PluginHost,
) -> None:
    """``Rollouts.curve`` against the protocol written out: collect, score, one SGD step, …"""
    c = navigation_components(host, "kernel.dtype=float64")
    params, learnables = c.initial_params()
    rollouts = Rollouts(c.family, c.learner, c.objective(), c.adapter, c.config.inner)
    batch = c.family.sample(0, 0, torch.arange(3), split="test").to(c.device, c.dtype)
    curve = rollouts.curve(
        batch, params, learnables, steps=2, trajectories=4, seed=0, split="test", later_scale=0.5
    )
    objective, lr = c.objective(), c.config.inner.lr
    for i in range(3):
        task = batch.shard(i, i + 1)
        current = dict(params)
        for k, rate in enumerate((lr, 0.5 * lr, None)):
            data = c.family.collect(
                task,
                c.learner,
                per_task(current, 1),
                seed=0,
                iteration=0,
                phase=2 + k,
                trajectories=4,
                split="test",
            )
            expected = float((data["rewards"] * data["mask"]).sum(-1).mean())
            assert float(curve.returns[i, k]) == pytest.approx(expected, rel=1e-9)
            if rate is None:
                break
            leaves = {n: v.detach().requires_grad_(True) for n, v in current.items()}
            loss = objective(leaves, {n: v[0] for n, v in data.items()})
            grads = torch.autograd.grad(loss, list(leaves.values()))
            current = {
                n: v.detach() - rate * g for (n, v), g in zip(leaves.items(), grads, strict=True)
            }
        for n in params:
            torch.testing.assert_close(curve.adapted[n][i], current[n])


def test_policy_terms_in_chunks_of_tasks_sum_to_the_whole(host: PluginHost) -> None:
    # On a CPU TRPO's terms run over chunks of whole tasks (cache-sized); every sum must be the
    # one over the whole meta-batch, chunks of uneven size included.
    c = navigation_components(host, "kernel.dtype=float64")
    rollouts, params, learnables, batch = navigation_meta_batch(c, tasks=5)
    whole = CollectedPolicyTerms(
        rollouts, (params, learnables), batch, meta_batch_size=5, first_order=False
    )
    chunked = CollectedPolicyTerms(
        rollouts, (params, learnables), batch, meta_batch_size=5, first_order=False
    )
    assert whole.chunk_tasks == 5  # the small test batch fits one chunk
    chunked.chunk_tasks = 2  # 2 + 2 + 1
    gen = torch.Generator().manual_seed(7)
    v = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in params.values()]
    for a, b in zip(chunked.hvp(v), whole.hvp(v), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    with torch.no_grad():  # away from the collecting parameters, where the KL is not 0
        for p in params.values():
            p.mul_(1.01)
    got, want = chunked.loss_kl(), whole.loss_kl()
    assert got.kl > 0
    assert got.loss == pytest.approx(want.loss, rel=1e-12)
    assert got.kl == pytest.approx(want.kl, rel=1e-10)


@pytest.mark.parametrize(
    ("preset_shape", "tasks", "per_chunk"),
    [((20, 100), 20, 4), ((20, 200), 40, 2), ((5, 20), 3, 3), ((100, 200), 4, 1)],
)
def test_chunks_hold_about_hvp_chunk_rows_time_steps(
    preset_shape: tuple[int, int], tasks: int, per_chunk: int
) -> None:
    # The paper's navigation (20 trajectories × 100 steps) and HalfCheetah (20 × 200) meta-batches,
    # a small one, and tasks longer than a chunk (one task each).
    mask = torch.ones(tasks, *preset_shape)
    batch = TaskBatch({"mask": mask}, {"mask": mask}, torch.arange(tasks), {})
    assert tasks_per_chunk(batch) == per_chunk
    assert tasks_per_chunk(batch) * preset_shape[0] * preset_shape[1] <= max(
        HVP_CHUNK_ROWS, preset_shape[0] * preset_shape[1]
    )
