"""The sinusoid task family: the conformance promises of ``TaskFamily`` plus its own definition.

Conformance: shapes match the declared ``io`` and config, sampling is a pure function of
``(seed, iteration, split, task index)`` so a task is the same whichever shard asks for it.
Definition (Finn et al. 2017, §5.1): ``y = A sin(x - φ)`` with A, φ and x drawn from the
configured ranges, and a mean-squared-error loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from mamlflow.core import Learner, ModelIO, TaskBatch, sgd
from mamlflow.engine import get_host
from mamlflow.kernels import make_adapt
from mamlflow.plugins.mlp import MLP, MLPConfig
from mamlflow.plugins.sinusoid import Sinusoid, SinusoidConfig


def _family(**options: object) -> Sinusoid:
    return Sinusoid(SinusoidConfig(name="sinusoid", **options))


def _assert_same(a: TaskBatch, b: TaskBatch) -> None:
    for part in ("support", "query", "info"):
        x, y = getattr(a, part), getattr(b, part)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), f"{part}[{k!r}]"
    assert torch.equal(a.task_index, b.task_index)


def _differs(a: TaskBatch, b: TaskBatch) -> bool:
    """True when no task of ``a`` shares its amplitude, phase or inputs with ``b``'s."""
    return all(
        bool((x != y).all())
        for x, y in (
            (a.info["amplitude"], b.info["amplitude"]),
            (a.info["phase"], b.info["phase"]),
            (a.support["x"], b.support["x"]),
            (a.query["x"], b.query["x"]),
        )
    )


def test_is_registered_as_a_builtin() -> None:
    assert get_host().task_family("sinusoid") is Sinusoid
    assert Sinusoid.metric == "mse"


def test_sample_has_the_declared_shapes() -> None:
    family = _family(shots=7, query=13)
    assert family.io == ModelIO(input_shape=(1,), output_dim=1)
    tasks = torch.arange(4)
    batch = family.sample(0, 0, tasks)
    assert batch.num_tasks == 4 and torch.equal(batch.task_index, tasks)
    for part, size in ((batch.support, 7), (batch.query, 13)):
        assert part.keys() == {"x", "y"}
        for v in part.values():
            assert v.shape == (4, size, *family.io.input_shape)
            assert v.dtype == torch.float32
    assert batch.info["amplitude"].shape == batch.info["phase"].shape == (4,)
    # A model built for the declared io accepts a task's inputs and matches its targets.
    learner = Learner(MLP(MLPConfig(name="mlp")).build(family.io))
    out = learner(learner.init_params(), batch.support["x"][0])
    assert out.shape == (7, family.io.output_dim) == batch.support["y"][0].shape


def test_shots_and_query_overrides() -> None:
    family = _family()
    default = family.sample(1, 2, torch.arange(3))
    assert default.support["x"].shape == (3, 10, 1) and default.query["x"].shape == (3, 10, 1)
    other = family.sample(1, 2, torch.arange(3), shots=5, query=20)
    assert other.support["x"].shape == other.support["y"].shape == (3, 5, 1)
    assert other.query["x"].shape == other.query["y"].shape == (3, 20, 1)
    # Same tasks at another K: evaluating at K=5 and K=10 compares like with like.
    assert torch.equal(other.info["amplitude"], default.info["amplitude"])
    assert torch.equal(other.info["phase"], default.info["phase"])
    same_query = family.sample(1, 2, torch.arange(3), shots=5)
    assert torch.equal(same_query.query["x"], default.query["x"])


def test_sampling_is_deterministic() -> None:
    family = _family()
    tasks = torch.tensor([0, 5, 2**33])
    _assert_same(family.sample(3, 17, tasks), family.sample(3, 17, tasks))
    # Nothing hides in global RNG state: reseeding torch changes nothing.
    torch.manual_seed(123)
    _assert_same(family.sample(3, 17, tasks), _family().sample(3, 17, tasks.clone()))


def test_a_task_is_the_same_in_any_shard() -> None:
    family = _family()
    full = family.sample(0, 4, torch.arange(5))
    _assert_same(full.shard(2, 4), family.sample(0, 4, torch.tensor([2, 3])))
    _assert_same(full.shard(4, 5), family.sample(0, 4, torch.tensor([4])))
    reordered = family.sample(0, 4, torch.tensor([3, 0]))
    assert torch.equal(reordered.support["x"][0], full.support["x"][3])
    assert torch.equal(reordered.query["y"][1], full.query["y"][0])


def test_seed_iteration_split_and_index_give_different_tasks() -> None:
    family = _family()
    tasks = torch.arange(8)
    base = family.sample(0, 0, tasks)
    assert _differs(base, family.sample(1, 0, tasks))
    assert _differs(base, family.sample(0, 1, tasks))
    val, test = (family.sample(0, 0, tasks, split=split) for split in ("val", "test"))
    assert _differs(base, val) and _differs(base, test) and _differs(val, test)
    assert _differs(base, family.sample(0, 0, tasks + 8))
    # Within a task, support and query inputs are drawn independently.
    assert (base.support["x"] != base.query["x"]).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"amplitude": (1.0, 2.0), "phase": (0.5, 1.5), "x_range": (0.0, 3.0)}],
    ids=["paper", "custom"],
)
def test_draws_lie_in_the_configured_ranges(options: dict[str, tuple[float, float]]) -> None:
    family = _family(**options)
    config = family.config
    batch = family.sample(0, 0, torch.arange(2_000))
    draws = {
        "amplitude": batch.info["amplitude"],
        "phase": batch.info["phase"],
        "x_range": torch.cat([batch.support["x"].flatten(), batch.query["x"].flatten()]),
    }
    for key, values in draws.items():
        low, high = getattr(config, key)
        # Closed interval: low + (high - low) * u can round up to ``high`` in float32.
        assert low <= values.min() and values.max() <= high, key
        # ... and the draws cover it (2 000 uniform draws leave no gap over 1 %).
        width = high - low
        assert values.min() < low + 0.01 * width and values.max() > high - 0.01 * width, key


def test_paper_ranges_are_the_defaults() -> None:
    config = SinusoidConfig(name="sinusoid")
    assert config.amplitude == (0.1, 5.0)
    assert config.phase == (0.0, math.pi)
    assert config.x_range == (-5.0, 5.0)
    assert (config.shots, config.query) == (10, 10)


def test_targets_are_the_sinusoid() -> None:
    batch = _family().sample(9, 3, torch.arange(6))
    amplitude = batch.info["amplitude"][:, None, None]
    phase = batch.info["phase"][:, None, None]
    for part in (batch.support, batch.query):
        torch.testing.assert_close(part["y"], amplitude * torch.sin(part["x"] - phase))


def test_degenerate_range_gives_a_constant() -> None:
    batch = _family(amplitude=(2.0, 2.0), phase=(0.0, 0.0)).sample(0, 0, torch.arange(3))
    assert (batch.info["amplitude"] == 2.0).all() and (batch.info["phase"] == 0.0).all()
    torch.testing.assert_close(batch.support["y"], 2.0 * torch.sin(batch.support["x"]))


def test_objective_and_score_are_mean_squared_error() -> None:
    family = _family()
    learner = Learner(MLP(MLPConfig(name="mlp")).build(family.io))
    params = learner.init_params()
    batch = family.sample(0, 0, torch.arange(2))
    data = {k: v[1] for k, v in batch.query.items()}
    expected = ((learner(params, data["x"]) - data["y"]) ** 2).mean()
    torch.testing.assert_close(family.objective(learner)(params, data), expected)
    torch.testing.assert_close(family.score(learner)(params, data), expected)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"amplitude": (5.0, 0.1)}, "amplitude"),
        ({"phase": (1.0, 0.0)}, "phase"),
        ({"x_range": (5.0, -5.0)}, "x_range"),
        ({"shots": 0}, "shots"),
        ({"query": 0}, "query"),
        ({"amplitude": (1.0, 2.0, 3.0)}, "amplitude"),
        ({"ways": 5}, "ways"),
    ],
)
def test_invalid_config_is_rejected(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        SinusoidConfig(name="sinusoid", **options)


def test_config_is_frozen() -> None:
    config = SinusoidConfig(name="sinusoid")
    with pytest.raises(ValidationError):
        config.shots = 5  # type: ignore[misc]


def test_plot_examples_writes_a_png(tmp_path: Path) -> None:
    family = _family()
    learner = Learner(MLP(MLPConfig(name="mlp")).build(family.io))
    params = learner.init_params()
    batch = family.sample(0, 0, torch.arange(3))
    adapted = make_adapt(family.objective(learner), sgd(0.01), steps=1)(params, {}, batch.support)
    path = tmp_path / "examples.png"
    assert family.plot_examples(learner, params, adapted, batch, str(path)) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
