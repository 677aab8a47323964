"""MobileNetV2 feature extractor (torchvision layout) for segmentation, in plain torch.

As in TI's edgeai-torchvision segmentation models, the network ends at the 320-channel stage:
there is no final 1x1 conv to 1280 channels and no classifier. ``output_stride=16`` gives the
"S16" variant: the last strided stage keeps stride 1 and its 3x3 convs use dilation 2 instead.
"""

from __future__ import annotations

import torch
from torch import nn

from segcompile.zoo.blocks import conv_bn_act, make_divisible

# (expansion t, channels c, repeats n, stride s) of torchvision's MobileNetV2, without the 1280 conv.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Index (into INVERTED_RESIDUAL_SETTING) of the stage whose output is the feature at stride 2, 4, 8, 16, 32.
_TAP_STAGES = (0, 1, 2, 4, 6)
STEM_CHANNELS = 32
# Decoder widths of TI's MobileNetV2 "Lite" heads at width 1.0 (scaled with the width multiplier).
DECODER_CHANNELS = 256


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 project, residual add."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, dilation: int = 1
    ):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_channels, hidden, 1, activation=nn.ReLU6))
        layers.append(
            conv_bn_act(
                hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, activation=nn.ReLU6
            )
        )
        layers.append(conv_bn_act(hidden, out_channels, 1, activation=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 returning the features at strides 2, 4, 8, 16 and 32 (16 for the S16 variant).

    Attributes used by the heads: ``out_channels`` (channels of the five features), ``out_strides``,
    ``group_size`` (1: the heads use depthwise convs), ``activation`` and ``decoder_channels``.
    """

    group_size = 1
    activation = nn.ReLU6

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"MobileNetV2 output_stride must be 16 or 32, got {output_stride}")
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2 width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        self.output_stride = output_stride

        channels = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = conv_bn_act(3, channels, 3, stride=2, activation=nn.ReLU6)
        stride_so_far, dilation = 2, 1
        stages: list[nn.Module] = []
        stage_channels: list[int] = []
        stage_strides: list[int] = []
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(c * width_mult)
            stride = s
            if stride_so_far * s > output_stride:
                # S16: keep the resolution and widen the receptive field with dilation instead.
                dilation *= s
                stride = 1
            stride_so_far *= stride
            blocks = []
            for i in range(n):
                blocks.append(
                    InvertedResidual(channels, out_channels, stride if i == 0 else 1, t, dilation=dilation)
                )
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
            stage_channels.append(out_channels)
            stage_strides.append(stride_so_far)
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(stage_channels[i] for i in _TAP_STAGES)
        self.out_strides: tuple[int, ...] = tuple(stage_strides[i] for i in _TAP_STAGES)
        self.decoder_channels = make_divisible(DECODER_CHANNELS * width_mult)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return [outs[i] for i in _TAP_STAGES]
