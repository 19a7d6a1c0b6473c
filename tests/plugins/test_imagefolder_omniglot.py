"""Omniglot as an image folder: ``imagefolder`` reads the official PNGs into the pixels the
``omniglot`` family has, samples the same tasks, and trains to the same accuracy on the same short
budget.

The folders are ``root/<split>/<index>_<Alphabet>_<characterNN>/<file>.png``, the split being
the ``omniglot`` family's ``paper`` split and ``<index>`` the character's index in its cache, so
that folder order is cache order and the two families' class pools line up position for
position: the same (seed, iteration, task) then draws the same characters and drawings in both.

Both families read a drawing the same way: Pillow's ``convert("L")``, then a Lanczos resize to
28x28 (``omniglot._data._preprocess``, ``images._decode.decode_one``). The one difference is that
the omniglot family then inverts it (ink = 255, as the MAML authors' loader does), while
``imagefolder`` keeps a file's pixels (ink = 0 in Omniglot's files). So:

* the official PNGs, copied byte for byte, cache to exactly ``255 - omniglot``'s pixels and
  sample the same episodes in negative (the first test);
* the accuracy comparison trains on a folder of the omniglot family's own 28x28 pixels (ink =
  255) as PNGs, which ``imagefolder`` must cache unchanged, so that the two runs differ only in
  the family that reads and samples the data. On the negative images the runs would be two
  different random trajectories of the same problem (the first BatchNorm flips the sign of every
  activation), whose spread after 300 meta-steps can exceed the evaluation's interval (it did in
  a trial of this test on the copied PNGs), so comparing them that way would be a coin toss.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlflow.core import RunConfig
from mamlflow.engine import (
    EvalResult,
    PluginHost,
    Trainer,
    build_components,
    evaluate,
    load_checkpoint,
    resolve,
)
from mamlflow.plugins.images import ImageFolder, ImageFolderConfig
from mamlflow.plugins.omniglot import Omniglot, OmniglotConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")
ARCHIVES = ("images_background.zip", "images_evaluation.zip")

# One short budget for both families: conv4 (16 filters, strided: the paper's Omniglot network,
# narrowed to fit the test's time), 5-way 1-shot, one inner step at α = 0.4 (the paper's),
# Adam at 5e-3 so 300 meta-steps of 8 tasks get well above chance. Rotations off in both, so a
# task's classes are N distinct characters upright in both families (task.distinct then makes
# no difference to the omniglot family).
BUDGET = (
    "model.filters=16",
    "model.downsample=stride",
    "algorithm.name=maml",
    "inner.steps=1",
    "inner.lr=0.4",
    "outer.name=adam",
    "outer.lr=0.005",
    "train.iterations=300",
    "train.meta_batch_size=8",
    "train.val_every=null",
    "train.log_every=100",
    "train.checkpoint_every=300",
    "train.time_limit=null",
    "task.ways=5",
    "task.shots=1",
    "task.query=1",
    "task.rotations=false",
    "kernel.strategy=batched",
    "seed=0",
    # The paper's 3 test-time steps, on the same 200 test tasks with 5 queries a class.
    "eval.steps=3",
    "eval.tasks=200",
    "eval.query=5",
    "eval.batch_size=50",
)


def _omniglot_data() -> Path | None:
    """The official zips: $MAMLFLOW_DATA/omniglot, else the shared data folder."""
    for root in (os.environ.get("MAMLFLOW_DATA"), ROOT.parent / "shared" / "data"):
        if root and all((Path(root) / "omniglot" / name).is_file() for name in ARCHIVES):
            return Path(root) / "omniglot"
    return None


@pytest.fixture(scope="module")
def data() -> Path:
    found = _omniglot_data()
    if found is None:
        pytest.skip("no Omniglot data: set MAMLFLOW_DATA to a folder holding omniglot/*.zip")
    return found


@pytest.fixture(scope="module")
def omniglot(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Omniglot:
    config = OmniglotConfig(
        name="omniglot",
        data_dir=data,
        cache_dir=tmp_path_factory.mktemp("omniglot-cache"),
        download=False,
        rotations=False,
    )
    family = Omniglot(config)
    family.images  # noqa: B018 - builds the cache
    return family


def _folder_name(index: int, character: str) -> str:
    """``0042_Latin_character07``: the cache index first, so folder order is cache order."""
    alphabet, number = character.split("/")
    return f"{index:04d}_{alphabet}_{number}"


@pytest.fixture(scope="module")
def folder(data: Path, omniglot: Omniglot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 32,460 PNGs of the zips, copied unchanged into ``root/<split>/<class>/``."""
    root = tmp_path_factory.mktemp("omniglot-folder")
    names = omniglot.arrays.characters
    where = {
        names[index]: root / split / _folder_name(index, names[index])
        for split, indices in omniglot.splits.characters.items()
        for index in indices.tolist()
    }
    copied = 0
    for archive in ARCHIVES:
        with zipfile.ZipFile(data / archive) as zipped:
            for member in zipped.infolist():
                # images_background/<Alphabet>/characterNN/<CCCC>_<DD>.png
                parts = member.filename.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png"):
                    continue
                target = where[f"{parts[1]}/{parts[2]}"] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zipped.read(member))
                copied += 1
    assert copied == 1623 * 20
    return root


@pytest.fixture(scope="module")
def pixel_folder(omniglot: Omniglot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The omniglot family's 28x28 drawings (ink = 255), as PNGs in ``root/<split>/<class>/``."""
    root = tmp_path_factory.mktemp("omniglot-pixels")
    names, images = omniglot.arrays.characters, np.asarray(omniglot.images)
    for split, indices in omniglot.splits.characters.items():
        for index in indices.tolist():
            folder = root / split / _folder_name(index, names[index])
            folder.mkdir(parents=True)
            for drawing, pixels in enumerate(images[index], start=1):
                Image.fromarray(pixels).save(folder / f"{drawing:02d}.png")
    return root


def _order(omniglot: Omniglot) -> np.ndarray:
    """Character indices in the folders' order: split by split, by index."""
    return np.concatenate([omniglot.splits.characters[split] for split in SPLITS])


def _imagefolder(folder: Path, cache_dir: Path) -> ImageFolder:
    config = ImageFolderConfig(
        name="imagefolder",
        data_dir=folder,
        cache_dir=cache_dir,
        image_size=28,
        channels=1,
        normalize="none",
        rotations=False,
        query=1,
        decode_workers=1,
    )
    return ImageFolder(config)


def test_the_folder_caches_omniglots_pixels_and_samples_its_tasks(
    omniglot: Omniglot, folder: Path, tmp_path: Path
) -> None:
    family = _imagefolder(folder, tmp_path / "cache")
    assert family.source().layout == "splits"
    arrays = family.arrays
    # The same characters in each split, in the same order.
    names = omniglot.arrays.characters
    for split in SPLITS:
        expected = [_folder_name(i, names[i]) for i in omniglot.splits.characters[split].tolist()]
        assert [arrays.names[c] for c in arrays.splits[split].tolist()] == expected
    # Pixel for pixel: the same Lanczos 28x28, without the omniglot family's inversion.
    ours = np.asarray(arrays.images)[..., 0].reshape(-1, 20, 28, 28)
    assert np.array_equal(ours, 255 - np.asarray(omniglot.images)[_order(omniglot)])
    # The same episodes: same characters, same drawings, labelled alike.
    for split in SPLITS:
        a = family.sample(7, 3, torch.arange(16), split=split, shots=1, query=5)
        b = omniglot.sample(7, 3, torch.arange(16), split=split, shots=1, query=5)
        characters = [[int(arrays.names[c // 4][:4]) for c in task] for task in a.info["classes"]]
        assert characters == (b.info["classes"] // 4).tolist()
        for part in ("support", "query"):
            x, y = getattr(a, part), getattr(b, part)
            assert torch.equal(x["y"], y["y"])
            torch.testing.assert_close(x["x"], 1 - y["x"], rtol=0, atol=1e-6)


def _train_and_evaluate(
    host: PluginHost, config: RunConfig, run_dir: Path
) -> tuple[EvalResult, float]:
    start = time.perf_counter()
    Trainer(config, run_dir, host).fit()
    checkpoint = load_checkpoint(run_dir)
    result, _ = evaluate(
        build_components(config, host),
        checkpoint.params,
        checkpoint.learnables,
        shots=config.task.shots,
        steps=config.eval.steps,
        tasks=config.eval.tasks,
        query=config.eval.query,
        batch_size=config.eval.batch_size,
    )
    return result, time.perf_counter() - start


def test_imagefolder_trains_to_the_omniglot_familys_accuracy(
    data: Path, omniglot: Omniglot, pixel_folder: Path, tmp_path: Path
) -> None:
    host = PluginHost(autoload=False)
    sources = {
        "omniglot": (
            f"task.data_dir={data}",
            f"task.cache_dir={omniglot.config.cache_dir}",
            "task.download=false",
        ),
        "imagefolder": (
            f"task.data_dir={pixel_folder}",
            f"task.cache_dir={tmp_path / 'cache'}",
            "task.image_size=28",
            "task.channels=1",
            "task.normalize=none",
            "task.decode_workers=1",
        ),
    }
    configs = {
        name: resolve(host, preset=name, sets=(*BUDGET, *sets)).config
        for name, sets in sources.items()
    }
    # Everything but the task's data source is the same run.
    a, b = configs["omniglot"], configs["imagefolder"]
    for section in ("model", "algorithm", "inner", "outer", "train", "eval", "kernel"):
        assert getattr(a, section) == getattr(b, section), section
    sampling = ("ways", "shots", "query", "rotations")
    assert [getattr(a.task, k) for k in sampling] == [getattr(b.task, k) for k in sampling]
    assert a.seed == b.seed

    results = {name: _train_and_evaluate(host, c, tmp_path / name) for name, c in configs.items()}
    # What imagefolder trained on is the omniglot family's data, pixel for pixel.
    cached = _imagefolder(pixel_folder, tmp_path / "cache").images[..., 0].reshape(-1, 20, 28, 28)
    assert np.array_equal(cached, np.asarray(omniglot.images)[_order(omniglot)])
    (om, om_s), (imf, imf_s) = results["omniglot"], results["imagefolder"]
    print(
        f"\nafter {a.eval.steps} steps on {a.eval.tasks} test tasks: omniglot "
        f"{om.mean[-1]:.4f} ± {om.ci95[-1]:.4f} ({om_s:.1f} s), imagefolder "
        f"{imf.mean[-1]:.4f} ± {imf.ci95[-1]:.4f} ({imf_s:.1f} s)"
    )
    # Both learned: 5-way chance is 0.2.
    assert om.mean[-1] > 0.5 and imf.mean[-1] > 0.5
    # And to the same accuracy: within the 95% interval of the difference of two means.
    combined = float(np.hypot(om.ci95[-1], imf.ci95[-1]))
    assert abs(om.mean[-1] - imf.mean[-1]) <= combined
