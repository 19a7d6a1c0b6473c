"""The base every image classification family subclasses: config, cache, sampling, objectives.

A subclass (``imagefolder``, MiniImagenet, CIFAR-FS, …) sets ``name``, ``description``,
``Config`` (an :class:`ImageFamilyConfig` subclass with its own defaults) and implements
:meth:`ImageFamily.source`, which builds the reader of its raw files from ``self.config``.
Everything else is shared: the uint8 memory-mapped cache (``_cache``), the count checks that
fail before training rather than mid-run, the numba episode kernel of ``mamlflow.kernels`` (its
numpy twin when numba cannot run), and normalisation, which ``prepare`` applies to the sampled
uint8 batch wherever it is (on the GPU in a GPU run: the engine copies uint8), never to the
cache.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mamlflow.core import (
    SPLITS,
    DataError,
    ImageInputs,
    ModelIO,
    Split,
    TaskBatch,
    TaskConfig,
    TaskFamily,
    TaskObjective,
    rng,
)

from ._cache import CacheOptions, ImageArrays, load_image_cache
from ._decode import RESAMPLE
from ._source import ImageSource

if TYPE_CHECKING:
    from mamlflow.kernels import ImageEpisodes

__all__ = ["ROTATIONS", "ImageFamily", "ImageFamilyConfig"]

log = logging.getLogger("mamlflow.images")

ROTATIONS = 4
"""Class ids in a pool are ``class * ROTATIONS + rotation``, as in Omniglot."""

Model = Callable[[dict[str, Tensor], Tensor], Tensor]


class ImageFamilyConfig(TaskConfig):
    """What every image family has; a subclass changes defaults and adds its layout's options."""

    ways: int = Field(5, ge=2, description="classes per task (N-way)")
    shots: int = Field(1, ge=1, description="support images per class (K-shot)")
    query: int = Field(15, ge=1, description="query images per class")
    data_dir: Path | None = Field(None, description="where the raw images are")
    cache_dir: Path | None = Field(
        None, description="where the resized uint8 cache goes (default: the user cache dir)"
    )
    image_size: int = Field(84, ge=4, le=1024, description="side of the square resized images")
    channels: Literal[1, 3] = Field(3, description="1: greyscale, 3: RGB")
    normalize: Literal["dataset", "none"] = Field(
        "dataset",
        description=(
            "dataset: subtract the training split's per-channel mean and divide by its std "
            "(computed when the cache is built); none: pixels / 255 in [0, 1]"
        ),
    )
    rotations: bool = Field(False, description="each 90° rotation of a class is a class of its own")
    decode_workers: int | None = Field(
        None, ge=1, description="processes decoding images for the cache (default: all cores)"
    )


class ImageFamily(TaskFamily):
    """N-way K-shot classification of images from a folder, CSVs, pickles or an archive."""

    Config: ClassVar[type[TaskConfig]] = ImageFamilyConfig
    # sample reads the memory-mapped cache and the pools, all opened before training starts.
    prefetch: ClassVar[bool] = True
    metric = "accuracy"
    config: ImageFamilyConfig

    @abstractmethod
    def source(self) -> ImageSource:
        """The reader of this family's raw files, built from ``self.config`` (no decoding)."""

    # -- the data

    @property
    def io(self) -> ModelIO:
        size = self.config.image_size
        return ModelIO(input_shape=(self.config.channels, size, size), output_dim=self.config.ways)

    @cached_property
    def arrays(self) -> ImageArrays:
        """The memory-mapped cache, built on first use; counts are checked before decoding."""
        cfg = self.config
        options = CacheOptions(image_size=cfg.image_size, channels=cfg.channels)
        return load_image_cache(
            self.source(),
            stem=self.name,
            options=options,
            cache_dir=cfg.cache_dir,
            workers=cfg.decode_workers,
            check=lambda index: self._check_index(index.splits),
            progress=self._progress,
        )

    @property
    def images(self) -> np.ndarray:
        """All images, split by split, class by class: uint8 ``(N, H, W, C)``, memory-mapped."""
        return self.arrays.images

    def _progress(self, done: int, total: int) -> None:
        # Decoding tens of thousands of JPEGs takes minutes: say how far, every ~10%.
        step = self.__dict__.setdefault("_progress_step", [0])
        if done * 10 >= step[0] * total:
            size = self.config.image_size
            log.info(
                "%s: building the %dx%d cache, %d/%d images", self.name, size, size, done, total
            )
            step[0] = done * 10 // max(total, 1) + 1

    def _check_index(self, splits: Mapping[str, tuple[tuple[str, int], ...]]) -> None:
        """Fail before decoding when a split cannot fill the configured tasks."""
        cfg = self.config
        for split, classes in splits.items():
            if classes:
                self._check_split(split, classes, cfg.shots + cfg.query)

    def _check_split(self, split: str, classes: tuple[tuple[str, int], ...], needed: int) -> None:
        cfg = self.config
        per_class = ROTATIONS if cfg.rotations else 1
        if len(classes) * per_class < cfg.ways:
            raise DataError(
                f"{self.name}: the {split} split has {len(classes) * per_class} classes, fewer "
                f"than task.ways={cfg.ways}; lower task.ways or give the split more classes"
            )
        for name, count in classes:
            if count < needed:
                raise DataError(
                    f"{self.name}: class {name!r} of the {split} split has {count} "
                    f"image{'' if count == 1 else 's'}, but "
                    f"shots + query = {needed} are drawn from each class; lower task.shots or "
                    f"task.query, or remove the class"
                )

    @cached_property
    def pools(self) -> dict[str, np.ndarray]:
        """Per split, the class ids (``class * 4 + rotation``) a task draws its classes from."""
        rotations = np.arange(ROTATIONS if self.config.rotations else 1, dtype=np.int64)
        return {
            split: (classes[:, None] * ROTATIONS + rotations[None, :]).reshape(-1)
            for split, classes in self.arrays.splits.items()
        }

    def manifest(self) -> dict[str, Any]:
        arrays = self.arrays
        return {
            "source": arrays.source,
            "cache": str(arrays.path),
            "image_size": self.config.image_size,
            "channels": self.config.channels,
            "normalize": self.config.normalize,
            "mean": list(arrays.mean),
            "std": list(arrays.std),
            "rotations": self.config.rotations,
            "classes": {
                split: [arrays.names[i] for i in classes.tolist()]
                for split, classes in arrays.splits.items()
            },
        }

    def image_inputs(self, manifest: Mapping[str, Any]) -> ImageInputs:
        """The cache's decode and resize, then ``prepare``'s scaling, with the statistics the
        run recorded (its ``task.json``), so the training images need not be present."""
        channels, normalize = self.config.channels, self.config.normalize
        if normalize == "none":
            mean, std = (0.0,) * channels, (1.0,) * channels
        else:
            try:
                mean, std = tuple(manifest["mean"]), tuple(manifest["std"])
            except (KeyError, TypeError):
                raise DataError(
                    f"{self.name}: the run's task.json does not record the training split's "
                    "mean and std that task.normalize=dataset scaled by; restore task.json"
                ) from None
        return ImageInputs(
            size=self.config.image_size, channels=channels, mean=mean, std=std, resample=RESAMPLE
        )

    # -- sampling

    @cached_property
    def _sampler(self) -> Callable[..., ImageEpisodes]:
        # numba is imported here, never by the core; the twin keeps sampling possible without it.
        from mamlflow.kernels import (
            image_episodes_available,
            sample_image_episodes,
            sample_image_episodes_reference,
        )

        if image_episodes_available():
            return sample_image_episodes
        log.warning("numba image episode kernel unavailable; sampling with the numpy twin")
        return sample_image_episodes_reference

    @cached_property
    def _scale_shift(self) -> tuple[Tensor, Tensor]:
        """``x = pixel * scale - shift`` per channel: /255, then the dataset's mean and std."""
        if self.config.normalize == "none":
            mean, std = (0.0,) * self.config.channels, (1.0,) * self.config.channels
        else:
            mean, std = self.arrays.mean, self.arrays.std
        std_t = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
        return (1.0 / (255.0 * std_t)).float(), (mean_t / std_t).float()

    @cached_property
    def _scale_shift_on(self) -> dict[torch.device, tuple[Tensor, ...]]:
        return {}

    def _pixels(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        # Always computed in float32, then cast: a float64 run sees the values sample() gives.
        if x.device not in self._scale_shift_on:  # copied to a device once, not every batch
            self._scale_shift_on[x.device] = tuple(t.to(x.device) for t in self._scale_shift)
        scale, shift = self._scale_shift_on[x.device]
        return x.to(torch.float32).mul_(scale).sub_(shift).to(dtype)

    def _check_sizes(self, split: Split, shots: int, query: int) -> None:
        arrays = self.arrays
        if len(arrays.splits.get(split, ())) == 0:
            raise DataError(
                f"{self.name}: {arrays.source} has no {split} classes; add a {split} split "
                f"to the data or do not sample it"
            )
        classes = arrays.splits[split]
        counts = arrays.counts[classes]
        if counts.min() < shots + query:
            self._check_split(
                split,
                tuple(zip((arrays.names[i] for i in classes), counts.tolist(), strict=True)),
                shots + query,
            )

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
        raw = self.sample_raw(seed, iteration, task_indices, split=split, shots=shots, query=query)
        return self.prepare(raw, torch.float32)

    def sample_raw(
        self,
        seed: int,
        iteration: int,
        task_indices: Tensor,
        *,
        split: Split = "train",
        shots: int | None = None,
        query: int | None = None,
    ) -> TaskBatch:
        """The episodes' uint8 pixels: a quarter of float32's bytes to copy to the device."""
        shots = self.config.shots if shots is None else shots
        query = self.config.query if query is None else query
        self._check_sizes(split, shots, query)
        arrays = self.arrays
        episodes = self._sampler(
            arrays.images,
            arrays.starts,
            arrays.counts,
            self.pools[split],
            rng.derive_key(seed, SPLITS[split], iteration),
            task_indices.numpy().astype(np.int64),
            self.config.ways,
            shots,
            query,
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

    def prepare(self, batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
        """uint8 pixels to ``dtype``, scaled to [0, 1] and normalised, where the batch is."""

        def pixels(part: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {**part, "x": self._pixels(part["x"], dtype)}

        return TaskBatch(pixels(batch.support), pixels(batch.query), batch.task_index, batch.info)

    # -- objectives

    def objective(self, model: Model) -> TaskObjective:
        ways = self.config.ways

        # cbfinn/maml's utils.xent is softmax_cross_entropy_with_logits / update_batch_size:
        # the per-example sum over K, i.e. N times the mean, for MiniImagenet as for Omniglot.
        # The paper's α = 0.01 is for that scale, so the mean is scaled back up to it here.
        def loss(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
            return F.cross_entropy(model(params, data["x"]), data["y"]) * ways

        return loss

    def score(self, model: Model) -> TaskObjective:
        def accuracy(params: dict[str, Tensor], data: Mapping[str, Tensor]) -> Tensor:
            logits = model(params, data["x"])
            return (logits.argmax(-1) == data["y"]).to(logits.dtype).mean()

        return accuracy
