"""``load_run``: a trained run adapted to new examples exactly as evaluation adapts, many at once
as one at a time, saved and loaded whole; batch norm that answers one input as it answers it in
a batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mamlflow.core import CheckpointError, ConfigError, DataError
from mamlflow.core.nn import BatchNorm, statistics_from_first
from mamlflow.engine import (
    PluginHost,
    build_components,
    evaluate,
    load_adapted,
    load_run,
    resolve,
)
from mamlflow.engine.sources import support_first

from ..plugins.image_fixtures import write_classes

# -- a trained sinusoid run (seconds)


def _test_task(run_dir: Path, shots: int = 5) -> tuple[dict, dict, dict]:
    """Task 0 of the test split as evaluation samples it, and evaluation's adapted θ for it."""
    meta = load_run(run_dir)
    c = meta.components
    batch = c.family.sample(c.config.seed, 0, torch.arange(2), split="test", shots=shots)
    _, examples = evaluate(
        c, meta.params, meta.learnables, shots=shots, steps=3, tasks=2, batch_size=2, split="test"
    )
    after = {k: v[0] for k, v in examples.after.items()}
    support = {k: v[0] for k, v in batch.support.items()}
    query = {k: v[0] for k, v in batch.query.items()}
    return support, query, after


def test_adapt_is_evaluations_adaptation(sinusoid_run: Path) -> None:
    support, query, after = _test_task(sinusoid_run)
    adapted = load_run(sinusoid_run).adapt(support["x"], support["y"], steps=3)
    for name, value in adapted.module.named_parameters():
        torch.testing.assert_close(value, after[name], rtol=1e-6, atol=1e-6)
    manifest = adapted.manifest
    assert manifest["adaptation"]["steps"] == 3 and manifest["adaptation"]["lr"] == 0.01
    assert manifest["adaptation"]["after"]["loss"] < manifest["adaptation"]["before"]["loss"]
    assert manifest["normalisation"] == "none" and adapted.support is None
    values = adapted.predict(query["x"])
    assert values.shape == query["y"].shape


def test_adapt_many_equals_a_loop_of_adapt(sinusoid_run: Path) -> None:
    meta = load_run(sinusoid_run)
    g = torch.Generator().manual_seed(1)
    tasks = [
        (torch.rand(n, 1, generator=g) * 10 - 5, torch.randn(n, 1, generator=g))
        for n in (5, 5, 10, 5, 10)
    ]  # two support sizes: two vmapped groups
    many = meta.adapt_many(tasks, steps=2)
    assert len(many) == len(tasks)
    for (x, y), got in zip(tasks, many, strict=True):
        want = meta.adapt(x, y, steps=2)
        for (name, a), (_, b) in zip(
            got.module.named_parameters(), want.module.named_parameters(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lr_and_steps_change_the_adaptation(sinusoid_run: Path) -> None:
    meta = load_run(sinusoid_run)
    x, y = torch.linspace(-4, 4, 5)[:, None], torch.sin(torch.linspace(-4, 4, 5))[:, None]
    zero = meta.adapt(x, y, steps=0)
    for name, value in zero.module.named_parameters():
        assert torch.equal(value, meta.params[name])
    slow, fast = meta.adapt(x, y, steps=1, lr=0.001), meta.adapt(x, y, steps=1, lr=0.02)
    assert fast.manifest["adaptation"]["lr"] == 0.02
    assert (
        fast.manifest["adaptation"]["after"]["loss"] < slow.manifest["adaptation"]["after"]["loss"]
    )


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            torch.zeros(5, 2),
            torch.zeros(5, 1),
            "support_x has shape (5, 2); this run's model takes (n, 1)",
        ),
        (torch.zeros(5, 1), torch.zeros(4, 1), "support_y has 4 targets for 5 inputs"),
        (torch.full((5, 1), float("nan")), torch.zeros(5, 1), "support_x holds NaN or inf"),
        (torch.zeros(5, 1, dtype=torch.int64), torch.zeros(5, 1), "support_x is torch.int64"),
    ],
)
def test_bad_support_sets_are_one_line(sinusoid_run: Path, x, y, message: str) -> None:
    with pytest.raises(DataError) as info:
        load_run(sinusoid_run).adapt(x, y)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_an_adaptation_that_blows_up_names_the_step_and_a_smaller_lr(sinusoid_run: Path) -> None:
    x, y = torch.linspace(-4, 4, 5)[:, None], 1e6 * torch.ones(5, 1)
    with pytest.raises(
        DataError, match=r"NaN or inf in .* at step \d+ \(lr 1e\+30\); adapt with a smaller lr"
    ):
        load_run(sinusoid_run).adapt(x, y, steps=3, lr=1e30)


def test_a_missing_run_or_checkpoint_is_one_line(tmp_path: Path, sinusoid_run: Path) -> None:
    with pytest.raises(CheckpointError, match="no such run directory"):
        load_run(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="no saved config"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"no checkpoint_best\.pt"):
        load_run(sinusoid_run, "best")


def test_saved_and_loaded_it_predicts_the_same(sinusoid_run: Path, tmp_path: Path) -> None:
    adapted = load_run(sinusoid_run).adapt(torch.linspace(-4, 4, 5)[:, None], torch.ones(5, 1))
    adapted.save(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "adapted.json",
        "model.safetensors",
    ]
    loaded = load_adapted(tmp_path / "a")
    grid = torch.linspace(-5, 5, 50)[:, None]
    torch.testing.assert_close(loaded.predict(grid), adapted.predict(grid), rtol=0, atol=0)
    # A second save replaces the first whole; a folder of other files is refused.
    adapted.save(tmp_path / "a")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds no adapted model; choose another --out"):
        adapted.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_an_adapted_folder_of_another_version_is_refused(
    sinusoid_run: Path, tmp_path: Path
) -> None:
    load_run(sinusoid_run).adapt(torch.zeros(5, 1), torch.zeros(5, 1)).save(tmp_path / "a")
    path = tmp_path / "a" / "adapted.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(
        CheckpointError, match=r"format version 99, but this mamlflow .* reads version 1"
    ):
        load_adapted(tmp_path / "a")
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_adapted(tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"no adapted\.json"):
        load_adapted(tmp_path)


# -- batch statistics from the support set


def test_statistics_from_first_normalises_every_row_by_the_first_rows() -> None:
    torch.manual_seed(0)
    norm = BatchNorm(3).double()
    support, queries = torch.randn(5, 3, 4, 4).double(), torch.randn(7, 3, 4, 4).double()
    with statistics_from_first(norm, 5):
        joined = norm(torch.cat([support, queries]))
        alone = [norm(torch.cat([support, q[None]]))[5:] for q in queries]
    assert norm.rows is None  # restored
    torch.testing.assert_close(joined[:5], norm(support))  # the support set: as in training
    torch.testing.assert_close(joined[5:], torch.cat(alone))  # each query as if alone
    mean = support.mean((0, 2, 3), keepdim=True)
    var = support.var((0, 2, 3), correction=0, keepdim=True)
    torch.testing.assert_close(joined[5:], (queries - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("transductive", [True, False])
def test_evaluation_scores_queries_together_or_each_alone(
    transductive: bool, tmp_path: Path
) -> None:
    write_classes(tmp_path / "data", {f"c{i}": 6 for i in range(9)})
    host = PluginHost()
    sets = (
        f"task.data_dir={tmp_path / 'data'}",
        f"task.cache_dir={tmp_path / 'cache'}",
        "task.image_size=16",
        "task.train_classes=3",
        "task.val_classes=3",
        "task.decode_workers=1",
        "model.filters=8",
        "task.query=4",
        "device=cpu",
        "task.ways=3",
    )
    c = build_components(resolve(host, preset="imagefolder", sets=sets).config, host)
    params, learnables = c.initial_params()
    batch = c.family.sample(0, 0, torch.arange(3), split="test")
    score = c.source.evaluator(
        params,
        learnables,
        steps=1,
        shots=1,
        seed=0,
        split="test",
        later_scale=1.0,
        transductive=transductive,
    )
    scores, adapted = score(batch)
    for task in range(3):
        theta = {k: v[task] for k, v in adapted.items()}
        support, queries = batch.support["x"][task], batch.query["x"][task]
        if transductive:  # the queries normalised together, by their own statistics
            logits = c.learner(theta, queries)
        else:  # each query with the support set only: what predicting it alone gives
            model = support_first(c.learner, support.shape[0])
            logits = torch.cat([model(theta, torch.cat([support, q[None]])) for q in queries])
        accuracy = (logits.argmax(-1) == batch.query["y"][task]).double().mean()
        assert float(scores[task, -1]) == pytest.approx(float(accuracy), abs=1e-6)


# -- reinforcement learning: a policy adapted to a task given by its parameters


def test_a_policy_adapts_to_a_goal_as_evaluation_adapts_it(navigation_run: Path) -> None:
    meta = load_run(navigation_run)
    c = meta.components
    seed, shots = c.config.seed, c.config.task.shots
    goal = c.family.sample(seed, 0, torch.arange(1), split="test").info["goal"][0]
    _, examples = evaluate(
        c, meta.params, meta.learnables, shots=shots, steps=2, tasks=2, batch_size=2, split="test"
    )
    adapted = meta.adapt_to_task({"goal": goal.tolist()}, steps=2, trajectories=shots, seed=seed)
    for name, value in adapted.module.named_parameters():
        torch.testing.assert_close(value, examples.after[name][0], rtol=1e-5, atol=1e-6)
    a = adapted.manifest["adaptation"]
    assert len(a["returns"]) == 3 and a["task"]["goal"] == pytest.approx(goal.tolist())
    assert adapted.metric == "return" and adapted.manifest["inputs"]["columns"] == ["obs0", "obs1"]
    actions = adapted.predict(torch.zeros(4, 2))
    assert actions.shape == (4, 2)  # the mean action, not the log-std beside it
    torch.testing.assert_close(actions, adapted(torch.zeros(4, 2))[:, :2])


def test_a_policy_task_must_be_the_familys(navigation_run: Path) -> None:
    meta = load_run(navigation_run)
    with pytest.raises(DataError, match="a 'navigation' task is given by goal; got target"):
        meta.adapt_to_task({"target": [0.1, 0.2]})
    with pytest.raises(DataError, match=r"task goal: \[0.1\] is not torch.float32 values"):
        meta.adapt_to_task({"goal": [0.1]})
    with pytest.raises(ConfigError, match="reinforcement-learning family: adapt takes examples"):
        meta.adapt(torch.zeros(5, 2), torch.zeros(5, 4))


def test_a_run_loads_in_float64_and_adapt_many_then_matches_the_loop_to_rounding(
    sinusoid_run: Path,
) -> None:
    meta = load_run(sinusoid_run, dtype="float64")
    x = torch.linspace(-4, 4, 5, dtype=torch.float64)[:, None]
    tasks = [(x, torch.sin(x)), (x, torch.cos(x))]
    for got, want in zip(meta.adapt_many(tasks), [meta.adapt(*t) for t in tasks], strict=True):
        for a, b in zip(got.module.parameters(), want.module.parameters(), strict=True):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
