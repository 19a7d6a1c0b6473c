"""Normalisation layers that stay correct under ``vmap`` of a second-order meta-step.

With torch 2.13, ``vmap`` over a second-order step through torch's own ``nn.LayerNorm``,
``nn.BatchNorm1d/2d/3d`` and ``nn.InstanceNorm1d/2d/3d`` with an affine weight (and their
functional forms ``F.layer_norm``, ``F.batch_norm``, ``F.instance_norm`` given a weight) returns
wrong meta-gradients, silently: off by 1e-4 of the largest entry or more (5.5e-4 for the sinusoid
MLP with a layer norm; upstream functorch #534; the table in docs/kernels.md is checked by
tests/kernels/test_vmap_safety.py). First-order steps, the per-task loop and ``torch.func``
without ``vmap`` are right; so are the layers without a weight. The batched kernels are what
make meta-learning fast, so models should not use them.

The layers here compute the same functions from plain tensor ops (mean, biased variance, rsqrt),
whose batching rules differentiate twice correctly. They take the common arguments of torch's
modules and name their parameters ``weight`` and ``bias`` as torch does, so a state dict moves
between the two. Their reference twins are torch's modules, which they match in float64.

``vmap_unsafe_layers(module)`` lists the torch layers of a model that the batched kernels get
wrong (or fail on), each with its replacement; ``kernel.strategy`` names them when it refuses one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "BatchNorm",
    "BatchStatistics",
    "GroupNorm",
    "LayerNorm",
    "batch_statistics_layers",
    "statistics_from_first",
    "vmap_unsafe_layers",
]


def _normalise(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dims``, with the biased variance, as torch's."""
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


class BatchStatistics(nn.Module):
    """A layer that normalises by statistics over its batch (MAML's batch norm).

    ``rows`` None (always, in training): the statistics are the whole batch's, so a query set
    is normalised by its own statistics (transductive, as in the paper). ``rows`` = n, set by
    ``statistics_from_first``: by the first n examples' statistics only, so that with the support
    set first and queries after it, each query is normalised without seeing the others, as a
    deployed model predicting one example must.
    """

    rows: int | None = None

    def normalise(self, x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
        """``x`` normalised over ``dims`` (which include 0) by the statistics ``rows`` says."""
        reference = x if self.rows is None else x[: self.rows]
        mean = reference.mean(dim=dims, keepdim=True)
        var = reference.var(dim=dims, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + eps)


def batch_statistics_layers(module: nn.Module) -> list[BatchStatistics]:
    """The layers of ``module`` whose output depends on the other examples of the batch."""
    return [m for m in module.modules() if isinstance(m, BatchStatistics)]


@contextmanager
def statistics_from_first(module: nn.Module, rows: int) -> Iterator[None]:
    """Within, every ``BatchStatistics`` layer of ``module`` uses the first ``rows`` examples'
    statistics: call the module on ``cat([support, queries])`` and each query's output is what it
    would be alone. Sets a Python attribute: not for use inside ``torch.compile``d code."""
    layers = batch_statistics_layers(module)
    saved = [layer.rows for layer in layers]
    for layer in layers:
        layer.rows = rows
    try:
        yield
    finally:
        for layer, before in zip(layers, saved, strict=True):
            layer.rows = before


def _affine_parameters(
    module: nn.Module,
    shape: tuple[int, ...],
    weight: bool,
    bias: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> None:
    """``module.weight`` (ones) and ``module.bias`` (zeros) of ``shape``, or None for each."""
    options = {"device": device, "dtype": dtype}
    module.register_parameter(
        "weight", nn.Parameter(torch.ones(shape, **options)) if weight else None
    )
    module.register_parameter("bias", nn.Parameter(torch.zeros(shape, **options)) if bias else None)


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` from plain tensor ops: normalises over the trailing ``normalized_shape``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and biased variance of each
    sample over its last ``len(normalized_shape)`` dimensions; ``weight`` (ones) and ``bias``
    (zeros) have ``normalized_shape``. Arguments as ``nn.LayerNorm``'s.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(int(d) for d in shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        has_bias = elementwise_affine and bias
        _affine_parameters(self, self.normalized_shape, elementwise_affine, has_bias, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - n :]) != self.normalized_shape:
            raise ValueError(
                f"LayerNorm{self.normalized_shape} got an input of shape {tuple(x.shape)}: its "
                "trailing dimensions must be normalized_shape"
            )
        y = _normalise(x, tuple(range(-n, 0)), self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )


def _per_channel(p: Tensor, dims: int) -> Tensor:
    """A ``(C,)`` parameter shaped to broadcast over ``(N, C, *spatial)`` of ``dims`` dims."""
    return p.reshape(p.shape[0], *([1] * (dims - 2)))


class BatchNorm(BatchStatistics):
    """Batch norm with the current batch's statistics only, for ``(N, C)`` and ``(N, C, *)``.

    Each call normalises every channel by the mean and biased variance over the batch and any
    spatial dimensions of the input it is given, in training and in evaluation alike: what MAML
    does (transductive batch norm, as the paper and ``conv4``), and what torch's
    ``nn.BatchNorm1d/2d/3d(track_running_stats=False)``, its reference twins, compute. So there
    are no running statistics: a ``Learner`` holds buffers as constants, and their in-place
    update fails under ``torch.func``. One class serves 1-, 2- and 3-d inputs.

    ``momentum`` is accepted as torch's modules accept it and, as there with no running
    statistics, unused; ``track_running_stats=True`` is refused.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = None,
        affine: bool = True,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if track_running_stats:
            raise ValueError(
                "mamlflow.nn.BatchNorm normalises with each batch's own statistics and keeps no "
                "running ones (a Learner's buffers are constants); pass track_running_stats=False"
            )
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        _affine_parameters(self, (num_features,), affine, affine, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm({self.num_features}) expects (N, {self.num_features}, *) inputs, "
                f"got {tuple(x.shape)}"
            )
        y = self.normalise(x, (0, *range(2, x.dim())), self.eps)
        if self.weight is not None and self.bias is not None:
            y = y * _per_channel(self.weight, x.dim()) + _per_channel(self.bias, x.dim())
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` from plain tensor ops, for ``(N, C, *)`` inputs.

    The ``C`` channels are split into ``num_groups`` groups; each sample is normalised per group
    over its channels and spatial positions, then scaled and shifted per channel. Arguments as
    ``nn.GroupNorm``'s. ``GroupNorm(C, C)`` is instance norm with a per-channel affine, the safe
    stand-in for ``nn.InstanceNorm2d(C, affine=True)``.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"num_channels ({num_channels}) must be a multiple of num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, (num_channels,), affine, affine, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm({self.num_groups}, {self.num_channels}) expects "
                f"(N, {self.num_channels}, *) inputs, got {tuple(x.shape)}"
            )
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        y = _normalise(grouped, (2,), self.eps).reshape(x.shape)
        if self.weight is not None and self.bias is not None:
            y = y * _per_channel(self.weight, x.dim()) + _per_channel(self.bias, x.dim())
        return y

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


_BATCH_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)
_INSTANCE_NORMS = (
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
)


def _replacement(layer: nn.Module) -> str | None:
    """What to use instead of ``layer`` if the batched kernels get it wrong, else None.

    Wrong (measured): a weight, i.e. ``elementwise_affine``/``affine``. Failing with an error
    instead: running statistics (their in-place update under ``torch.func``).
    """
    weight = getattr(layer, "weight", None) is not None
    running = getattr(layer, "running_mean", None) is not None
    if isinstance(layer, nn.LayerNorm) and weight:
        return "mamlflow.nn.LayerNorm"
    if isinstance(layer, _BATCH_NORMS) and (weight or running):
        return "mamlflow.nn.BatchNorm"
    if isinstance(layer, _INSTANCE_NORMS) and (weight or running):
        return "mamlflow.nn.GroupNorm(C, C)"
    return None


def vmap_unsafe_layers(module: nn.Module) -> list[str]:
    """The layers of ``module`` that the batched kernels differentiate wrongly or fail on.

    One entry per layer, ``"<name> (<torch class>: use <replacement>)"``, in module order; empty
    for a model every strategy computes right. A functional call (``F.layer_norm`` with a
    weight, …) is not a layer and is not found here: ``kernel.strategy`` checks every model's
    batched meta-gradient against the loop as well.
    """
    found = []
    for name, layer in module.named_modules():
        use = _replacement(layer)
        if use is not None:
            found.append(f"{name or '(the model)'} ({type(layer).__name__}: use {use})")
    return found
