"""The published class splits of the sets built from a whole labelled data set, shipped as data.

* CIFAR-FS (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"):
  64 / 16 / 20 CIFAR-100 classes, from the authors' ``data/cifar-fs/splits/bertinetto/
  {train,val,test}.txt``. Checked against the copy torchmeta ships
  (tristandeleu/pytorch-meta: torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json,
  which lists each class with its superclass); listed here in CIFAR's fine-label order.
* FC100 (Oreshkin et al. 2018, "TADAM"): whole CIFAR-100 superclasses, 12 / 4 / 4 of them, so
  that no superclass is shared between splits. Checked against tristandeleu/pytorch-meta:
  torchmeta/datasets/assets/cifar100/fc100/{train,val,test}.json (superclass names) and the
  indices they have in CIFAR-100's ``coarse_label_names``.
* CUB (Chen et al. 2019, "A Closer Look at Few-shot Classification"): of the 200 species in
  ``classes.txt`` order (0-based ``i``), ``i % 2 == 0`` train, ``i % 4 == 1`` val,
  ``i % 4 == 3`` test, as in wyharveychen/CloserLookFewShot: filelists/CUB/write_CUB_filelist.py
  (100 / 50 / 50).
"""

from __future__ import annotations

__all__ = ["CIFAR_FS", "FC100_SUPERCLASSES", "cub_split"]

CIFAR_FS: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup",
        "dinosaur", "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo",
        "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom",
        "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train",
        "trout", "tulip", "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish",
        "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe",
        "whale", "woman", "worm",
    ),
}  # fmt: skip

# Superclass indices in CIFAR-100's coarse_label_names: train 1, 2, 3, 4, 5, 6, 9, 10, 15, 17,
# 18, 19; val 8, 11, 13, 16; test 0, 7, 12, 14. By name, so a reordered meta file cannot shift it.
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes", "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
        "small_mammals",
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}  # fmt: skip


def cub_split(index: int) -> str:
    """The split of the species at 0-based ``index`` in ``classes.txt`` (Chen et al. 2019)."""
    if index % 2 == 0:
        return "train"
    return "val" if index % 4 == 1 else "test"
