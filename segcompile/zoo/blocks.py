"""Convolution building blocks shared by the zoo's backbones and heads.

Only Conv2d, BatchNorm2d, ReLU/ReLU6, Add, Concat and bilinear resize appear here, so every
network built from these blocks exports to plain ONNX and lowers to int8 kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Activation = type[nn.Module]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` as torchvision's MobileNetV2 does.

    Never rounds down by more than 10%, so width multipliers keep their meaning.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def groups_for(channels: int, group_size: int) -> int:
    """Number of groups for a grouped conv over ``channels`` with ``group_size`` channels per group.

    ``group_size == 1`` is a depthwise conv. When ``channels`` is not a multiple of ``group_size``
    (possible only for head/backbone pairings outside the zoo table) the largest common divisor is used
    as the group size, so the layer stays valid instead of failing to build.
    """
    if channels % group_size == 0:
        return channels // group_size
    return channels // math.gcd(channels, group_size)


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    activation: Activation | None = nn.ReLU,
    norm: bool = True,
    bias: bool = False,
) -> nn.Sequential:
    """Conv2d ("same" padding) followed by optional BatchNorm2d and activation."""
    padding = (kernel_size - 1) // 2 * dilation
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
    ]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def separable_conv(
    in_channels: int,
    out_channels: int,
    *,
    group_size: int = 1,
    dilation: int = 1,
    activation: Activation | None = nn.ReLU,
    dw_activation: bool = True,
    pw_norm: bool = True,
    pw_activation: bool = True,
    pw_bias: bool = False,
) -> nn.Sequential:
    """A 3x3 depthwise (``group_size=1``) or grouped conv + BN (+act), then a 1x1 conv (+BN, +act).

    This is the "Lite" separable block of TI's edgeai-torchvision (ConvDWSepNormAct2d): with a
    RegNetX encoder the 3x3 uses the encoder's group width instead of being depthwise.
    """
    return nn.Sequential(
        conv_bn_act(
            in_channels,
            in_channels,
            3,
            dilation=dilation,
            groups=groups_for(in_channels, group_size),
            activation=activation if dw_activation else None,
        ),
        conv_bn_act(
            in_channels,
            out_channels,
            1,
            activation=activation if pw_activation else None,
            norm=pw_norm,
            bias=pw_bias,
        ),
    )


def prediction_conv(in_channels: int, num_classes: int, *, group_size: int = 1) -> nn.Sequential:
    """The final classifier: separable 3x3 with BN after the spatial conv, a biased 1x1 to logits."""
    return separable_conv(
        in_channels,
        num_classes,
        group_size=group_size,
        activation=None,
        dw_activation=False,
        pw_norm=False,
        pw_activation=False,
        pw_bias=True,
    )


def resize_to(x: torch.Tensor, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of ``x`` to the spatial size of ``like`` (or to (H, W)).

    Explicit sizes rather than scale factors keep the decoder valid at any input size that is a
    multiple of the output stride and export as a single ONNX Resize.
    """
    size = tuple(like.shape[-2:]) if isinstance(like, torch.Tensor) else tuple(like)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPPLite(nn.Module):
    """Atrous spatial pyramid pooling, "Lite": no image-pooling branch, separable dilated branches.

    A 1x1 conv branch plus three depthwise (or grouped) 3x3 branches at ``dilations``, each followed
    by a 1x1 conv to ``aspp_channels``; the four are concatenated and projected to ``out_channels``.
    Matches TI's DWASPPLiteBlock with ``avg_pool=False`` as their segmentation models use it.
    """

    def __init__(
        self,
        in_channels: int,
        aspp_channels: int,
        out_channels: int,
        *,
        dilations: tuple[int, int, int] = (6, 12, 18),
        group_size: int = 1,
        activation: Activation = nn.ReLU,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv1x1 = conv_bn_act(in_channels, aspp_channels, 1, activation=activation)
        self.branches = nn.ModuleList(
            separable_conv(
                in_channels, aspp_channels, group_size=group_size, dilation=d, activation=activation
            )
            for d in dilations
        )
        # Dropout only acts in training (the demo model is trained); it vanishes from eval-mode exports.
        self.dropout = nn.Dropout2d(p=dropout)
        self.project = conv_bn_act(
            aspp_channels * (1 + len(dilations)), out_channels, 1, activation=activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.conv1x1(x)] + [branch(x) for branch in self.branches]
        return self.project(self.dropout(torch.cat(outs, dim=1)))
