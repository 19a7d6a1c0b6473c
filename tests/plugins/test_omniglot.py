"""The Omniglot task family on the real data: splits, leakage, determinism, presets, and how a
task's classes are drawn (distinct characters at random rotations, or the older distinct
classes, pinned bit for bit)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mamlflow.cli import main
from mamlflow.core import Split, TaskBatch
from mamlflow.engine import PluginHost, resolve
from mamlflow.plugins.omniglot import NUM_CHARACTERS, Omniglot, OmniglotConfig

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def family(cache_dir: Path) -> Omniglot:
    fam = Omniglot(OmniglotConfig(name="omniglot", data_dir=SHARED, cache_dir=cache_dir))
    assert fam.images.shape == (NUM_CHARACTERS, 20, 28, 28)
    return fam


def test_splits_are_disjoint_and_sized_as_in_the_paper(family: Omniglot) -> None:
    chars = family.splits.characters
    assert [len(chars[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert len(np.concatenate(list(chars.values()))) == NUM_CHARACTERS
    assert len(set(np.concatenate(list(chars.values())).tolist())) == NUM_CHARACTERS
    # One upright id per character: the sampler draws the rotations.
    assert len(family.splits.pools["train"]) == 1100 and family.splits.random_rotation
    assert not np.any(family.splits.pools["train"] % 4)
    classes = Omniglot(OmniglotConfig(name="omniglot", distinct="classes")).splits
    assert len(classes.pools["train"]) == 1100 * 4 and not classes.random_rotation
    other = Omniglot(OmniglotConfig(name="omniglot", split_seed=2))
    assert not np.array_equal(other.splits.characters["test"], chars["test"])


def test_vinyals_split_matches_its_published_sizes(family: Omniglot, cache_dir: Path) -> None:
    vinyals = Omniglot(
        OmniglotConfig(name="omniglot", split="vinyals", data_dir=SHARED, cache_dir=cache_dir)
    )
    chars = vinyals.splits.characters
    assert [len(chars[s]) for s in ("train", "val", "test")] == [1028, 172, 423]
    names = vinyals.arrays.characters
    test_alphabets = {names[i].split("/")[0] for i in chars["test"]}
    assert "Gurmukhi" in test_alphabets and "Tibetan" in test_alphabets
    assert {names[i] for i in chars["test"] if names[i].startswith("Gurmukhi/")} == {
        f"Gurmukhi/character{i}" for i in (42, 43, 44, 45)
    }
    assert not set(chars["train"]) & set(chars["test"])
    batch = vinyals.sample(0, 0, torch.arange(64))
    assert set((batch.info["classes"] // 4).reshape(-1).tolist()) <= set(chars["train"].tolist())


def test_no_test_character_is_ever_sampled_in_training(family: Omniglot) -> None:
    test_chars = set(family.splits.characters["test"].tolist())
    val_chars = set(family.splits.characters["val"].tolist())
    seen: set[int] = set()
    for iteration in range(200):
        batch = family.sample(0, iteration, torch.arange(32))
        seen.update((batch.info["classes"] // 4).reshape(-1).tolist())
    assert seen <= set(family.splits.characters["train"].tolist())
    assert not seen & test_chars and not seen & val_chars
    # 200 x 32 x 5 draws cover most of the 1,100 training characters.
    assert len(seen) > 1000


@pytest.fixture(scope="module")
def make_family(cache_dir: Path) -> Callable[..., Omniglot]:
    def make(**options: object) -> Omniglot:
        config = OmniglotConfig(name="omniglot", data_dir=SHARED, cache_dir=cache_dir, **options)
        return Omniglot(config)

    return make


@pytest.mark.parametrize("distinct", ["characters", "classes"])
def test_sampling_is_deterministic_and_independent_of_sharding(
    make_family: Callable[..., Omniglot], distinct: str
) -> None:
    family = make_family(distinct=distinct)
    full = family.sample(3, 7, torch.arange(8), split="test")
    again = family.sample(3, 7, torch.arange(8), split="test")
    part = family.sample(3, 7, torch.tensor([5, 6]), split="test")
    assert torch.equal(full.support["x"], again.support["x"])
    assert torch.equal(full.support["x"][5:7], part.support["x"])
    assert torch.equal(full.query["y"][5:7], part.query["y"])
    other = family.sample(3, 8, torch.arange(8), split="test")
    assert not torch.equal(full.support["x"], other.support["x"])


def _two_rotations_of_a_character(classes: torch.Tensor) -> torch.Tensor:
    """Per task: whether two of its classes are rotations of one character."""
    characters = (classes // 4).sort(dim=1).values
    return (characters[:, 1:] == characters[:, :-1]).any(dim=1)


def _classes(family: Omniglot, split: Split, tasks: int, chunk: int = 1000) -> torch.Tensor:
    """The classes of tasks 0 .. tasks - 1 of iteration 0, sampled a chunk at a time."""
    return torch.cat([
        family.sample(0, 0, torch.arange(start, min(start + chunk, tasks)), split=split)
        .info["classes"]
        for start in range(0, tasks, chunk)
    ])  # fmt: skip


@pytest.mark.parametrize(("ways", "split"), [(5, "train"), (20, "test"), (20, "val")])
def test_a_task_holds_distinct_characters_each_at_a_random_rotation(
    make_family: Callable[..., Omniglot], ways: int, split: Split
) -> None:
    classes = _classes(make_family(ways=ways), split, 4000)
    assert not _two_rotations_of_a_character(classes).any()
    # Every rotation, at every position of a task, about a quarter of the time (at 20,000 draws
    # or more, one standard deviation is at most 0.3 percentage points).
    rotations = classes % 4
    shares = torch.bincount(rotations.reshape(-1), minlength=4) / rotations.numel()
    assert (shares - 0.25).abs().max() < 0.015, shares
    assert all(set(rotations[:, c].tolist()) == {0, 1, 2, 3} for c in range(ways))


@pytest.mark.parametrize(
    ("ways", "split", "tasks"), [(5, "test", 20_000), (5, "val", 4000), (20, "test", 2000)]
)
def test_distinct_classes_put_two_rotations_of_a_character_in_some_tasks(
    make_family: Callable[..., Omniglot], ways: int, split: Split, tasks: int
) -> None:
    """The share the older sampling shows is the exact probability of drawing ``ways`` distinct
    classes from ``4 C`` uniformly: 1.77% of 5-way test tasks, 7.36% of 5-way validation tasks,
    29.1% of 20-way test tasks."""
    family = make_family(ways=ways, distinct="classes")
    share = _two_rotations_of_a_character(_classes(family, split, tasks)).double().mean().item()
    characters = len(family.splits.characters[split])
    exact = 1 - np.prod([(4 * characters - 4 * k) / (4 * characters - k) for k in range(ways)])
    assert abs(share - exact) < 4 * np.sqrt(exact * (1 - exact) / tasks), (share, exact)


def _digest(batch: TaskBatch) -> str:
    h = hashlib.sha256()
    tensors = {
        "sx": batch.support["x"],
        "sy": batch.support["y"],
        "qx": batch.query["x"],
        "qy": batch.query["y"],
        "c": batch.info["classes"],
        "i": batch.task_index,
    }
    for name, tensor in tensors.items():
        a = tensor.contiguous().numpy()
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# Computed with the sampler as it was before task.distinct existed (commit 0ae4b7c):
# (split, ways, shots = query, split of the task, seed, iteration, task indices) -> hash.
PINNED = [
    ("paper", 5, 1, "train", 0, 0, [0, 1, 2, 3, 4, 5, 6, 7], "268233663dfe63cf"),
    ("paper", 5, 1, "test", 3, 7, [5, 6, 2**40], "251643df69dc954f"),
    ("paper", 5, 1, "val", 1, 12, [0, 1, 2, 3], "e9400a20ecb9489e"),
    ("paper", 20, 5, "train", 0, 0, [0, 1, 2, 3, 4, 5, 6, 7], "9fbd724e90637b5b"),
    ("paper", 20, 5, "test", 3, 7, [5, 6, 2**40], "619bc05034d884cd"),
    ("vinyals", 5, 1, "train", 0, 0, [0, 1, 2, 3, 4, 5, 6, 7], "1feacd8f5de8138c"),
    ("vinyals", 5, 1, "test", 3, 7, [5, 6, 2**40], "24251d0a8c35c475"),
]


@pytest.mark.parametrize(
    ("split", "ways", "shots", "task_split", "seed", "it", "tasks", "sha"), PINNED
)
def test_distinct_classes_sample_as_older_releases_did(
    make_family: Callable[..., Omniglot],
    split: str,
    ways: int,
    shots: int,
    task_split: Split,
    seed: int,
    it: int,
    tasks: list[int],
    sha: str,
) -> None:
    family = make_family(split=split, ways=ways, shots=shots, query=shots, distinct="classes")
    assert _digest(family.sample(seed, it, torch.tensor(tasks), split=task_split)) == sha
    # The default draws other tasks from the same key.
    new = make_family(split=split, ways=ways, shots=shots, query=shots)
    assert _digest(new.sample(seed, it, torch.tensor(tasks), split=task_split)) != sha


def test_without_rotations_both_samplings_are_the_same(
    make_family: Callable[..., Omniglot],
) -> None:
    upright = [make_family(rotations=False, distinct=d) for d in ("characters", "classes")]
    batches = [family.sample(2, 5, torch.arange(16), split="val") for family in upright]
    assert _digest(batches[0]) == _digest(batches[1])
    assert not torch.any(batches[0].info["classes"] % 4)


def test_ways_must_fit_the_smallest_split() -> None:
    with pytest.raises(ValidationError, match="ways=101 exceeds the 100 validation characters"):
        OmniglotConfig(name="omniglot", ways=101)
    OmniglotConfig(name="omniglot", ways=101, distinct="classes")  # 400 classes
    OmniglotConfig(name="omniglot", ways=101, val_characters=0)  # no validation split
    with pytest.raises(ValidationError, match="ways=401 exceeds the 400 validation classes"):
        OmniglotConfig(name="omniglot", ways=401, distinct="classes")
    with pytest.raises(ValidationError, match="ways=101 exceeds the 100 validation characters"):
        OmniglotConfig(name="omniglot", ways=101, distinct="classes", rotations=False)
    with pytest.raises(ValidationError, match="ways=424 exceeds the 423 test characters"):
        OmniglotConfig(name="omniglot", ways=424, train_characters=1200, val_characters=0)


def test_batch_shapes_follow_ways_shots_and_query(family: Omniglot) -> None:
    batch = family.sample(0, 0, torch.arange(4), shots=5, query=3)
    assert batch.support["x"].shape == (4, 25, 1, 28, 28)
    assert batch.support["y"].shape == (4, 25) and batch.query["x"].shape == (4, 15, 1, 28, 28)
    assert batch.support["x"].dtype == torch.float32 and batch.support["y"].dtype == torch.int64
    assert batch.support["x"].min() >= 0.0 and batch.support["x"].max() <= 1.0
    for t in range(4):
        assert sorted(batch.support["y"][t].tolist()) == sorted(list(range(5)) * 5)


def test_objective_and_accuracy(family: Omniglot) -> None:
    batch = family.sample(0, 0, torch.arange(1))
    data = {k: v[0] for k, v in batch.query.items()}

    def perfect(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.nn.functional.one_hot(data["y"], 5).float() * params["s"]

    params = {"s": torch.ones(())}
    assert family.score(perfect)(params, data).item() == 1.0
    assert family.objective(perfect)(params, data).item() < 1e-3

    def uniform(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 5) * params["s"]

    # The authors' scale: summed cross-entropy / K = ways x mean = 5 ln 5 for uniform logits.
    expected = 5 * torch.log(torch.tensor(5.0)).item()
    assert family.objective(uniform)(params, data).item() == pytest.approx(expected)


def test_presets_carry_the_papers_hyperparameters() -> None:
    host = PluginHost()
    expected = {
        "omniglot": (5, 1, 0.4, 1, 3, 32),
        "omniglot-5w5s": (5, 5, 0.4, 1, 3, 32),
        "omniglot-20w1s": (20, 1, 0.1, 5, 5, 16),
        "omniglot-20w5s": (20, 5, 0.1, 5, 5, 16),
    }
    for name, (ways, shots, lr, steps, eval_steps, batch) in expected.items():
        cfg = resolve(host, preset=name).config
        assert (cfg.task.ways, cfg.task.shots) == (ways, shots)  # type: ignore[attr-defined]
        assert (cfg.inner.lr, cfg.inner.steps, cfg.eval.steps) == (lr, steps, eval_steps)
        assert cfg.train.meta_batch_size == batch and cfg.train.iterations == 60_000
        assert cfg.outer.name == "adam" and cfg.outer.lr == 1e-3 and cfg.eval.tasks == 600
        assert cfg.model.name == "conv4"


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset", ["omniglot", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s"]
)
def test_every_preset_runs_and_evaluates(
    preset: str, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / preset
    sets = [
        f"task.data_dir={SHARED}",
        f"task.cache_dir={cache_dir}",
        "train.iterations=2",
        "train.meta_batch_size=2",
        "train.val_every=2",
        "train.val_tasks=4",
        "eval.tasks=4",
        "kernel.strategy=loop",
    ]
    args = ["run", "--plugin", preset, "--out", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_accuracy" in records[-1]
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    # The run records exactly which characters it trained on and will be tested on.
    manifest = json.loads((run_dir / "task.json").read_text())
    assert [len(manifest["characters"][s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert not set(manifest["characters"]["train"]) & set(manifest["characters"]["test"])
    assert manifest["distinct"] == "characters"  # and how a task's classes were drawn
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["eval", str(run_dir), "--json", "--no-plots"])
    assert done.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "accuracy" and result["tasks"] == 4
    assert all(0.0 <= m <= 1.0 for m in result["mean"])
