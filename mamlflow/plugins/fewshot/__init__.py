"""The standard few-shot image sets as task families, and their presets.

* ``miniimagenet``: 64 / 16 / 20 ImageNet classes x 600 images, from Ravi & Larochelle's CSVs
  with the images, the ``mini-imagenet-cache-*.pkl`` pickles, or torchmeta's HDF5 files.
* ``tieredimagenet``: 351 / 97 / 160 ImageNet classes, from the authors' PNG pickles.
* ``cifar-fs`` (64 / 16 / 20 classes) and ``fc100`` (60 / 20 / 20, by superclass): CIFAR-100,
  from its official tarball (downloaded, md5-checked, when missing and ``task.download``).
* ``cub``: CUB-200-2011's 200 species, 100 / 50 / 50, from its official tarball (downloaded too).

Each family is an :class:`~mamlflow.plugins.images.ImageFamily`: the readers here only list and
stream a set's images (``ImageSource``); the images plugin caches them as uint8 and samples the
episodes. Every reader checks its files before anything is decoded, reads pickles without running
them, and fails with one line saying what it found and how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from mamlflow.core import Preset, TaskConfig, TaskFamily, hookimpl
from mamlflow.plugins.images import ImageFamily, ImageFamilyConfig, ImageSource

from ._checks import EXPECTED as EXPECTED
from ._checks import Expected as Expected
from ._cifar import locate_cifar
from ._cub import locate_cub
from ._mini import find_miniimagenet
from ._presets import PRESETS
from ._tiered import locate_tiered

__all__ = [
    "EXPECTED",
    "FAMILIES",
    "PRESETS",
    "CifarFs",
    "CifarFsConfig",
    "Cub",
    "CubConfig",
    "Expected",
    "Fc100",
    "Fc100Config",
    "MiniImagenet",
    "MiniImagenetConfig",
    "TieredImagenet",
    "TieredImagenetConfig",
]


class MiniImagenetConfig(ImageFamilyConfig):
    data_dir: Path | None = Field(
        None,
        description=(
            "folder with train/val/test.csv + images/, mini-imagenet-cache-{train,val,test}.pkl, "
            "or {train,val,test}_data.hdf5 + _labels.json"
        ),
    )


class TieredImagenetConfig(ImageFamilyConfig):
    data_dir: Path | None = Field(
        None, description="folder with {train,val,test}_images_png.pkl and _labels.pkl"
    )


class CifarFsConfig(ImageFamilyConfig):
    data_dir: Path | None = Field(
        None, description="folder with cifar-100-python.tar.gz or its cifar-100-python/ folder"
    )
    image_size: int = Field(32, ge=4, le=1024, description="side of the square resized images")
    download: bool = Field(True, description="download the official CIFAR-100 when missing")


class Fc100Config(CifarFsConfig):
    pass


class CubConfig(ImageFamilyConfig):
    data_dir: Path | None = Field(
        None, description="folder with CUB_200_2011.tgz or its CUB_200_2011/ folder"
    )
    download: bool = Field(True, description="download the official CUB-200-2011 when missing")


class MiniImagenet(ImageFamily):
    """N-way K-shot classification of MiniImagenet's 84x84 ImageNet crops."""

    name: ClassVar[str] = "miniimagenet"
    Config: ClassVar[type[TaskConfig]] = MiniImagenetConfig
    description: ClassVar[str] = "MiniImagenet N-way K-shot classification (Finn et al. 2017, §5.2)"
    config: MiniImagenetConfig

    def source(self) -> ImageSource:
        return find_miniimagenet(self.config.data_dir)


class TieredImagenet(ImageFamily):
    """N-way K-shot classification of tieredImagenet (Ren et al. 2018)."""

    name: ClassVar[str] = "tieredimagenet"
    Config: ClassVar[type[TaskConfig]] = TieredImagenetConfig
    description: ClassVar[str] = "tieredImagenet N-way K-shot classification (Ren et al. 2018)"
    config: TieredImagenetConfig

    def source(self) -> ImageSource:
        return locate_tiered(self.config.data_dir)


class CifarFs(ImageFamily):
    """N-way K-shot classification of CIFAR-FS (Bertinetto et al. 2019)."""

    name: ClassVar[str] = "cifar-fs"
    Config: ClassVar[type[TaskConfig]] = CifarFsConfig
    description: ClassVar[str] = "CIFAR-FS N-way K-shot classification (Bertinetto et al. 2019)"
    config: CifarFsConfig

    def source(self) -> ImageSource:
        return locate_cifar("cifar-fs", self.config.data_dir, download=self.config.download)


class Fc100(ImageFamily):
    """N-way K-shot classification of FC100 (Oreshkin et al. 2018)."""

    name: ClassVar[str] = "fc100"
    Config: ClassVar[type[TaskConfig]] = Fc100Config
    description: ClassVar[str] = "FC100 N-way K-shot classification (Oreshkin et al. 2018)"
    config: Fc100Config

    def source(self) -> ImageSource:
        return locate_cifar("fc100", self.config.data_dir, download=self.config.download)


class Cub(ImageFamily):
    """N-way K-shot classification of CUB-200-2011 birds, split as in Chen et al. 2019."""

    name: ClassVar[str] = "cub"
    Config: ClassVar[type[TaskConfig]] = CubConfig
    description: ClassVar[str] = "CUB-200-2011 N-way K-shot classification (Chen et al. 2019 split)"
    config: CubConfig

    def source(self) -> ImageSource:
        return locate_cub(self.config.data_dir, download=self.config.download)


FAMILIES: tuple[type[ImageFamily], ...] = (MiniImagenet, TieredImagenet, CifarFs, Fc100, Cub)


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    for family in FAMILIES:
        register(family)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
