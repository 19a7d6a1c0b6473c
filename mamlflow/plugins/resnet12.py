"""ResNet-12, the backbone of modern few-shot papers (TADAM, Oreshkin et al. 2018; MetaOptNet,
Lee et al. 2019), made safe for MAML's second-order batched meta-step.

Four residual blocks of widths (64, 160, 320, 640), each three [3×3 conv, norm, LeakyReLU(0.1)]
(the last without its activation), added to a [1×1 conv, norm] shortcut, then LeakyReLU(0.1)
and a 2×2 max-pool; the head is a linear layer on the global average of the last feature map.
On 84×84 MiniImagenet images the maps go 84 → 42 → 21 → 10 → 5, on 32×32 CIFAR-FS/FC100 images
32 → 16 → 8 → 4 → 2.

Three differences from MetaOptNet's code (kjunelee/MetaOptNet: models/ResNet12_embedding.py):

* Normalisation uses ``mamlflow.nn``, never ``nn.BatchNorm2d``: with torch 2.13 ``vmap`` of a
  second-order step through torch's affine batch norm returns wrong meta-gradients (functorch
  #534), and running statistics cannot be updated inside ``torch.func``. ``norm="batch"``
  normalises with the current batch's statistics, in training and at test time alike
  (transductive, as ``conv4`` and the MAML paper); ``"group"`` and ``"layer"`` normalise each
  example on its own.
* No DropBlock. It is random, which ``vmap`` refuses inside the batched kernels, and a random
  mask in MAML's inner loop would adapt every task to a different network than the query loss
  is taken through; the papers use it to regularise long supervised or metric pre-training,
  which MAML's meta-step is not.
* A linear head (MetaOptNet's embedding feeds an SVM solver instead), as MAML adapts one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from mamlflow.core import ConfigError, ModelConfig, ModelIO, ModelPlugin, hookimpl
from mamlflow.core import nn as safe_nn

__all__ = ["ResNet12", "ResNet12Config"]

_SLOPE = 0.1  # LeakyReLU's negative slope, as TADAM and MetaOptNet


class ResNet12Config(ModelConfig):
    channels: tuple[int, ...] = Field(
        (64, 160, 320, 640),
        min_length=1,
        description="output channels of each residual block, one 2×2 max-pool each (ResNet-12: "
        "four blocks, MetaOptNet's 64, 160, 320, 640)",
    )
    norm: Literal["batch", "group", "layer", "none"] = Field(
        "batch",
        description="batch: per-channel normalisation with the current batch's statistics, "
        "also at test time (transductive, as MAML's conv4); group: GroupNorm of `groups` groups "
        "per example; layer: each example over all its channels and positions (GroupNorm with "
        "one group); none: convs with biases and no normalisation",
    )
    groups: int = Field(
        32, ge=1, description="groups of norm=group; must divide every entry of channels"
    )
    eps: float = Field(1e-5, gt=0, description="added to the variance (torch's default)")
    init: Literal["paper", "torch"] = Field(
        "paper",
        description="paper: convs Kaiming-normal (fan_out, as MetaOptNet), zero conv biases, "
        "norm scale 1 and shift 0, Glorot-uniform head with a zero bias; torch: PyTorch's default",
    )

    @model_validator(mode="after")
    def _positive_divisible_channels(self) -> ResNet12Config:
        if any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {list(self.channels)}")
        if self.norm == "group" and any(c % self.groups for c in self.channels):
            raise ValueError(
                f"norm=group with {self.groups} groups needs channels divisible by "
                f"{self.groups}, got {list(self.channels)}: change groups or channels"
            )
        return self


def _norm(channels: int, config: ResNet12Config) -> nn.Module | None:
    """The block's normalisation layer: one of ``mamlflow.nn``'s vmap-safe ones, or None."""
    if config.norm == "batch":
        return safe_nn.BatchNorm(channels, eps=config.eps)
    if config.norm == "group":
        return safe_nn.GroupNorm(config.groups, channels, eps=config.eps)
    if config.norm == "layer":
        return safe_nn.GroupNorm(1, channels, eps=config.eps)
    return None


class _ConvNorm(nn.Module):
    """A conv ("SAME" padding, stride 1) followed by the configured norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, config: ResNet12Config
    ) -> None:
        super().__init__()
        norm = _norm(out_channels, config)
        # A bias before a norm that subtracts the mean is cancelled: only without norm has one.
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, padding=kernel // 2, bias=norm is None
        )
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.norm is None else self.norm(x)


class _Block(nn.Module):
    """Three 3×3 conv-norms (LeakyReLU between) plus a 1×1 conv-norm shortcut, then a max-pool."""

    def __init__(self, in_channels: int, out_channels: int, config: ResNet12Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _ConvNorm(in_channels if i == 0 else out_channels, out_channels, 3, config)
            for i in range(3)
        )
        self.shortcut = _ConvNorm(in_channels, out_channels, 1, config)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, _SLOPE)
        x = F.leaky_relu(x + residual, _SLOPE)
        return F.max_pool2d(x, 2)  # floor: 21 → 10


class _ResNet12Net(nn.Module):
    def __init__(self, in_channels: int, output_dim: int, config: ResNet12Config) -> None:
        super().__init__()
        self.in_channels = in_channels
        widths = (in_channels, *config.channels)
        self.blocks = nn.Sequential(
            *(_Block(widths[i], widths[i + 1], config) for i in range(len(config.channels)))
        )
        self.head = nn.Linear(config.channels[-1], output_dim)

    def forward(self, x: Tensor) -> Tensor:
        # Shapes are static, so this check costs nothing in a compiled step.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"resnet12 expects inputs of shape (N, {self.in_channels}, H, W); "
                f"got {tuple(x.shape)}"
            )
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))  # global average pool


class ResNet12(ModelPlugin):
    """ResNet-12 for image tasks of shape (C, H, W); any size that survives its max-pools.

    The head reads the global average of the last feature map, so one network accepts every
    image size of at least 2**len(channels) pixels a side.
    """

    name: ClassVar[str] = "resnet12"
    Config: ClassVar[type[ModelConfig]] = ResNet12Config
    description: ClassVar[str] = "ResNet-12 (TADAM, MetaOptNet) with vmap-safe normalisation"
    config: ResNet12Config

    def build(self, io: ModelIO) -> nn.Module:
        if len(io.input_shape) != 3:
            raise ConfigError(
                [
                    f"model: resnet12 needs image inputs (channels, height, width); the task "
                    f"family gives {io.input_shape}: pick an image task or another model"
                ]
            )
        channels, height, width = io.input_shape
        blocks = len(self.config.channels)
        if min(height, width) < 2**blocks:
            raise ConfigError(
                [
                    f"model.channels: {blocks} blocks halve {height}×{width} images {blocks} "
                    f"times, leaving nothing: use images of at least {2**blocks}×{2**blocks} "
                    "or fewer blocks"
                ]
            )
        net = _ResNet12Net(channels, io.output_dim, self.config)
        if self.config.init == "paper":
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    # MetaOptNet: kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu"),
                    # whose default slope 0 makes the gain √2, as for a ReLU.
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            nn.init.xavier_uniform_(net.head.weight)
            nn.init.zeros_(net.head.bias)
        return net


@hookimpl
def register_models(register: Callable[[type[ModelPlugin]], None]) -> None:
    register(ResNet12)
