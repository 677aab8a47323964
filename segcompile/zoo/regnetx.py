"""RegNetX feature extractors (pycls "X" design space) for segmentation, in plain torch.

Stem: 3x3 stride-2 conv to 32 channels. Four stages of X blocks (1x1, grouped 3x3, 1x1; bottleneck
ratio 1; no squeeze-excitation), each stage starting with stride 2. The depths, widths and group
widths are pycls' published RegNetX models, the ones TI's edgeai-torchvision uses. Note pycls' 400MF
last stage is 384 wide (torchvision's re-derivation gives 400); the seed table's GigaMACs were measured
on TI's models, which use pycls' 384.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segcompile.zoo.blocks import conv_bn_act

STEM_CHANNELS = 32


@dataclass(frozen=True)
class RegNetXConfig:
    """Published shape of one RegNetX model plus the decoder width TI pairs with it."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int
    # TI's FPNLite decoder width for this encoder: 256 rounded to a multiple of the group width.
    decoder_channels: int


REGNETX_CONFIGS: dict[str, RegNetXConfig] = {
    "regnetx400mf": RegNetXConfig((1, 2, 7, 12), (32, 64, 160, 384), 16, 256),
    "regnetx800mf": RegNetXConfig((1, 3, 7, 5), (64, 128, 288, 672), 16, 256),
    "regnetx1.6gf": RegNetXConfig((2, 4, 10, 2), (72, 168, 408, 912), 24, 264),
    "regnetx3.2gf": RegNetXConfig((2, 6, 15, 2), (96, 192, 432, 1008), 48, 288),
}


class XBlock(nn.Module):
    """RegNetX residual block: 1x1 -> grouped 3x3 (stride) -> 1x1, projection shortcut when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, dilation: int = 1):
        super().__init__()
        groups = out_channels // group_width
        self.f = nn.Sequential(
            conv_bn_act(in_channels, out_channels, 1),
            conv_bn_act(out_channels, out_channels, 3, stride=stride, dilation=dilation, groups=groups),
            conv_bn_act(out_channels, out_channels, 1, activation=None),
        )
        self.proj = (
            conv_bn_act(in_channels, out_channels, 1, stride=stride, activation=None)
            if stride != 1 or in_channels != out_channels
            else None
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj(x) if self.proj is not None else x
        return self.relu(self.f(x) + shortcut)


class RegNetXBackbone(nn.Module):
    """RegNetX returning the features at strides 2 (stem), 4, 8, 16 and 32.

    ``group_size`` is the encoder's group width: the "Lite" heads use grouped convs of that size.
    ``output_stride=16`` replaces the last stage's stride by dilation 2.
    """

    activation = nn.ReLU

    def __init__(self, config: RegNetXConfig, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"RegNetX output_stride must be 16 or 32, got {output_stride}")
        self.config = config
        self.group_size = config.group_width
        self.decoder_channels = config.decoder_channels
        self.stem = conv_bn_act(3, STEM_CHANNELS, 3, stride=2)
        channels, stride_so_far, dilation = STEM_CHANNELS, 2, 1
        stages: list[nn.Module] = []
        strides = [2]
        for depth, width in zip(config.depths, config.widths, strict=True):
            stride = 2
            if stride_so_far * 2 > output_stride:
                dilation, stride = dilation * 2, 1
            stride_so_far *= stride
            blocks = []
            for i in range(depth):
                blocks.append(XBlock(channels, width, stride if i == 0 else 1, config.group_width, dilation))
                channels = width
            stages.append(nn.Sequential(*blocks))
            strides.append(stride_so_far)
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = (STEM_CHANNELS, *config.widths)
        self.out_strides: tuple[int, ...] = tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = [x]
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
