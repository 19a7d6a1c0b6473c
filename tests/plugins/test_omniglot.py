"""The Omniglot task family on the real data: splits, leakage, determinism, presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlflow.cli import main
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
    assert len(family.splits.pools["train"]) == 1100 * 4
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


def test_sampling_is_deterministic_and_independent_of_sharding(family: Omniglot) -> None:
    full = family.sample(3, 7, torch.arange(8), split="test")
    again = family.sample(3, 7, torch.arange(8), split="test")
    part = family.sample(3, 7, torch.tensor([5, 6]), split="test")
    assert torch.equal(full.support["x"], again.support["x"])
    assert torch.equal(full.support["x"][5:7], part.support["x"])
    assert torch.equal(full.query["y"][5:7], part.query["y"])
    other = family.sample(3, 8, torch.arange(8), split="test")
    assert not torch.equal(full.support["x"], other.support["x"])


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
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["eval", str(run_dir), "--json", "--no-plots"])
    assert done.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "accuracy" and result["tasks"] == 4
    assert all(0.0 <= m <= 1.0 for m in result["mean"])
