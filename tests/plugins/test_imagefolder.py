"""The ``imagefolder`` family on generated data: every layout, its splits and episodes, the
memory-mapped cache (reused, rebuilt when stale or damaged), broken inputs as one-line errors
that leave nothing behind, and a run and an evaluation through the CLI."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from mamlflow.core import DataError, TaskBatch, hookimpl
from mamlflow.engine import PluginHost, Trainer, resolve
from mamlflow.plugins.images import ImageFamily, ImageFolder, ImageFolderConfig

from .image_fixtures import cli_run_and_eval, write_classes, write_image, write_split_folders

FLAT = {f"class{i:02d}": 8 + i % 3 for i in range(15)}
SPLIT = {"train_classes": 5, "val_classes": 5}  # of 15 classes: 5 per split


def family(data_dir: Path, cache_dir: Path, **options: Any) -> ImageFolder:
    options = {"image_size": 8, "query": 2, "decode_workers": 1, **SPLIT, **options}
    return ImageFolder(
        ImageFolderConfig(name="imagefolder", data_dir=data_dir, cache_dir=cache_dir, **options)
    )


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    write_classes(root, FLAT)
    return root


@pytest.fixture(scope="module")
def flat_family(flat: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageFolder:
    return family(flat, tmp_path_factory.mktemp("cache"), train_classes=5, val_classes=5)


def _no_files(folder: Path) -> bool:
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


# -- layouts


def test_folders_layout_splits_the_classes_by_a_seeded_shuffle(
    flat: Path, flat_family: ImageFolder, tmp_path: Path
) -> None:
    arrays = flat_family.arrays
    assert flat_family.source().layout == "folders"
    assert {s: len(c) for s, c in arrays.splits.items()} == {"train": 5, "val": 5, "test": 5}
    names = {s: {arrays.names[i] for i in c.tolist()} for s, c in arrays.splits.items()}
    assert set().union(*names.values()) == set(FLAT)
    assert not names["train"] & names["test"] and not names["val"] & names["test"]
    assert arrays.images.shape == (sum(FLAT.values()), 8, 8, 3)
    assert [int(arrays.counts[arrays.names.index(n)]) for n in FLAT] == list(FLAT.values())
    # Fractions split the same classes as counts when they agree; another seed, other classes.
    same = family(flat, tmp_path, train_classes=1 / 3, val_classes=1 / 3).source().index()
    assert same == flat_family.source().index()
    other = family(flat, tmp_path, train_classes=5, val_classes=5, split_seed=1).source()
    assert other.index().names("test") != flat_family.source().index().names("test")


def test_split_folders_layout(tmp_path: Path) -> None:
    classes = {
        "train": {f"t{i}": 6 for i in range(5)},
        "validation": {f"v{i}": 5 for i in range(5)},
        "test": {f"e{i}": 7 for i in range(6)},
    }
    write_split_folders(tmp_path / "data", classes)
    fam = family(tmp_path / "data", tmp_path / "cache")
    index = fam.source().index()
    assert fam.source().layout == "splits"
    assert index.names("train") == tuple(sorted(classes["train"]))
    assert index.counts("val") == (5,) * 5 and len(index.names("test")) == 6
    batch = fam.sample(0, 0, torch.arange(2), split="val")
    assert set((batch.info["classes"] // 4).reshape(-1).tolist()) <= set(fam.arrays.splits["val"])


def test_csv_layout_reads_ravi_larochelle_files(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    for split, prefix in (("train", "n01"), ("val", "n02"), ("test", "n03")):
        rows = ["filename,label"]
        for c in range(5):
            for i in range(4):
                name = f"{prefix}{c}_{i:04d}.jpg"
                # Half the classes in images/, half in images/<label>/, as copies of it differ.
                folder = root / "images" / (f"{prefix}{c}" if c % 2 else "")
                write_image(folder / name, hash((split, c, i)) % 1000, fmt="JPEG")
                rows.append(f"{name},{prefix}{c}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    fam = family(root, tmp_path / "cache", shots=1, query=3)
    index = fam.source().index()
    assert fam.source().layout == "csv"
    assert index.names("train") == tuple(f"n01{c}" for c in range(5))
    assert index.counts("test") == (4,) * 5
    assert fam.sample(0, 0, torch.arange(2), split="test").query["x"].shape == (2, 15, 3, 8, 8)


def test_txt_layout_lists_class_folders(flat: Path, tmp_path: Path) -> None:
    root = tmp_path / "txt"
    write_classes(root / "images", {n: c for n, c in FLAT.items()})
    names = sorted(FLAT)
    for split, part in (("train", names[:5]), ("val", names[5:10]), ("test", names[10:])):
        (root / f"{split}.txt").write_text("# classes\n" + "\n".join(part) + "\n\n")
    fam = family(root, tmp_path / "cache")
    assert fam.source().layout == "txt"
    assert fam.source().index().names("val") == tuple(names[5:10])
    assert fam.arrays.images.shape[0] == sum(FLAT.values())


# -- episodes


def test_episodes_have_the_declared_shapes_labels_and_pixels(flat_family: ImageFolder) -> None:
    fam = flat_family
    batch = fam.sample(3, 7, torch.arange(6), split="test")
    assert batch.support["x"].shape == (6, 5, 3, 8, 8) == (6, 5, *fam.io.input_shape)
    assert batch.query["x"].shape == (6, 10, 3, 8, 8) and batch.support["x"].dtype == torch.float32
    assert torch.equal(batch.support["y"][0], torch.arange(5))
    assert torch.equal(batch.query["y"][0], torch.arange(5).repeat_interleave(2))
    # The pixels are the cached ones, channels first, scaled by the training split's statistics.
    arrays = fam.arrays
    cls = int(batch.info["classes"][0, 0]) // 4
    mean, std = np.array(arrays.mean), np.array(arrays.std)
    candidates = arrays.images[arrays.starts[cls] : arrays.starts[cls] + arrays.counts[cls]]
    expect = (candidates.astype(np.float64) / 255 - mean) / std
    got = batch.support["x"][0, 0].permute(1, 2, 0).double().numpy()
    assert np.abs(expect - got).reshape(len(expect), -1).max(1).min() < 1e-5
    train = fam.sample(0, 0, torch.arange(64))
    x = train.support["x"].double()
    assert abs(float(x.mean())) < 0.15 and abs(float(x.std()) - 1) < 0.15


def test_raw_episodes_are_uint8_and_prepare_normalises_them_where_they_are(
    flat_family: ImageFolder,
) -> None:
    fam = flat_family
    raw = fam.sample_raw(3, 7, torch.arange(6), split="test")
    assert raw.support["x"].dtype == raw.query["x"].dtype == torch.uint8
    want = fam.sample(3, 7, torch.arange(6), split="test")
    for dtype in (torch.float32, torch.float64):
        got = fam.prepare(raw.to("cpu", dtype), dtype)
        for part in ("support", "query"):
            assert getattr(got, part)["x"].dtype == dtype
            assert torch.equal(getattr(got, part)["x"], getattr(want, part)["x"].to(dtype))
            assert torch.equal(getattr(got, part)["y"], getattr(want, part)["y"])
    assert torch.equal(raw.info["classes"], want.info["classes"])


def test_sampling_is_deterministic_and_per_task(flat_family: ImageFolder) -> None:
    fam = flat_family
    whole = fam.sample(0, 4, torch.arange(8))
    again = fam.sample(0, 4, torch.arange(8))
    part = fam.sample(0, 4, torch.tensor([5, 2]))
    assert torch.equal(whole.query["x"], again.query["x"])
    assert torch.equal(whole.support["x"][[5, 2]], part.support["x"])
    assert not torch.equal(whole.support["x"], fam.sample(0, 5, torch.arange(8)).support["x"])
    assert not torch.equal(whole.support["x"], fam.sample(1, 4, torch.arange(8)).support["x"])


def test_grey_unnormalised_and_rotated_classes(flat: Path, tmp_path: Path) -> None:
    fam = family(flat, tmp_path, channels=1, normalize="none", rotations=True, train_classes=5)
    assert fam.io.input_shape == (1, 8, 8)
    assert len(fam.pools["train"]) == 5 * 4
    batch = fam.sample(0, 0, torch.arange(32))
    x = batch.support["x"]
    assert x.shape == (32, 5, 1, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    classes = batch.info["classes"]
    assert bool((classes % 4 != 0).any())
    # A rotated class's images are the stored ones turned by its rotation.
    t, c = np.argwhere((classes % 4 == 1).numpy())[0]
    k = int(classes[t, c]) // 4
    start, count = int(fam.arrays.starts[k]), int(fam.arrays.counts[k])
    stored = fam.arrays.images[start : start + count, :, :, 0]
    turned = np.rot90(stored, 1, axes=(1, 2)).astype(np.float32) / 255
    assert any(np.allclose(turned[i], x[t, c, 0].numpy()) for i in range(len(turned)))


def test_too_few_images_for_override_shots_is_one_line(flat_family: ImageFolder) -> None:
    with pytest.raises(DataError) as error:
        flat_family.sample(0, 0, torch.arange(2), shots=8)
    message = str(error.value)
    assert "\n" not in message and "shots + query = 10" in message and "images" in message


# -- the cache


def test_cache_is_memory_mapped_and_reused(flat: Path, flat_family: ImageFolder) -> None:
    arrays = flat_family.arrays
    assert isinstance(arrays.images, np.memmap) and not arrays.images.flags.writeable
    sidecar = json.loads(arrays.path.with_suffix(".json").read_text())
    assert sidecar["shape"] == list(arrays.images.shape) and len(sidecar["sha256"]) == 64
    assert [len(sidecar["splits"][s]) for s in ("train", "val", "test")] == [5, 5, 5]
    mtime = arrays.path.stat().st_mtime_ns
    cache_dir = arrays.path.parent
    again = family(flat, cache_dir, train_classes=5, val_classes=5).arrays
    assert again.path == arrays.path and arrays.path.stat().st_mtime_ns == mtime
    assert np.array_equal(again.images, arrays.images)


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", {f"c{i}": 4 for i in range(15)})
    first = family(tmp_path / "data", tmp_path / "cache", query=1).arrays
    write_image(tmp_path / "data" / "c3" / "img000.png", seed=12345)
    second = family(tmp_path / "data", tmp_path / "cache", query=1).arrays
    assert second.path != first.path
    assert not np.array_equal(first.images, second.images)


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar"])
def test_damaged_cache_is_rebuilt(flat: Path, tmp_path: Path, damage: str) -> None:
    path = family(flat, tmp_path, train_classes=5, val_classes=5).arrays.path
    good = np.load(path).copy()
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[-7] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.with_suffix(".json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="rebuilding it"):
        arrays = family(flat, tmp_path, train_classes=5, val_classes=5).arrays
    assert np.array_equal(arrays.images, good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        family(flat, tmp_path, train_classes=5, val_classes=5).arrays  # noqa: B018


# -- broken inputs: one line each, and no cache left behind


def _broken(kind: str, root: Path) -> tuple[dict[str, Any], str]:
    """Make ``root`` broken in one way; return the options and a part of the expected message."""
    write_classes(root, {f"c{i}": 4 for i in range(15)})
    if kind == "undecodable":
        (root / "c4" / "img001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return {}, "c4/img001.jpg cannot be decoded"
    if kind == "html":
        (root / "c7" / "img000.png").write_bytes(b"<!DOCTYPE html><html>login</html>")
        return {}, "c7/img000.png is an HTML page"
    if kind == "too_few":
        for file in sorted((root / "c2").rglob("*.*"))[:3]:
            file.unlink()
        return {}, "class 'c2'"
    if kind == "csv_missing":
        (root / "train.csv").write_text("filename,label\nimg000.png,c0\nnope.png,c0\n")
        return {}, "row 3 names 'nope.png'"
    if kind == "empty":
        for file in sorted(root.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        return {}, "no classes found"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["undecodable", "html", "too_few", "csv_missing", "empty"])
def test_broken_inputs_are_one_line_and_leave_no_cache(tmp_path: Path, kind: str) -> None:
    options, expected = _broken(kind, tmp_path / "data")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as error:
        family(tmp_path / "data", cache, query=1, **options).arrays  # noqa: B018
    message = str(error.value)
    assert "\n" not in message and expected in message, message
    if kind == "too_few":
        assert "has 1 image," in message and "shots + query = 2" in message
    assert _no_files(cache)


def test_missing_data_dir_says_how_to_set_it(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("MAMLFLOW_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fam = ImageFolder(ImageFolderConfig(name="imagefolder"))
    with pytest.raises(DataError, match=r"task\.data_dir"):
        fam.source()
    assert isinstance(fam, ImageFamily)


# -- the preset and the CLI


def test_preset_has_the_miniimagenet_settings() -> None:
    cfg = resolve(PluginHost(autoload=False), preset="imagefolder").config
    assert (cfg.task.ways, cfg.task.shots, cfg.task.query) == (5, 1, 15)  # type: ignore[attr-defined]
    assert (cfg.inner.lr, cfg.inner.steps, cfg.eval.steps) == (0.01, 5, 10)
    assert cfg.train.meta_batch_size == 4
    assert (cfg.model.filters, cfg.model.downsample) == (32, "maxpool")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_run_and_eval_through_the_cli(
    flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    sets = [
        f"task.data_dir={flat}",
        f"task.cache_dir={tmp_path / 'cache'}",
        "task.image_size=16",
        "task.query=2",
        "task.train_classes=5",
        "task.val_classes=5",
        "model.filters=4",
        "train.iterations=3",
        "train.meta_batch_size=2",
        "train.val_every=3",
        "train.val_tasks=4",
        "eval.tasks=4",
        "eval.steps=2",
        "inner.steps=1",
        "kernel.strategy=loop",
    ]
    result = cli_run_and_eval("imagefolder", run_dir, sets, capsys)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_accuracy" in records[-1]
    manifest = json.loads((run_dir / "task.json").read_text())
    assert [len(manifest["classes"][s]) for s in ("train", "val", "test")] == [5, 5, 5]
    assert result["metric"] == "accuracy" and result["tasks"] == 4


class _RecordingFolder(ImageFolder):
    """The real family; ``prepare`` notes the pixel dtype and device the engine hands it."""

    name = "recording-imagefolder"
    seen: ClassVar[list[tuple[torch.dtype, str]]] = []

    def prepare(self, batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
        self.seen.append((batch.support["x"].dtype, batch.support["x"].device.type))
        return super().prepare(batch, dtype)


class _RecordingPlugin:
    @hookimpl
    def register_task_families(self, register: Callable[[type], None]) -> None:
        register(_RecordingFolder)


def test_the_trainer_and_evaluation_copy_uint8_and_prepare_after_the_copy(
    flat: Path, tmp_path: Path
) -> None:
    host = PluginHost(autoload=False)
    host.add_plugin(_RecordingPlugin(), "recording")
    sets = (
        "task.name=recording-imagefolder",
        f"task.data_dir={flat}",
        f"task.cache_dir={tmp_path / 'cache'}",
        "task.image_size=16",
        "task.query=2",
        "task.train_classes=5",
        "task.val_classes=5",
        "task.decode_workers=1",
        "model.filters=4",
        "train.iterations=3",
        "train.meta_batch_size=2",
        "train.val_every=3",
        "train.val_tasks=4",
        "inner.steps=1",
        "kernel.strategy=loop",
    )
    _RecordingFolder.seen.clear()
    Trainer(resolve(host, preset="imagefolder", sets=sets), tmp_path / "run", host).fit()
    # 3 training batches and the validation batch, each handed over as uint8 pixels.
    assert len(_RecordingFolder.seen) >= 4
    assert set(_RecordingFolder.seen) == {(torch.uint8, "cpu")}
