"""The paper's convolutional network: four [3×3 conv, batch norm, ReLU] blocks and a linear head.

It follows the authors' ``forward_conv`` (cbfinn/maml): on Omniglot each conv has stride 2 and
the head reads the mean over the remaining spatial positions; on MiniImagenet each conv has
stride 1, a 2×2 max-pool follows every block, and the head reads the flattened feature map.

Two differences from that code. Its batch norm (``tf.contrib.layers.batch_norm`` defaults) has a
shift β but no scale γ, and β sits outside the adapted weights, so it is meta-learned but not
adapted; here γ and β are ordinary parameters, adapted and meta-learned like the rest. And
padding 1 pads both sides, where TF's "SAME" at stride 2 pads only bottom/right of an even-sized
input: the same sizes and parameters, with the sampling grid one pixel apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from mamlflow.core import BatchStatistics, ConfigError, ModelConfig, ModelIO, ModelPlugin, hookimpl

__all__ = ["Conv4", "Conv4Config"]

_BLOCKS = 4


class Conv4Config(ModelConfig):
    filters: int = Field(
        64, ge=1, description="channels of every conv (paper: 64 on Omniglot, 32 on MiniImagenet)"
    )
    downsample: Literal["stride", "maxpool"] = Field(
        "stride",
        description="stride: stride-2 convs, head on the spatial mean (the paper's Omniglot net); "
        "maxpool: stride-1 convs + 2×2 max-pool, head on the flattened map (MiniImagenet)",
    )
    norm: Literal["batch", "none"] = Field(
        "batch",
        description="batch: per-channel normalisation with the current batch's statistics, "
        "also at test time (transductive, as in the paper); none: conv + ReLU only",
    )
    eps: float = Field(
        1e-3, gt=0, description="added to the batch variance (TensorFlow's default, as the paper)"
    )
    init: Literal["torch", "paper"] = Field(
        "paper",
        description="paper: Glorot-uniform convs, zero biases, head ~ N(0, 1) with stride "
        "(Glorot-uniform with maxpool), as in the authors' code (cbfinn/maml); "
        "torch: PyTorch's default",
    )


class _BatchStatNorm(BatchStatistics):
    """Batch norm with the current batch's statistics only, written with plain tensor ops.

    Every call normalises each channel by the mean and biased variance over (N, H, W) of the
    batch it is given: support and query sets each use their own statistics, in the inner loop,
    the outer loop and at test time (transductive, as in the paper and the authors' code). So
    there are no running statistics and no buffers: a ``Learner`` would treat them as constants
    and nothing would ever read them. The scale γ and shift β are ordinary parameters, meta-
    learned and adapted like the weights.

    Not ``F.batch_norm``: with torch 2.13, vmap of a second-order step through it with affine
    weight/bias returns wrong meta-gradients (functorch #534).
    """

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        normed = self.normalise(x, (0, 2, 3), self.eps)
        return normed * self.scale[:, None, None] + self.shift[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.scale.shape[0]}, eps={self.eps}"


class _Block(nn.Module):
    """3×3 conv ("SAME" padding), optional batch-stat norm, ReLU, optional 2×2 max-pool."""

    def __init__(self, in_channels: int, config: Conv4Config) -> None:
        super().__init__()
        self.maxpool = config.downsample == "maxpool"
        stride = 1 if self.maxpool else 2
        self.conv = nn.Conv2d(in_channels, config.filters, 3, stride=stride, padding=1)
        self.norm = _BatchStatNorm(config.filters, config.eps) if config.norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        x = F.relu(x)
        if self.maxpool:
            x = F.max_pool2d(x, 2)  # floor, like TF's "VALID" pooling
        return x


class _Conv4Net(nn.Module):
    def __init__(
        self, input_shape: tuple[int, int, int], output_dim: int, config: Conv4Config
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.flatten = config.downsample == "maxpool"
        channels, height, width = input_shape
        self.blocks = nn.Sequential(
            *(_Block(channels if i == 0 else config.filters, config) for i in range(_BLOCKS))
        )
        features = config.filters
        if self.flatten:  # four floor-halvings: 84 → 42 → 21 → 10 → 5
            features *= (height // 2**_BLOCKS) * (width // 2**_BLOCKS)
        self.head = nn.Linear(features, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        # Shapes are static, so this check costs nothing in a compiled step.
        if x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            raise ValueError(
                f"conv4 expects inputs of shape (N, {self.input_shape[0]}, H, W); "
                f"got {tuple(x.shape)}"
            )
        if self.flatten and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"conv4 (downsample=maxpool) was built for {self.input_shape} inputs, its head "
                f"reads the flattened feature map; got {tuple(x.shape[1:])}: rebuild the model "
                "for this size or use downsample=stride, whose head reads the spatial mean"
            )
        x = self.blocks(x)
        x = x.flatten(1) if self.flatten else x.mean(dim=(2, 3))
        return self.head(x)


class Conv4(ModelPlugin):
    """The paper's conv-4 (Omniglot, MiniImagenet) for image tasks of shape (C, H, W).

    With ``downsample="stride"`` the network accepts any image size (the head reads the spatial
    mean); with ``"maxpool"`` only the size it was built for.
    """

    name: ClassVar[str] = "conv4"
    Config: ClassVar[type[ModelConfig]] = Conv4Config
    description: ClassVar[str] = "the paper's 4-block conv net (Omniglot, MiniImagenet)"
    config: Conv4Config

    def build(self, io: ModelIO) -> nn.Module:
        if len(io.input_shape) != 3:
            raise ConfigError(
                [
                    f"model: conv4 needs image inputs (channels, height, width); the task "
                    f"family gives {io.input_shape}: pick an image task or another model"
                ]
            )
        channels, height, width = io.input_shape
        if self.config.downsample == "maxpool" and min(height, width) < 2**_BLOCKS:
            raise ConfigError(
                [
                    f"model.downsample: maxpool halves {height}×{width} images four times, "
                    f"leaving nothing: use images of at least {2**_BLOCKS}×{2**_BLOCKS} "
                    "or downsample=stride"
                ]
            )
        net = _Conv4Net((channels, height, width), io.output_dim, self.config)
        if self.config.init == "paper":
            for block in net.blocks:
                nn.init.xavier_uniform_(block.conv.weight)
                nn.init.zeros_(block.conv.bias)
            if self.config.downsample == "stride":
                # the authors' Omniglot head: tf.random_normal, i.e. N(0, 1)
                nn.init.normal_(net.head.weight)
            else:
                nn.init.xavier_uniform_(net.head.weight)
            nn.init.zeros_(net.head.bias)
        return net


@hookimpl
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    register(Conv4)
