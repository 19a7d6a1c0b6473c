"""Meta-step kernels and data kernels, each with a readable reference twin.

* Meta-steps (``make_meta_step``): batched and compiled ``torch.func`` strategies of the MAML
  step and their per-task reference loop; ``select_meta_step`` picks one by measuring
  (``kernel.strategy=auto``). Reptile's own kernels (``make_reptile_step``), the policy terms
  TRPO and PPO re-evaluate (``make_policy_terms``), and adaptation without a meta-gradient
  (``make_adapt``, ``make_adapt_curve``, ``make_adapt_on_each``).
* Data: the numba N-way K-shot episode sampler (``sample_episodes``) and its NumPy twin
  (``sample_episodes_reference``); the image cache's sampler for classes of any size and
  colour (``sample_image_episodes``, twin ``sample_image_episodes_reference``). numba is
  imported on the first call of a sampler or its probe, never by importing this package.

This module is the package's only entrance from outside it.
"""

from __future__ import annotations

import numpy as np

from ..core import STRATEGIES as STRATEGIES
from ..core import MetaStep as MetaStep
from ..core import MetaStepFactory as MetaStepFactory
from ..core import StepResult as StepResult
from ..core import Strategy as Strategy
from ._episodes_ref import Episodes as Episodes
from ._episodes_ref import sample_episodes_reference as sample_episodes_reference
from ._image_episodes_ref import ImageEpisodes as ImageEpisodes
from ._image_episodes_ref import (
    sample_image_episodes_reference as sample_image_episodes_reference,
)
from ._inner import Adaptation as Adaptation
from ._inner import adaptation as adaptation
from ._maml import AdaptFn as AdaptFn
from ._maml import exact_float32 as exact_float32
from ._maml import make_adapt as make_adapt
from ._maml import make_adapt_curve as make_adapt_curve
from ._maml import make_adapt_on_each as make_adapt_on_each
from ._maml import make_meta_step as make_meta_step
from ._policy import PolicyTermsFn as PolicyTermsFn
from ._policy import make_policy_terms as make_policy_terms
from ._reptile import REPTILE_STRATEGIES as REPTILE_STRATEGIES
from ._reptile import InnerData as InnerData
from ._reptile import make_reptile_step as make_reptile_step
from ._select import AUTO_COMPILE_MIN_SECONDS as AUTO_COMPILE_MIN_SECONDS
from ._select import COMPILED_STRATEGIES as COMPILED_STRATEGIES
from ._select import Selection as Selection
from ._select import clear_selection_cache as clear_selection_cache
from ._select import select_meta_step as select_meta_step

__all__ = [
    "AUTO_COMPILE_MIN_SECONDS",
    "COMPILED_STRATEGIES",
    "REPTILE_STRATEGIES",
    "STRATEGIES",
    "AdaptFn",
    "Adaptation",
    "Episodes",
    "ImageEpisodes",
    "InnerData",
    "MetaStep",
    "MetaStepFactory",
    "PolicyTermsFn",
    "Selection",
    "StepResult",
    "Strategy",
    "adaptation",
    "clear_selection_cache",
    "exact_float32",
    "image_episodes_available",
    "make_adapt",
    "make_adapt_curve",
    "make_adapt_on_each",
    "make_meta_step",
    "make_policy_terms",
    "make_reptile_step",
    "numba_available",
    "sample_episodes",
    "sample_episodes_reference",
    "sample_image_episodes",
    "sample_image_episodes_reference",
    "select_meta_step",
]


def sample_episodes(
    images: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    *,
    random_rotation: bool = False,
    parallel: bool = False,
) -> Episodes:
    """Gather N-way K-shot episodes with the numba kernel, bit-identical to the NumPy twin.

    See ``sample_episodes_reference`` for the arguments; call ``numba_available()`` first.
    ``random_rotation`` draws distinct characters (``pool`` holds upright ids), each at a random
    rotation, instead of distinct classes. ``parallel`` spreads the tasks over numba's threads
    (slower on a small shared CPU).
    """
    from ._episodes import sample_episodes as kernel  # imports numba

    return kernel(
        images,
        pool,
        key,
        task_index,
        ways,
        shots,
        queries,
        random_rotation=random_rotation,
        parallel=parallel,
    )


def numba_available() -> bool:
    """Whether the numba episode kernel runs here and matches its twin (checked once)."""
    from ._episodes import numba_available as probe  # imports numba

    return probe()


def sample_image_episodes(
    images: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    pool: np.ndarray,
    key: int,
    task_index: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    *,
    parallel: bool = False,
) -> ImageEpisodes:
    """Gather N-way K-shot episodes from an ``(N, H, W, C)`` uint8 image cache with the numba
    kernel, bit-identical to ``sample_image_episodes_reference`` (see it for the arguments);
    call ``image_episodes_available()`` first. Outputs are uint8 ``(T, n, C, H, W)``."""
    from ._image_episodes import sample_image_episodes as kernel  # imports numba

    return kernel(
        images, starts, counts, pool, key, task_index, ways, shots, queries, parallel=parallel
    )


def image_episodes_available() -> bool:
    """Whether the numba image episode kernel runs here and matches its twin (checked once)."""
    from ._image_episodes import image_episodes_available as probe  # imports numba

    return probe()
