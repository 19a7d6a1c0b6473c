"""Algorithms of the MAML family: each learns on sinusoid within a small budget (conformance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mamlflow.core import ConfigError, StagedObjective, adam, sgd
from mamlflow.engine import (
    PluginHost,
    Trainer,
    build_components,
    evaluate,
    load_checkpoint,
    resolve,
)
from mamlflow.kernels import make_adapt, make_meta_step, make_reptile_step
from mamlflow.plugins.mamlpp import PerStepSGD, step_loss_weights
from mamlflow.plugins.metasgd import PerParameterSGD


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "anil", "reptile", "mamlpp"])
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
    if algorithm in ("metasgd", "mamlpp"):  # the learning rates themselves were meta-learned
        assert len(ckpt.learnables) == len(ckpt.params)
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
    objective = components.objective()
    assert isinstance(objective, StagedObjective)  # the body's features are computed once
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


def _sinusoid(host: PluginHost, *sets: str):
    config = resolve(host, preset="sinusoid", sets=("kernel.dtype=float64", *sets)).config
    components = build_components(config, host)
    objective = components.family.objective(components.learner)
    batch = components.family.sample(0, 0, torch.arange(4)).to("cpu", torch.float64)
    return components, objective, components.learner.init_params(), batch


@pytest.mark.parametrize("inner_data", ["union", "support"])
@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_reptile_pseudo_gradient_is_theta_minus_the_adapted_weights(
    host: PluginHost, rule: str, inner_data: str
) -> None:
    _, objective, params, batch = _sinusoid(host)
    adapter = sgd(0.02) if rule == "sgd" else adam(0.01)
    steps = 3
    loop, batched = (
        make_reptile_step(
            objective,
            adapter,
            steps=steps,
            strategy=s,
            inner_data=inner_data,  # type: ignore[arg-type]
        )(params, {}, batch.support, batch.query, 0.25)
        for s in ("loop", "batched")
    )
    data = batch.support
    if inner_data == "union":
        data = {k: torch.cat([batch.support[k], batch.query[k]], dim=1) for k in data}
    adapted = make_adapt(objective, adapter, steps=steps)(params, {}, data)
    for k, v in params.items():
        expected = (v - adapted[k]).sum(0) * 0.25
        assert expected.abs().max() > 0, k
        torch.testing.assert_close(loop.grads[k], expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.grads[k], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(batched.loss, loop.loss, rtol=1e-12, atol=0)


def test_compiled_reptile_matches_its_loop_in_float32(host: PluginHost) -> None:
    config = resolve(host, preset="sinusoid", sets=("algorithm.name=reptile",)).config
    components = build_components(config, host)
    objective = components.objective()
    params = components.learner.init_params()
    batch = components.family.sample(0, 0, torch.arange(8))
    loop, compiled = (
        make_reptile_step(objective, sgd(0.02), steps=3, strategy=s)(  # type: ignore[arg-type]
            params, {}, batch.support, batch.query, 0.125
        )
        for s in ("loop", "compiled")
    )
    scale = max(v.abs().max().item() for v in loop.grads.values())
    for k in params:
        torch.testing.assert_close(compiled.grads[k], loop.grads[k], rtol=1e-4, atol=1e-4 * scale)


def test_reptile_with_outer_sgd_at_rate_one_jumps_to_the_mean_adapted_weights(
    host: PluginHost, tmp_path: Path
) -> None:
    sets = (
        "kernel.dtype=float64",
        "algorithm.name=reptile",
        "inner.steps=2",
        "outer.name=sgd",
        "outer.lr=1.0",
        "train.iterations=1",
        "train.meta_batch_size=4",
    )
    config = resolve(host, preset="sinusoid", sets=sets).config
    Trainer(config, tmp_path, host).fit()
    components = build_components(config, host)
    params = components.learner.init_params()
    batch = components.family.sample(config.seed, 0, torch.arange(4)).to("cpu", torch.float64)
    union = {k: torch.cat([batch.support[k], batch.query[k]], dim=1) for k in batch.support}
    adapted = make_adapt(components.family.objective(components.learner), sgd(0.01), steps=2)(
        params, {}, union
    )
    trained = load_checkpoint(tmp_path).params
    for k in params:
        torch.testing.assert_close(trained[k], adapted[k].mean(0), rtol=0, atol=1e-12)


def test_reptile_refuses_the_maml_only_kernels_in_one_line(host: PluginHost) -> None:
    from mamlflow.kernels import select_meta_step

    components, objective, params, batch = _sinusoid(host, "algorithm.name=reptile")
    with pytest.raises(ConfigError, match=r"no compiled-split kernel; use auto or one of loop, "):
        select_meta_step(
            "compiled-split",
            objective,
            components.adapter,
            steps=1,
            first_order=True,
            remaining_iterations=10,
            probe=(params, {}, batch.support, batch.query),
            factory=components.algorithm.make_meta_step,
            strategies=components.algorithm.strategies or (),
        )


def test_inner_adam_matches_torch_optim_adam_from_a_fresh_state(host: PluginHost) -> None:
    _, objective, params, batch = _sinusoid(host)
    task = {k: v[0] for k, v in batch.support.items()}
    adapted = make_adapt(objective, adam(0.01, (0.5, 0.99), 1e-6), steps=4)(
        params, {}, {k: v[:1] for k, v in batch.support.items()}
    )
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.Adam(leaves.values(), lr=0.01, betas=(0.5, 0.99), eps=1e-6)
    for _ in range(4):
        optimizer.zero_grad()
        objective(leaves, task).backward()
        optimizer.step()
    for k, v in leaves.items():
        torch.testing.assert_close(adapted[k][0], v.detach(), rtol=0, atol=1e-12)


def test_multi_step_loss_weights_anneal_toward_the_last_step() -> None:
    assert step_loss_weights(5, 0.0) == pytest.approx((0.2,) * 5)
    for progress in (0.0, 0.3, 0.7, 1.0):
        weights = step_loss_weights(5, progress)
        assert sum(weights) == pytest.approx(1.0)
        assert weights[-1] >= weights[0]
    end = step_loss_weights(5, 1.0)
    assert end[:-1] == pytest.approx((0.006,) * 4) and end[-1] == pytest.approx(0.976)


@pytest.mark.parametrize("strategy", ["batched", "compiled-split", "compiled-loop"])
def test_the_multi_step_loss_matches_the_loop_and_its_one_hot_case_is_maml(
    host: PluginHost, strategy: str
) -> None:
    _, objective, params, batch = _sinusoid(host)
    adapter = PerStepSGD(0.01, 3)
    lrs = {k: 0.005 + 0.02 * torch.rand(3, dtype=torch.float64) for k in adapter.learnables(params)}
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64) * 0.25

    def run(strategy: str, multi_step: bool, scale):
        step = make_meta_step(
            objective,
            adapter,
            steps=3,
            first_order=False,
            strategy=strategy,  # type: ignore[arg-type]
            multi_step=multi_step,
        )
        return step(params, lrs, batch.support, batch.query, scale)

    loop, fast = run("loop", True, weights), run(strategy, True, weights)
    for k in params:
        torch.testing.assert_close(fast.grads[k], loop.grads[k], rtol=0, atol=1e-10)
    for k in lrs:
        torch.testing.assert_close(
            fast.learnable_grads[k], loop.learnable_grads[k], rtol=0, atol=1e-10
        )
        assert loop.learnable_grads[k].abs().min() > 0, k  # every step's rate is meta-learned
    torch.testing.assert_close(fast.loss, loop.loss, rtol=1e-12, atol=0)
    one_hot = torch.tensor([0.0, 0.0, 0.25], dtype=torch.float64)
    last_only = run("loop", False, 0.25)
    multi = run("loop", True, one_hot)
    for k in params:
        torch.testing.assert_close(multi.grads[k], last_only.grads[k], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="vector of 3 step weights"):
        run("loop", True, 0.25)


def test_mamlpp_anneals_the_order_and_the_loss_over_the_run(host: PluginHost) -> None:
    sets = ("algorithm.name=mamlpp", "inner.steps=4")
    config = resolve(
        host, preset="sinusoid", sets=(*sets, "algorithm.first_order_fraction=0.25")
    ).config
    algorithm = build_components(config, host).algorithm
    assert [algorithm.first_order(config.inner, i, 100) for i in (0, 24, 25, 99)] == [
        True, True, False, False
    ]  # fmt: skip
    assert algorithm.first_order(config.inner, 0) is False  # no run: second order
    assert algorithm.step_weights(config.inner, 0, 100) == pytest.approx((0.25,) * 4)
    assert algorithm.step_weights(config.inner, 10, 100) is None  # 10% of the run by default
    assert algorithm.step_weights(config.inner, 5, 100)[-1] > 0.25


def test_mamlpp_per_step_norm_weights_replace_the_adapted_ones(host: PluginHost) -> None:
    from mamlflow.core import Learner, ModelIO
    from mamlflow.plugins.conv4 import Conv4

    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = Conv4(Conv4.Config(name="conv4", filters=4)).build(ModelIO((1, 28, 28), 3))
    learner = Learner(module).to("cpu", torch.float64)
    params = learner.init_params()

    def objective(p, data):
        return torch.nn.functional.cross_entropy(learner(dict(p), data["x"]), data["y"])

    adapter = PerStepSGD(0.1, 2, per_step_norm=True)
    norm = [k for k in params if ".norm." in k]
    assert norm and adapter.adapted(params) == frozenset(params) - set(norm)
    learnables = {
        k: (v + 0.1 * torch.randn_like(v)) if k.startswith("step") else v
        for k, v in adapter.learnables(params).items()
    }
    g = torch.Generator().manual_seed(0)
    batch = {
        "x": torch.randn(2, 3, 1, 28, 28, generator=g, dtype=torch.float64),
        "y": torch.tensor([[0, 1, 2], [2, 0, 1]]),
    }
    adapted = make_adapt(objective, adapter, steps=2)(params, learnables, batch)
    for k in norm:  # after the last step, the norm weights are step 2's learned copy
        torch.testing.assert_close(adapted[k][1], learnables[f"step2.{k}"])
    loop, batched = (
        make_meta_step(objective, adapter, steps=2, first_order=False, strategy=s)(
            params, learnables, batch, batch, 0.5
        )
        for s in ("loop", "batched")
    )
    for k in learnables:
        torch.testing.assert_close(
            batched.learnable_grads[k], loop.learnable_grads[k], rtol=0, atol=1e-10
        )
    assert loop.learnable_grads[f"step2.{norm[0]}"].abs().max() > 0


def test_every_family_member_and_its_presets_are_registered(host: PluginHost) -> None:
    assert set(host.names("algorithm")) >= {
        "maml",
        "fomaml",
        "reptile",
        "anil",
        "metasgd",
        "mamlpp",
    }
    assert set(host.names("optimizer")) >= {"adam", "adamw", "sgd"}
    pairs = {
        "sinusoid-reptile": "reptile",
        "sinusoid-metasgd": "metasgd",
        "omniglot-reptile": "reptile",
        "omniglot-anil": "anil",
        "omniglot-20w1s-anil": "anil",
        "omniglot-metasgd": "metasgd",
        "omniglot-mamlpp": "mamlpp",
    }
    for preset, algorithm in pairs.items():
        config = resolve(host, preset=preset).config
        assert config.algorithm.name == algorithm, preset
    base, anil = (resolve(host, preset=p).config for p in ("omniglot", "omniglot-anil"))
    # derived presets keep the family's schedule: only what they name differs
    assert anil.task == base.task and anil.inner == base.inner and anil.train == base.train
    mamlpp = resolve(host, preset="omniglot-mamlpp").config
    assert mamlpp.task == base.task and mamlpp.outer.schedule == "cosine"


@pytest.mark.parametrize("multi_step", [False, True])
def test_anil_feature_reuse_on_conv4_matches_the_whole_model_loop(
    host: PluginHost, multi_step: bool
) -> None:
    """The batched kernel runs conv-4's body once per task; the loop runs the whole model."""
    sets = ("kernel.dtype=float64", "algorithm.name=anil", "model.filters=4", "task.query=2")
    config = resolve(host, preset="omniglot", sets=sets).config
    components = build_components(config, host)
    objective = components.objective()
    assert isinstance(objective, StagedObjective)
    assert objective.head_params == {"head.weight", "head.bias"}
    params, learnables = components.initial_params()
    g = torch.Generator().manual_seed(0)
    batch = {
        part: {
            "x": torch.randn(3, n, 1, 28, 28, generator=g, dtype=torch.float64),
            "y": torch.stack([torch.randperm(5, generator=g).repeat(n // 5) for _ in range(3)]),
        }
        for part, n in (("support", 5), ("query", 10))
    }
    scale = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64) if multi_step else 1 / 3
    for first_order in (False, True):
        loop, batched = (
            make_meta_step(
                objective,
                components.adapter,
                steps=3,
                first_order=first_order,
                strategy=s,
                multi_step=multi_step,
            )(params, learnables, batch["support"], batch["query"], scale)
            for s in ("loop", "batched")
        )
        for k in params:
            torch.testing.assert_close(batched.grads[k], loop.grads[k], rtol=0, atol=1e-10)
        assert loop.grads["blocks.0.conv.weight"].abs().max() > 0  # the body is meta-learned
        torch.testing.assert_close(batched.loss, loop.loss, rtol=1e-12, atol=0)


def test_anil_without_a_head_last_model_falls_back_to_the_whole_model(
    host: PluginHost, caplog: pytest.LogCaptureFixture
) -> None:
    sets = ("algorithm.name=anil", "algorithm.head=2")  # a hidden layer: not head(body(x))
    components = build_components(resolve(host, preset="sinusoid", sets=sets).config, host)
    with caplog.at_level("WARNING", logger="mamlflow.anil"):
        objective = components.objective()
    assert not isinstance(objective, StagedObjective)
    assert "forward is not head(body(x)) for head '2'" in caplog.text
    off = ("algorithm.name=anil", "algorithm.reuse_features=false")
    components = build_components(resolve(host, preset="sinusoid", sets=off).config, host)
    assert not isinstance(components.objective(), StagedObjective)


def test_a_staged_objective_refuses_an_adapter_that_adapts_its_body(host: PluginHost) -> None:
    components, _, params, batch = _sinusoid(host, "algorithm.name=anil")
    objective = components.objective()
    step = make_meta_step(objective, sgd(0.01), steps=1, first_order=False, strategy="batched")
    with pytest.raises(ValueError, match=r"may adapt only \['4.bias', '4.weight'\]"):
        step(params, {}, batch.support, batch.query, 0.25)
