"""Adapters: pure ``(init, update)`` pairs, ``chain`` composition and learnable namespacing."""

from __future__ import annotations

import pytest
import torch

from mamlflow.core import Adapter, AdapterState, Learner, Params, Scale, apply_updates, chain, sgd
from mamlflow.kernels import make_meta_step
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig


class PerParameterLR(Adapter):
    """Meta-SGD-like: one learnable learning rate per entry, named after the parameter."""

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.seen: list[set[str]] = []  # learnable names each call received

    def learnables(self, params: Params) -> Params:
        return {k: torch.full_like(v, self.lr) for k, v in params.items()}

    def init(self, params: Params, learnables: Params) -> AdapterState:
        self.seen.append(set(learnables))
        return None

    def update(self, grads, state, params, learnables, step):  # type: ignore[override]
        self.seen.append(set(learnables))
        return {k: -learnables[k] * g for k, g in grads.items()}, state


class Momentum(Adapter):
    """Heavy-ball momentum: a stateful adapter, to check that state is threaded, not mutated."""

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def init(self, params: Params, learnables: Params) -> AdapterState:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads, state, params, learnables, step):  # type: ignore[override]
        velocity = {k: self.decay * state[k] + g for k, g in grads.items()}
        return velocity, velocity


class Shift(Adapter):
    """Adds a constant: with Scale, it makes the order of a chain observable."""

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def update(self, grads, state, params, learnables, step):  # type: ignore[override]
        return {k: g + self.amount for k, g in grads.items()}, state


def _params() -> Params:
    return {"0.weight": torch.tensor([[1.0, 2.0]]), "0.bias": torch.tensor([3.0])}


def _grads() -> Params:
    return {"0.weight": torch.tensor([[0.5, -1.0]]), "0.bias": torch.tensor([2.0])}


def _update(adapter: Adapter, grads: Params, step: int = 0) -> Params:
    params = _params()
    learnables = adapter.learnables(params)
    updates, _ = adapter.update(grads, adapter.init(params, learnables), params, learnables, step)
    return updates


def test_adapter_is_abstract_with_empty_defaults() -> None:
    with pytest.raises(TypeError):
        Adapter()  # type: ignore[abstract]
    adapter = Shift(1.0)
    assert adapter.learnables(_params()) == {}
    assert adapter.init(_params(), {}) is None


def test_sgd_is_a_negative_scale() -> None:
    adapter = sgd(0.1)
    assert isinstance(adapter, Scale) and adapter.factor == -0.1
    assert repr(adapter) == "Scale(-0.1)"
    assert adapter.learnables(_params()) == {}
    params, grads = _params(), _grads()
    updates, state = adapter.update(grads, "untouched", params, {}, 0)
    assert state == "untouched"
    for k, g in grads.items():
        torch.testing.assert_close(updates[k], -0.1 * g)
    assert all(torch.equal(g, _grads()[k]) for k, g in grads.items())  # inputs unchanged


def test_apply_updates_adds_and_returns_a_new_dict() -> None:
    params = _params()
    updates = {k: torch.ones_like(v) for k, v in params.items()}
    new = apply_updates(params, updates)
    assert new is not params and new.keys() == params.keys()
    for k, v in params.items():
        torch.testing.assert_close(new[k], v + 1)
        assert torch.equal(v, _params()[k])  # not mutated


def test_apply_updates_allows_a_partial_update() -> None:
    # E.g. ANIL adapts only the head: the body's entries pass through as the same tensors.
    params = _params()
    new = apply_updates(params, {"0.bias": torch.tensor([-3.0])})
    assert new["0.weight"] is params["0.weight"]
    torch.testing.assert_close(new["0.bias"], torch.tensor([0.0]))
    assert list(new) == list(params)  # order kept, so flattening stays aligned


def test_chain_applies_adapters_left_to_right() -> None:
    grads = _grads()
    scale_then_shift = _update(chain(Scale(2.0), Shift(1.0)), grads)
    shift_then_scale = _update(chain(Shift(1.0), Scale(2.0)), grads)
    for k, g in grads.items():
        torch.testing.assert_close(scale_then_shift[k], 2 * g + 1)
        torch.testing.assert_close(shift_then_scale[k], 2 * (g + 1))
    assert repr(chain(Scale(2.0), sgd(0.5))) == "chain(Scale(2.0), Scale(-0.5))"


def test_chain_namespaces_learnables_by_position() -> None:
    first, second = PerParameterLR(0.1), PerParameterLR(0.2)
    adapter = chain(first, Scale(3.0), second)
    learnables = adapter.learnables(_params())
    assert set(learnables) == {"0.0.weight", "0.0.bias", "2.0.weight", "2.0.bias"}
    assert (learnables["0.0.bias"] == 0.1).all() and (learnables["2.0.bias"] == 0.2).all()
    # Each adapter gets back exactly its own tensors under the names it chose.
    params, grads = _params(), _grads()
    updates, _ = adapter.update(grads, adapter.init(params, learnables), params, learnables, 0)
    assert first.seen == second.seen == [set(params), set(params)]
    for k, g in grads.items():
        torch.testing.assert_close(updates[k], -0.2 * (3.0 * (-0.1 * g)))


def test_chain_prefixes_do_not_collide_past_ten_adapters() -> None:
    # "1." must not also claim "10.x" and "11.x".
    adapters = [
        PerParameterLR(0.01 * (i + 1)) if i in (1, 10, 11) else Scale(1.0) for i in range(12)
    ]
    adapter = chain(*adapters)
    learnables = adapter.learnables(_params())
    assert {k.split(".", 1)[0] for k in learnables} == {"1", "10", "11"}
    params = _params()
    updates, _ = adapter.update(_grads(), adapter.init(params, learnables), params, learnables, 0)
    for i in (1, 10, 11):
        assert adapters[i].seen == [set(params), set(params)]  # type: ignore[attr-defined]
    for k, g in _grads().items():
        torch.testing.assert_close(updates[k], -0.02 * -0.11 * -0.12 * g)


def test_nested_chains_nest_their_namespaces() -> None:
    inner = PerParameterLR(0.1)
    adapter = chain(Scale(1.0), chain(inner))
    learnables = adapter.learnables(_params())
    assert set(learnables) == {"1.0.0.weight", "1.0.0.bias"}
    params = _params()
    adapter.update(_grads(), adapter.init(params, learnables), params, learnables, 0)
    assert inner.seen == [set(params), set(params)]


def test_chain_threads_each_adapters_state() -> None:
    adapter = chain(Momentum(0.5), Scale(-1.0))
    params, grads = _params(), _grads()
    state = adapter.init(params, {})
    assert isinstance(state, tuple) and len(state) == 2 and state[1] is None
    first, state1 = adapter.update(grads, state, params, {}, 0)
    second, state2 = adapter.update(grads, state1, params, {}, 1)
    for k, g in grads.items():
        torch.testing.assert_close(first[k], -g)
        torch.testing.assert_close(second[k], -1.5 * g)
        assert torch.equal(state[0][k], torch.zeros_like(g))  # earlier states are not mutated
        torch.testing.assert_close(state1[0][k], g)
        torch.testing.assert_close(state2[0][k], 1.5 * g)


def test_chained_learnables_get_meta_gradients_under_their_names() -> None:
    family = Sinusoid(SinusoidConfig(name="sinusoid"))
    learner = Learner(MLP(MLPConfig(name="mlp", hidden=(4,))).build(family.io))
    learner.to("cpu", torch.float64)
    params = learner.init_params()
    batch = family.sample(0, 0, torch.arange(3)).to("cpu", torch.float64)
    objective = family.objective(learner)

    def run(adapter: Adapter, learnables: Params):
        step = make_meta_step(objective, adapter, steps=2, first_order=False, strategy="batched")
        return step(params, learnables, batch.support, batch.query, 1 / 3)

    # chain(Scale(-α)) is sgd(α); PerParameterLR at α under a chain is the same adapter again.
    plain = run(sgd(0.05), {})
    chained = run(chain(Scale(-0.05)), {})
    adapter = chain(Scale(1.0), PerParameterLR(0.05))
    learnables = adapter.learnables(params)
    learned = run(adapter, learnables)
    assert set(learned.learnable_grads) == {f"1.{k}" for k in params}
    for result in (chained, learned):
        torch.testing.assert_close(result.loss, plain.loss, rtol=0, atol=1e-12)
        for k, g in plain.grads.items():
            torch.testing.assert_close(result.grads[k], g, rtol=0, atol=1e-12)
    unchained = run(PerParameterLR(0.05), PerParameterLR(0.05).learnables(params))
    for k, g in unchained.learnable_grads.items():
        torch.testing.assert_close(learned.learnable_grads[f"1.{k}"], g, rtol=0, atol=1e-12)


def test_apply_updates_rejects_unknown_names() -> None:
    params = {"w": torch.ones(2)}
    with pytest.raises(KeyError, match="unknown parameters"):
        apply_updates(params, {"W": torch.ones(2)})
