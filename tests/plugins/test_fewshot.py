"""The few-shot set readers on tiny copies of every real layout, the families and presets built
on them, and every broken input as one line that writes nothing (and runs nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlflow.core import DataError
from mamlflow.engine import PluginHost, resolve
from mamlflow.plugins import fewshot
from mamlflow.plugins.fewshot import _checks, _cifar, _cub, _mini, _splits, _tiered

from . import fewshot_fixtures as fx
from .image_fixtures import cli_run_and_eval

SPLITS = fx.SPLITS


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads or writes the real user cache or a developer's MAMLFLOW_DATA."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MAMLFLOW_DATA", raising=False)


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# --- the published splits


def test_cifar_fs_split_is_bertinettos_64_16_20_disjoint_classes() -> None:
    sets = [set(_splits.CIFAR_FS[s]) for s in SPLITS]
    assert [len(s) for s in sets] == [64, 16, 20]
    assert set().union(*sets) == set(fx.CIFAR_FINE)
    assert {"whale", "rose", "worm"} <= sets[2] and {"otter", "tractor"} <= sets[1]


def test_fc100_split_is_the_tadam_superclass_indices() -> None:
    order = list(fx.CIFAR_SUPERCLASSES)
    indices = {s: sorted(order.index(n) for n in _splits.FC100_SUPERCLASSES[s]) for s in SPLITS}
    assert indices == {
        "train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19],
        "val": [8, 11, 13, 16],
        "test": [0, 7, 12, 14],
    }


def test_cub_split_follows_closer_look() -> None:
    which = [_splits.cub_split(i) for i in range(200)]
    assert [which.count(s) for s in SPLITS] == [100, 50, 50]
    assert which[:8] == ["train", "val", "train", "test"] * 2


def test_expected_counts_are_the_published_ones() -> None:
    table = _checks.EXPECTED
    assert table["miniimagenet"].images == {"train": 38_400, "val": 9_600, "test": 12_000}
    assert sum(table["tieredimagenet"].images.values()) == 779_165
    assert table["fc100"].classes == {"train": 60, "val": 20, "test": 20}
    assert table["cub"].total == 11_788


# --- MiniImagenet's three layouts


def _check_mini(source: _mini.ImageSource, split: str = "val") -> None:
    index = source.index()
    assert [len(index.splits[s]) for s in SPLITS] == list(fx.MINI_CLASSES.values())
    assert index.names(split) == tuple(fx.wnids(split))
    assert set(index.counts(split)) == {fx.MINI_PER_CLASS}
    read = list(source.read(split))
    assert [name for name, _ in read] == [n for n in fx.wnids(split) for _ in range(4)]


@pytest.mark.parametrize("beside", [False, True], ids=["images-folder", "images-beside"])
def test_mini_csv_layout(tmp_path: Path, beside: bool) -> None:
    source = _mini.find_miniimagenet(fx.mini_csv(tmp_path, beside=beside), fx.MINI_EXPECTED)
    assert isinstance(source, _mini.MiniCsvSource)
    _check_mini(source)
    _, data = next(source.read("train"))
    assert isinstance(data, bytes) and data[:2] == b"\xff\xd8"  # the JPEG, undecoded


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_mini_pickle_layout(tmp_path: Path, val_name: str) -> None:
    source = _mini.find_miniimagenet(fx.mini_pickles(tmp_path, val_name=val_name), fx.MINI_EXPECTED)
    assert isinstance(source, _mini.MiniPickleSource)
    _check_mini(source)
    images, classes = fx.mini_arrays("test")
    read = list(source.read("test"))
    first = fx.wnids("test")[0]
    np.testing.assert_array_equal(read[1][1], images[classes[first][1]])


def test_mini_hdf5_layout(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    source = _mini.find_miniimagenet(fx.mini_hdf5(tmp_path), fx.MINI_EXPECTED)
    assert isinstance(source, _mini.MiniHdf5Source)
    _check_mini(source)


def test_mini_hdf5_without_h5py_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for split in SPLITS:
        (tmp_path / f"{split}_data.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
        (tmp_path / f"{split}_labels.json").write_text("[]")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(DataError) as err:
        _mini.find_miniimagenet(tmp_path, fx.MINI_EXPECTED).index()
    assert 'pip install "mamlflow[hdf5]"' in _one_line(err)


def test_mini_prefers_pickles_when_a_folder_has_several_layouts(tmp_path: Path) -> None:
    fx.mini_csv(tmp_path)
    fx.mini_pickles(tmp_path)
    assert isinstance(_mini.find_miniimagenet(tmp_path), _mini.MiniPickleSource)


# --- tieredImagenet, CIFAR, CUB


def test_tiered_reads_python2_pickles(tmp_path: Path) -> None:
    source = _tiered.locate_tiered(fx.tiered(tmp_path / "tiered-imagenet"), fx.TIERED_EXPECTED)
    index = source.index()
    assert index.splits["train"] == (("n02000000", 2), ("n02000001", 3), ("n02000002", 4))
    read = list(source.read("val"))
    assert [name for name, _ in read] == ["n02000100"] * 2 + ["n02000101"] * 3
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for _, data in read)


@pytest.mark.parametrize("packed", ["tarball", "folder"])
@pytest.mark.parametrize("variant", ["cifar-fs", "fc100"])
def test_cifar_families_split_the_100_classes(tmp_path: Path, variant: str, packed: str) -> None:
    (fx.cifar_tarball if packed == "tarball" else fx.cifar_folder)(tmp_path)
    expected = fx.cifar_expected(variant)
    source = _cifar.locate_cifar(variant, tmp_path, download=False, expected=expected)
    index = source.index()
    assert [len(index.splits[s]) for s in SPLITS] == list(expected.classes.values())
    if variant == "cifar-fs":
        assert index.names("test") == _splits.CIFAR_FS["test"]
    else:
        people = set(fx.CIFAR_SUPERCLASSES["people"])
        assert people <= set(index.names("test"))
    read = list(source.read("val"))
    assert len(read) == len(index.names("val")) * 3
    name, image = read[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert int(image[0, 0, 0]) == fx.CIFAR_FINE.index(name)  # pixel value = fine label


@pytest.mark.parametrize("packed", ["tarball", "folder"])
def test_cub_reads_the_official_nesting(tmp_path: Path, packed: str) -> None:
    (fx.cub_tarball if packed == "tarball" else fx.cub_folder)(tmp_path)
    source = _cub.locate_cub(tmp_path, download=False, expected=fx.CUB_EXPECTED)
    index = source.index()
    species = fx.cub_species()
    assert index.names("train")[:2] == (species[0], species[2])
    assert index.names("test")[:2] == (species[3], species[7])
    read = list(source.read("test"))
    assert [name for name, _ in read][:3] == [species[3], species[3], species[7]]
    assert all(data[:2] == b"\xff\xd8" for _, data in read)


def test_data_dir_may_be_the_extracted_folder_itself(tmp_path: Path) -> None:
    folder = fx.cub_folder(tmp_path)
    source = _cub.locate_cub(folder, download=False, expected=fx.CUB_EXPECTED)
    assert len(source.index().names("val")) == 50


# --- the families and presets


def test_a_family_builds_its_cache_and_samples_from_a_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_checks.EXPECTED, "miniimagenet", fx.MINI_EXPECTED)
    config = fewshot.MiniImagenetConfig(
        name="miniimagenet",
        ways=2,
        shots=1,
        query=2,
        data_dir=fx.mini_pickles(tmp_path / "data"),
        cache_dir=tmp_path / "cache",
        decode_workers=1,
    )
    family = fewshot.MiniImagenet(config)
    batch = family.sample(0, 0, torch.arange(3), split="test")
    assert batch.support["x"].shape == (3, 2, 3, 84, 84)
    assert batch.query["x"].shape == (3, 4, 3, 84, 84)
    assert family.manifest()["classes"]["test"] == fx.wnids("test")


def test_the_families_and_presets_are_registered() -> None:
    host = PluginHost(autoload=False)
    for name in ("miniimagenet", "tieredimagenet", "cifar-fs", "fc100", "cub"):
        assert host.task_family(name).name == name


@pytest.mark.parametrize(
    ("preset", "shots", "algorithm"),
    [
        ("miniimagenet", 1, "maml"),
        ("miniimagenet-5w5s", 5, "maml"),
        ("miniimagenet-fo", 1, "fomaml"),
        ("miniimagenet-5w5s-fo", 5, "fomaml"),
        ("cifar-fs", 1, "maml"),
        ("fc100", 1, "maml"),
        ("cub", 1, "maml"),
        ("tieredimagenet", 1, "maml"),
    ],
)
def test_presets_carry_the_authors_settings(preset: str, shots: int, algorithm: str) -> None:
    cfg = resolve(PluginHost(autoload=False), preset=preset).config
    assert (cfg.task.ways, cfg.task.shots, cfg.task.query) == (5, shots, 15)
    assert (cfg.model.filters, cfg.model.downsample) == (32, "maxpool")
    assert cfg.algorithm.name == algorithm
    assert (cfg.inner.steps, cfg.inner.lr, cfg.outer.lr) == (5, 0.01, 1e-3)
    assert (cfg.train.iterations, cfg.train.meta_batch_size) == (60_000, 4)
    assert (cfg.eval.steps, cfg.eval.tasks, cfg.eval.query) == (10, 600, shots)
    assert cfg.task.normalize == "none"


@pytest.mark.parametrize("layout", ["csv", "pickle", "hdf5"])
def test_metaflow_run_and_eval_miniimagenet_from_mamlflow_data(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    layout: str,
) -> None:
    """The done-when of issue 15, on fixtures: MAMLFLOW_DATA=<root> with root/miniimagenet in
    any of the three layouts, then `metaflow run --plugin miniimagenet` and `metaflow eval`."""
    if layout == "hdf5":
        pytest.importorskip("h5py")
    write = {"csv": fx.mini_csv, "pickle": fx.mini_pickles, "hdf5": fx.mini_hdf5}[layout]
    write(tmp_path / "root" / "miniimagenet")
    monkeypatch.setenv("MAMLFLOW_DATA", str(tmp_path / "root"))
    monkeypatch.setitem(_checks.EXPECTED, "miniimagenet", fx.MINI_EXPECTED)
    run_dir = tmp_path / "run"
    sets = [
        f"task.cache_dir={tmp_path / 'cache'}",
        "task.ways=2",
        "task.query=2",
        "task.decode_workers=1",
        "model.filters=4",
        "train.iterations=2",
        "train.meta_batch_size=2",
        "inner.steps=1",
        "eval.tasks=4",
        "eval.steps=1",
        "kernel.strategy=loop",
    ]
    result = cli_run_and_eval("miniimagenet", run_dir, sets, capsys)
    manifest = json.loads((run_dir / "task.json").read_text())
    assert manifest["classes"]["test"] == fx.wnids("test")
    assert result["metric"] == "accuracy" and result["tasks"] == 4
