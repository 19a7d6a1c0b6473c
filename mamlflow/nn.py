"""Normalisation layers that stay correct under ``vmap`` of a second-order meta-step.

``LayerNorm``, ``BatchNorm`` (each batch's own statistics, as MAML's) and ``GroupNorm`` compute
what torch's modules of the same names compute, from plain tensor ops; torch's own layer and
batch norm (and instance norm) with a weight get wrong meta-gradients from the batched kernels.
``vmap_unsafe_layers(model)`` lists the layers of a model to replace. Batch-statistics layers
(``BatchStatistics``; ``BatchNorm`` is one) normalise queries by the support set's statistics
inside ``statistics_from_first`` (``eval.transductive=false`` and prediction). See
``mamlflow.core.nn`` and docs/kernels.md.
"""

from __future__ import annotations

from .core import nn as _nn

BatchNorm = _nn.BatchNorm
BatchStatistics = _nn.BatchStatistics
GroupNorm = _nn.GroupNorm
LayerNorm = _nn.LayerNorm
batch_statistics_layers = _nn.batch_statistics_layers
statistics_from_first = _nn.statistics_from_first
vmap_unsafe_layers = _nn.vmap_unsafe_layers

__all__ = [
    "BatchNorm",
    "BatchStatistics",
    "GroupNorm",
    "LayerNorm",
    "batch_statistics_layers",
    "statistics_from_first",
    "vmap_unsafe_layers",
]
