"""Tiny copies of the few-shot sets in each real layout: real file names, headers, dict keys and
nesting, few classes or few images. Python 2 pickles are written as Python 2 wrote them (``str``
as SHORT_BINSTRING/BINSTRING, ``numpy.core`` module names), so the readers' latin1 path runs.

By default an image is one flat colour (its value tells where it came from); ``noisy=True`` gives
each image its own random pixels instead, for copies tasks are sampled and trained from
(:func:`conformance_sets`)."""

from __future__ import annotations

import csv
import io
import json
import pickle
import struct
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mamlflow.plugins.fewshot._checks import Expected

SPLITS = ("train", "val", "test")

# CIFAR-100's superclasses (coarse_label_names order) and their five classes each.
CIFAR_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR_FINE = tuple(sorted(n for names in CIFAR_SUPERCLASSES.values() for n in names))

# The fixtures' counts, handed to the readers in place of the real sets'.
MINI_CLASSES = dict(zip(SPLITS, (3, 2, 2), strict=True))
MINI_PER_CLASS = 4
MINI_EXPECTED = Expected(classes=MINI_CLASSES, per_class=(MINI_PER_CLASS, MINI_PER_CLASS))
TIERED_EXPECTED = Expected(classes={"train": 3, "val": 2, "test": 2}, per_class=(2, 4))
CIFAR_TRAIN, CIFAR_TEST = 2, 1  # images per class in each batch
CUB_PER_CLASS = 2
CUB_EXPECTED = Expected(
    classes={"train": 100, "val": 50, "test": 50}, per_class=(1, 2), total=200 * CUB_PER_CLASS
)


def cifar_expected(variant: str) -> Expected:
    classes = (64, 16, 20) if variant == "cifar-fs" else (60, 20, 20)
    per = CIFAR_TRAIN + CIFAR_TEST
    return Expected(classes=dict(zip(SPLITS, classes, strict=True)), per_class=(per, per))


# --- Python 2 pickles


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as cPickle did."""

    dispatch: ClassVar[dict[type, Callable[..., None]]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: Any, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=protocol).dump(obj)
    # numpy 1 (and Python 2's numpy) named its reconstructor numpy.core.multiarray.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


# --- images


def pixels(value: int, size: int | tuple[int, int], *, noisy: bool = False) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 image: all ``value``, or random pixels seeded by it."""
    height, width = (size, size) if isinstance(size, int) else size
    if noisy:
        return np.random.default_rng(value).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.full((height, width, 3), value % 256, dtype=np.uint8)


def jpeg(value: int, size: int | tuple[int, int] = 84, *, noisy: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(value, size, noisy=noisy)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png(value: int, size: int = 8, *, noisy: bool = False) -> np.ndarray:
    """A PNG's bytes as cv2.imencode returns them: a uint8 column."""
    buffer = io.BytesIO()
    Image.fromarray(pixels(value, size, noisy=noisy)).save(buffer, "PNG")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(-1, 1).copy()


def wnids(split: str, count: int | None = None) -> list[str]:
    offset = {"train": 0, "val": 100, "test": 200}[split]
    count = MINI_CLASSES[split] if count is None else count
    return [f"n{1532829 + offset + i:08d}" for i in range(count)]


# --- MiniImagenet


def mini_csv(
    root: Path,
    *,
    beside: bool = False,
    classes: Mapping[str, int] = MINI_CLASSES,
    per_class: int = MINI_PER_CLASS,
    noisy: bool = False,
) -> Path:
    """Ravi & Larochelle's layout: {split}.csv + images/ (or the images beside the CSVs)."""
    images = root if beside else root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(SPLITS):
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for c, wnid in enumerate(wnids(split, classes[split])):
                for j in range(per_class):
                    name = f"{wnid}{j + 1:08d}.jpg"
                    value = s * 10_000 + c * 100 + j if noisy else c * 10 + j
                    (images / name).write_bytes(jpeg(value, noisy=noisy))
                    writer.writerow([name, wnid])
    return root


def mini_arrays(split: str) -> tuple[np.ndarray, dict[str, list[int]]]:
    names = wnids(split)
    per = MINI_PER_CLASS
    images = np.zeros((len(names) * per, 84, 84, 3), dtype=np.uint8)
    for row in range(len(images)):
        images[row] = row + 1
    # Rows interleaved across classes, as class_dict allows.
    classes = {name: list(range(c, len(images), len(names))) for c, name in enumerate(names)}
    return images, classes


def mini_pickles(root: Path, *, val_name: str = "val") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        images, classes = mini_arrays(split)
        name = val_name if split == "val" else split
        data = pickle.dumps({"image_data": images, "class_dict": classes}, protocol=4)
        (root / f"mini-imagenet-cache-{name}.pkl").write_bytes(data)
    return root


def mini_hdf5(root: Path) -> Path:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        images, classes = mini_arrays(split)
        with h5py.File(root / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            for name, rows in classes.items():
                group.create_dataset(name, data=images[rows])
        (root / f"{split}_labels.json").write_text(json.dumps(sorted(classes)))
    return root


# --- tieredImagenet


def tiered(
    root: Path, counts: Mapping[str, tuple[int, ...]] | None = None, *, noisy: bool = False
) -> Path:
    counts = counts or {"train": (2, 3, 4), "val": (2, 3), "test": (4, 2)}
    root.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(SPLITS):
        labels = np.repeat(np.arange(len(counts[split])), counts[split])
        if noisy:
            images = [png(s * 10_000 + i, noisy=True) for i in range(len(labels))]
        else:
            images = [png(10 * s + int(label)) for label in labels]
        names = [f"n{2000000 + 100 * s + i:08d}".encode() for i in range(len(counts[split]))]
        (root / f"{split}_images_png.pkl").write_bytes(py2_pickle(images))
        meta = {
            b"label_specific": labels,
            b"label_general": np.zeros_like(labels),
            b"label_specific_str": names,
            b"label_general_str": [b"n00001740"],
        }
        (root / f"{split}_labels.pkl").write_bytes(py2_pickle(meta))
    return root


# --- CIFAR-100


def cifar_members(
    meta_override: bytes | None = None,
    *,
    per_class: tuple[int, int] = (CIFAR_TRAIN, CIFAR_TEST),
    noisy: bool = False,
) -> dict[str, bytes]:
    """The pickles of cifar-100-python/, with ``per_class`` images per class in the train and
    test batches; every row's first byte is its fine label."""
    coarse_names = list(CIFAR_SUPERCLASSES)
    coarse_of = {f: coarse_names.index(c) for c, fs in CIFAR_SUPERCLASSES.items() for f in fs}
    members = {}
    for b, (batch, per) in enumerate(zip(("train", "test"), per_class, strict=True)):
        fine = [i for i in range(100) for _ in range(per)]
        data = np.repeat(np.array(fine, dtype=np.uint8)[:, None], 3072, axis=1)
        if noisy:
            data[:, 1:] = np.random.default_rng(b).integers(0, 256, (len(fine), 3071))
        members[batch] = py2_pickle({
            b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{batch}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [coarse_of[CIFAR_FINE[f]] for f in fine],
            b"data": data,
        })  # fmt: skip
    members["meta"] = meta_override or py2_pickle({
        b"fine_label_names": [n.encode() for n in CIFAR_FINE],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    })  # fmt: skip
    members["file.txt~"] = b""
    return members


def tar_gz(path: Path, members: Mapping[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def cifar_tarball(
    directory: Path,
    meta_override: bytes | None = None,
    *,
    per_class: tuple[int, int] = (CIFAR_TRAIN, CIFAR_TEST),
    noisy: bool = False,
) -> Path:
    members = cifar_members(meta_override, per_class=per_class, noisy=noisy)
    members = {f"cifar-100-python/{k}": v for k, v in members.items()}
    return tar_gz(directory / "cifar-100-python.tar.gz", members)


def cifar_folder(directory: Path) -> Path:
    folder = directory / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in cifar_members().items():
        (folder / name).write_bytes(data)
    return folder


# --- CUB-200-2011


def cub_species(count: int = 200) -> list[str]:
    return [f"{i:03d}.Species_number_{i}" for i in range(1, count + 1)]


def cub_members(
    per_class: int = CUB_PER_CLASS, *, species_count: int = 200, noisy: bool = False
) -> dict[str, bytes]:
    """The official nesting; with ``noisy``, photos of CUB's varying sizes (not square)."""
    species = cub_species(species_count)
    classes = "".join(f"{i} {name}\n" for i, name in enumerate(species, 1))
    lines, members, image_id = [], {}, 0
    for c, name in enumerate(species):
        for j in range(per_class):
            image_id += 1
            file = f"{name}/{name.split('.')[1]}_{j + 1:04d}_{100000 + image_id}.jpg"
            lines.append(f"{image_id} {file}\n")
            image = jpeg(image_id, size=(20, 26), noisy=True) if noisy else jpeg(c, size=8)
            members[f"CUB_200_2011/images/{file}"] = image
    return {
        "attributes.txt": b"1 has_bill_shape::curved_(up_or_down)\n",
        "CUB_200_2011/README": b"The Caltech-UCSD Birds-200-2011 Dataset\n",
        "CUB_200_2011/classes.txt": classes.encode(),
        "CUB_200_2011/images.txt": "".join(lines).encode(),
        **members,
    }


def cub_tarball(
    directory: Path,
    per_class: int = CUB_PER_CLASS,
    *,
    species_count: int = 200,
    noisy: bool = False,
) -> Path:
    members = cub_members(per_class, species_count=species_count, noisy=noisy)
    return tar_gz(directory / "CUB_200_2011.tgz", members)


def cub_folder(directory: Path) -> Path:
    for name, data in cub_members().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory / "CUB_200_2011"


# --- copies to sample and train from


CONFORMANCE_PER_CLASS = 10
"""Images per class in :func:`conformance_sets`: the 5-shot presets evaluate 5 + 5 a class."""


@dataclass(frozen=True)
class SmallSet:
    """A generated copy of a set in its real layout, and the counts it holds."""

    data_dir: Path
    expected: Expected
    options: Mapping[str, Any] = field(default_factory=dict)
    """Task options the family needs on top of ``data_dir`` (never download the real set)."""


def _expected(classes: tuple[int, int, int], per_class: tuple[int, int], total: int) -> Expected:
    return Expected(
        classes=dict(zip(SPLITS, classes, strict=True)), per_class=per_class, total=total
    )


def conformance_sets(root: Path) -> dict[str, SmallSet]:
    """Each few-shot family's set under ``root``, in one of its real layouts, with at least five
    classes per split (5-way tasks) and :data:`CONFORMANCE_PER_CLASS` random images per class.

    CIFAR-FS and FC100 keep all 100 CIFAR classes (their splits are lists of class names) and
    share one tarball; CUB keeps 20 species, split 10 / 5 / 5 by Chen et al.'s index rule.
    """
    per = CONFORMANCE_PER_CLASS
    five = dict.fromkeys(SPLITS, 5)
    mini = mini_csv(root / "miniimagenet", classes=five, per_class=per, noisy=True)
    tiered_counts = {split: (per, per + 1, per, per + 1, per) for split in SPLITS}
    tiered_dir = tiered(root / "tieredimagenet" / "tiered-imagenet", tiered_counts, noisy=True)
    cifar = cifar_tarball(root / "cifar100", per_class=(per - 2, 2), noisy=True).parent
    cub = cub_tarball(root / "cub", per, species_count=20, noisy=True).parent
    offline = {"download": False}
    return {
        "miniimagenet": SmallSet(mini, _expected((5, 5, 5), (per, per), 15 * per)),
        "tieredimagenet": SmallSet(
            tiered_dir.parent, _expected((5, 5, 5), (per, per + 1), 3 * (5 * per + 2))
        ),
        "cifar-fs": SmallSet(cifar, _expected((64, 16, 20), (per, per), 100 * per), offline),
        "fc100": SmallSet(cifar, _expected((60, 20, 20), (per, per), 100 * per), offline),
        "cub": SmallSet(cub, _expected((10, 5, 5), (per, per), 20 * per), offline),
    }


# --- hostile files


class Evil:
    """Unpickling this runs ``os.system`` (writing ``marker``), unless the reader refuses."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


class EvilWrite:
    """Unpickling this writes ``marker`` through ``builtins.open``... if allowed to."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


HTML = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Quota exceeded</title></head></html>"
