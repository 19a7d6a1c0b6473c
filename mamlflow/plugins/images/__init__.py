"""Image classification task families: the shared base, and the generic ``imagefolder`` family.

Another data set subclasses :class:`ImageFamily` with its own :class:`ImageFamilyConfig` and
implements ``source()``, an :class:`ImageSource` that lists its classes per split and streams its
images; the base caches them once as a uint8 memory map and samples N-way K-shot episodes with
the numba kernel of ``mamlflow.kernels``. ``imagefolder`` reads the layouts users already have:
``root/<class>/<image>``, ``root/train|val|test/<class>/<image>``, or class lists per split in
CSV (``filename,label``) or TXT files.
"""

from __future__ import annotations

from collections.abc import Callable

from mamlflow.core import Preset, TaskFamily, hookimpl

from ._family import ImageFamily as ImageFamily
from ._family import ImageFamilyConfig as ImageFamilyConfig
from ._folder import PRESETS
from ._folder import ImageFolder as ImageFolder
from ._folder import ImageFolderConfig as ImageFolderConfig
from ._folder import ImageFolderSource as ImageFolderSource
from ._source import SPLIT_NAMES as SPLIT_NAMES
from ._source import ClassIndex as ClassIndex
from ._source import ImageData as ImageData
from ._source import ImageSource as ImageSource

__all__ = [
    "SPLIT_NAMES",
    "ClassIndex",
    "ImageData",
    "ImageFamily",
    "ImageFamilyConfig",
    "ImageFolder",
    "ImageFolderConfig",
    "ImageFolderSource",
    "ImageSource",
]


@hookimpl
def register_task_families(register: Callable[[type[TaskFamily]], None]) -> None:
    register(ImageFolder)


@hookimpl
def register_presets(register: Callable[[Preset], None]) -> None:
    for preset in PRESETS:
        register(preset)
