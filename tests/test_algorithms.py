"""Algorithms of the MAML family: each learns on sinusoid within a small budget (conformance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mamlflow.core.checkpoint import load_checkpoint
from mamlflow.core.components import build_components
from mamlflow.core.config import resolve
from mamlflow.core.errors import ConfigError
from mamlflow.core.evaluate import evaluate
from mamlflow.core.host import PluginHost
from mamlflow.core.trainer import Trainer
from mamlflow.kernels import make_adapt, make_meta_step
from mamlflow.plugins.metasgd import PerParameterSGD


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "anil"])
def test_algorithm_lowers_the_sinusoid_loss_after_adaptation(
    algorithm: str, host: PluginHost, tmp_path: Path
) -> None:
    sets = (
        f"algorithm.name={algorithm}",
        "train.iterations=1500",
        "train.log_every=500",
        "kernel.strategy=batched",
    )
    config = resolve(host, preset="sinusoid", sets=sets).config
    Trainer(config, tmp_path, host).fit()
    ckpt = load_checkpoint(tmp_path)
    components = build_components(config, host)
    result, _ = evaluate(components, ckpt.params, ckpt.learnables, shots=5, steps=1, tasks=200)
    before, after = result.mean
    assert after < 0.95 * before, (algorithm, result.mean)
    if algorithm == "metasgd":  # the learning rates themselves were meta-learned
        assert ckpt.learnables.keys() == ckpt.params.keys()
        moved = max((v - 0.01).abs().max().item() for v in ckpt.learnables.values())
        assert moved > 1e-4


def test_metasgd_step_is_sgd_with_a_learned_rate_per_entry(host: PluginHost) -> None:
    config = resolve(host, preset="sinusoid", sets=("kernel.dtype=float64",)).config
    components = build_components(config, host)
    objective = components.family.objective(components.learner)
    params = components.learner.init_params()
    adapter = PerParameterSGD(0.01)
    lr = {k: 0.005 + 0.02 * torch.rand_like(v) for k, v in params.items()}
    batch = components.family.sample(0, 0, torch.arange(4)).to("cpu", torch.float64)
    loop = make_meta_step(objective, adapter, steps=2, first_order=False, strategy="loop")
    batched = make_meta_step(objective, adapter, steps=2, first_order=False, strategy="batched")
    a = loop(params, lr, batch.support, batch.query, 0.25)
    b = batched(params, lr, batch.support, batch.query, 0.25)
    for k in params:
        torch.testing.assert_close(b.grads[k], a.grads[k], rtol=0, atol=1e-10)
        torch.testing.assert_close(b.learnable_grads[k], a.learnable_grads[k], rtol=0, atol=1e-10)
    assert max(v.abs().max().item() for v in a.learnable_grads.values()) > 0


def test_anil_adapts_only_the_head_and_matches_the_loop(host: PluginHost) -> None:
    config = resolve(
        host, preset="sinusoid", sets=("kernel.dtype=float64", "algorithm.name=anil")
    ).config
    components = build_components(config, host)
    objective = components.family.objective(components.learner)
    params = components.learner.init_params()
    adapter = components.adapter
    assert adapter.adapted(params) == {"4.weight", "4.bias"}  # the MLP's output layer
    batch = components.family.sample(0, 0, torch.arange(4)).to("cpu", torch.float64)
    adapted = make_adapt(objective, adapter, steps=2)(params, {}, batch.support)
    for k, v in params.items():
        moved = not torch.equal(adapted[k][0], v)
        assert moved == k.startswith("4."), k
    for first_order in (False, True):
        loop, batched = (
            make_meta_step(objective, adapter, steps=2, first_order=first_order, strategy=s)(
                params, {}, batch.support, batch.query, 0.25
            )
            for s in ("loop", "batched")
        )
        for k in params:
            torch.testing.assert_close(batched.grads[k], loop.grads[k], rtol=0, atol=1e-10)
        # the body is meta-learned through the head's update
        assert loop.grads["0.weight"].abs().max() > 0


def test_anil_names_the_modules_when_the_head_is_wrong(host: PluginHost) -> None:
    config = resolve(
        host, preset="sinusoid", sets=("algorithm.name=anil", "algorithm.head=fc")
    ).config
    components = build_components(config, host)
    with pytest.raises(ConfigError, match=r"no parameter is named 'fc'.*modules: 0, 2, 4"):
        components.adapter.adapted(components.learner.init_params())
