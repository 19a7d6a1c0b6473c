"""Omniglot few-shot classification (the paper's §5.2) and its four presets.

``split="paper"`` splits characters as the authors' code does: a seeded shuffle of all 1,623
characters, the first 1,100 for meta-training, the next 100 for validation, the remaining 423 for
meta-testing. ``split="vinyals"`` is the fixed alphabet split of Vinyals et al. (2016) used by
most later work: 1,028 / 172 / 423 characters. Each character rotated by 0/90/180/270° is a class
of its own (Santoro et al.), in every split.

A task holds N distinct characters, each at a rotation drawn per task and character, as the
authors' code samples them (``distinct="characters"``). ``distinct="classes"`` draws N distinct
classes from the split's character × rotation pool instead, so one task can hold two rotations of
a character (in 1.8% of 5-way tasks on the 423 test characters, 29% of 20-way ones): mamlflow's
sampling before issue 14, kept bit for bit to reproduce older runs. The episode sampler is the
numba kernel of ``mamlflow.kernels`` (its numpy twin when numba cannot run), keyed by (seed,
split, iteration, global task index) like every task family.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from mamlflow.core import (
    SAVED_DEFAULT,
    SPLITS,
    ImageInputs,
    ModelIO,
    Preset,
    Split,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    hookimpl,
    rng,
)

if TYPE_CHECKING:
    from mamlflow.kernels import Episodes

    from ._data import OmniglotArrays

__all__ = ["Omniglot", "OmniglotConfig", "OmniglotSplits"]

log = logging.getLogger("mamlflow.omniglot")

NUM_CHARACTERS = 1623
ROTATIONS = 4


class OmniglotConfig(TaskConfig):
    ways: int = Field(5, ge=2, description="classes per task (N-way)")
    shots: int = Field(1, ge=1, description="support examples per class (K-shot)")
    query: int = Field(1, ge=1, description="query examples per class")
    data_dir: Path | None = Field(
        None, description="folder with images_background/evaluation (.zip or extracted)"
    )
    cache_dir: Path | None = Field(None, description="where the 28x28 cache goes")
    download: bool = Field(True, description="download the official archives when missing")
    train_characters: int = Field(1100, ge=1, description="characters for meta-training")
    val_characters: int = Field(100, ge=0, description="characters for validation")
    split: Literal["paper", "vinyals"] = Field(
        "paper", description="paper: seeded 1100/100/423 shuffle; vinyals: fixed alphabet split"
    )
    split_seed: int = Field(1, description="seed of the paper split's character shuffle")
    rotations: bool = Field(True, description="each 90° rotation of a character is a class")
    distinct: Literal["characters", "classes"] = Field(
        "characters",
        description=(
            "what a task's N classes differ in. characters (the authors' sampling): N different "
            "characters, each at a random rotation drawn per task and character. classes: N "
            "different character x rotation classes, so a task can hold two rotations of one "
            "character (mamlflow's sampling before issue 14: reproduces older runs bit for bit). "
            "Without rotations both are the same"
        ),
        # A run saved before this option existed sampled classes, and keeps doing so.
        json_schema_extra={SAVED_DEFAULT: "classes"},
    )

    @model_validator(mode="after")
    def _fits(self) -> OmniglotConfig:
        if self.train_characters + self.val_characters >= NUM_CHARACTERS:
            raise ValueError(
                f"train_characters + val_characters must leave test characters "
                f"(< {NUM_CHARACTERS}), got {self.train_characters + self.val_characters}"
            )
        if self.shots + self.query > 20:
            raise ValueError("shots + query must be at most 20 (drawings per character)")
        if self.split == "paper":  # the Vinyals split's sizes are known once the data is
            self._ways_fit()
        return self

    def _ways_fit(self) -> None:
        per_character = ROTATIONS if self.rotations and self.distinct == "classes" else 1
        test = NUM_CHARACTERS - self.train_characters - self.val_characters
        sizes = {"training": self.train_characters, "validation": self.val_characters}
        for split, characters in {**sizes, "test": test}.items():
            if 0 < characters * per_character < self.ways:
                what = "classes" if per_character > 1 else "characters"
                raise ValueError(
                    f"ways={self.ways} exceeds the {characters * per_character} {split} {what} "
                    f"(task.distinct={self.distinct})"
                )


# Vinyals et al. (2016): test = these evaluation alphabets plus Gurmukhi characters 42-45;
# validation = these background alphabets; training = every other character.
_VINYALS_TEST_ALPHABETS = frozenset({
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
})  # fmt: skip
_VINYALS_TEST_EXTRA = frozenset(f"Gurmukhi/character{i}" for i in (42, 43, 44, 45))
_VINYALS_VAL_ALPHABETS = frozenset(
    {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
)


def _vinyals_split(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    def split_of(name: str) -> str:
        alphabet = name.split("/", 1)[0]
        if alphabet in _VINYALS_TEST_ALPHABETS or name in _VINYALS_TEST_EXTRA:
            return "test"
        return "val" if alphabet in _VINYALS_VAL_ALPHABETS else "train"

    which = np.array([split_of(n) for n in names])
    return {s: np.flatnonzero(which == s) for s in ("train", "val", "test")}


class OmniglotSplits:
    """Which characters each split may use, and the pool of ids the sampler draws a task from.

    ``names`` (``"<Alphabet>/characterNN"`` per character index) is needed for the Vinyals split
    only; the paper split is a pure function of ``split_seed``. With ``random_rotation`` a pool
    holds one upright id per character and the sampler draws each chosen character's rotation;
    without, it holds every class the split may use (character × rotation, or upright only when
    ``rotations`` is off).
    """

    def __init__(self, config: OmniglotConfig, names: tuple[str, ...] | None = None) -> None:
        if config.split == "vinyals":
            if names is None:
                raise ValueError("the Vinyals split needs the character names of the data")
            self.characters = _vinyals_split(names)
        else:
            order = np.random.default_rng(config.split_seed).permutation(NUM_CHARACTERS)
            n_train, n_val = config.train_characters, config.val_characters
            self.characters = {
                "train": np.sort(order[:n_train]),
                "val": np.sort(order[n_train : n_train + n_val]),
                "test": np.sort(order[n_train + n_val :]),
            }
        # distinct="characters" leaves the rotation to the sampler, one per task and character.
        self.random_rotation = config.rotations and config.distinct == "characters"
        pooled = config.rotations and config.distinct == "classes"
        rotations = np.arange(ROTATIONS if pooled else 1)
        # Class id = character * 4 + rotation, the episode kernel's convention.
        self.pools: dict[str, np.ndarray] = {
            split: (chars[:, None] * ROTATIONS + rotations[None, :]).reshape(-1).astype(np.int64)
            for split, chars in self.characters.items()
        }


def _cross_entropy(
    model: Callable[[dict[str, Tensor], Tensor], Tensor], ways: int
) -> TaskObjective:
    # The authors' code sums the per-example cross-entropy and divides by K, which is N times
    # the mean: the paper's inner learning rates (0.4 for 5-way, 0.1 for 20-way) are for that
    # scale, so the mean is scaled back up to it here.
    def loss(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(model(params, data["x"]), data["y"]) * ways

    return loss


def _accuracy(model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
    def accuracy(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
        logits = model(params, data["x"])
        return (logits.argmax(-1) == data["y"]).to(logits.dtype).mean()

    return accuracy


class Omniglot(TaskFamily):
    """N-way K-shot classification of Omniglot characters."""

    name: ClassVar[str] = "omniglot"
    Config: ClassVar[type[TaskConfig]] = OmniglotConfig
    metric = "accuracy"
    description: ClassVar[str] = "Omniglot N-way K-shot classification (Finn et al. 2017, §5.2)"
    # sample reads the image array and the split's pools, both built before training starts.
    prefetch: ClassVar[bool] = True
    config: OmniglotConfig

    @property
    def io(self) -> ModelIO:
        return ModelIO(input_shape=(1, 28, 28), output_dim=self.config.ways)

    @cached_property
    def splits(self) -> OmniglotSplits:
        names = self.arrays.characters if self.config.split == "vinyals" else None
        return OmniglotSplits(self.config, names)

    @cached_property
    def arrays(self) -> OmniglotArrays:
        """All images and names, loaded (and cached on disk) on first use."""
        from ._data import load_omniglot

        cfg = self.config
        step = [0]

        def progress(done: int, total: int) -> None:
            # The one-time 28x28 build takes seconds to a minute: say so, every ~20%.
            if done * 5 >= step[0] * total:
                log.info("omniglot: building the 28x28 cache, %d/%d images", done, total)
                step[0] = done * 5 // total + 1

        return load_omniglot(
            cfg.data_dir, cache_dir=cfg.cache_dir, download=cfg.download, progress=progress
        )

    def manifest(self) -> dict[str, object]:
        names = self.arrays.characters
        return {
            "split": self.config.split,
            "split_seed": self.config.split_seed if self.config.split == "paper" else None,
            "rotations": self.config.rotations,
            "distinct": self.config.distinct,
            "characters": {
                split: [names[i] for i in chars] for split, chars in self.splits.characters.items()
            },
        }

    def image_inputs(self, manifest: Mapping[str, object]) -> ImageInputs:
        # What the cache build does to a drawing (_data._preprocess), then the kernel's /255.
        return ImageInputs(size=28, channels=1, mean=(0.0,), std=(1.0,), invert=True)

    @property
    def images(self) -> np.ndarray:
        """The (1623, 20, 28, 28) uint8 array, ink = 255."""
        return self.arrays.images

    @cached_property
    def _sampler(self) -> Callable[..., Episodes]:
        # numba is imported here, never by the core; the twin keeps sampling possible without it.
        from mamlflow.kernels import numba_available, sample_episodes, sample_episodes_reference

        if numba_available():
            return sample_episodes
        log.warning("numba episode kernel unavailable; sampling with the numpy twin (slower)")
        return sample_episodes_reference

    def sample(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        shots = self.config.shots if shots is None else shots
        query = self.config.query if query is None else query
        key = rng.derive_key(seed, SPLITS[split], iteration)
        episodes = self._sampler(
            self.images,
            self.splits.pools[split],
            key,
            task_indices.numpy().astype(np.int64),
            self.config.ways,
            shots,
            query,
            random_rotation=self.splits.random_rotation,
        )
        return TaskBatch(
            support={
                "x": torch.from_numpy(episodes.support_x),
                "y": torch.from_numpy(episodes.support_y),
            },
            query={
                "x": torch.from_numpy(episodes.query_x),
                "y": torch.from_numpy(episodes.query_y),
            },
            task_index=task_indices.clone(),
            info={"classes": torch.from_numpy(episodes.classes)},
        )

    def objective(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        return _cross_entropy(model, self.config.ways)

    def score(self, model: Callable[[dict[str, Tensor], Tensor], Tensor]) -> TaskObjective:
        return _accuracy(model)


def _preset(name: str, ways: int, shots: int, description: str) -> Preset:
    five_way = ways == 5
    return Preset(
        name=name,
        description=description,
        values={
            "task": {"name": "omniglot", "ways": ways, "shots": shots, "query": shots},
            "model": {"name": "conv4", "filters": 64, "downsample": "stride"},
            "algorithm": {"name": "maml"},
            # The paper: 5-way α=0.4, 1 step in training and 3 at test, 32 tasks per batch;
            # 20-way α=0.1, 5 steps in both, 16 tasks.
            "inner": {"steps": 1 if five_way else 5, "lr": 0.4 if five_way else 0.1},
            "outer": {"name": "adam", "lr": 1e-3},
            "train": {
                "iterations": 60_000,
                "meta_batch_size": 32 if five_way else 16,
                "val_every": 500,
                "val_tasks": 100,
                "log_every": 50,
                "checkpoint_every": 500,
            },
            "eval": {"steps": 3 if five_way else 5, "tasks": 600, "batch_size": 50},
        },
    )


PRESETS = (
    _preset("omniglot", 5, 1, "Omniglot 5-way 1-shot, the paper's schedule (Table 1: 98.7%)"),
    _preset("omniglot-5w5s", 5, 5, "Omniglot 5-way 5-shot, the paper's schedule (99.9%)"),
    _preset("omniglot-20w1s", 20, 1, "Omniglot 20-way 1-shot, the paper's schedule (95.8%)"),
    _preset("omniglot-20w5s", 20, 5, "Omniglot 20-way 5-shot, the paper's schedule (98.9%)"),
)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(Omniglot)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
