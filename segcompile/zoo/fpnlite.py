"""FPNLite head (ASPP + feature pyramid with separable smoothing convs), after TI's edgeai-torchvision.

ASPPLite on the stride-32 feature, then a top-down path over strides 16, 8 and 4: each level adds a
1x1 lateral (to the decoder width) to the x2-upsampled path and smooths the sum with a separable 3x3
("in-loop": the smoothed map feeds the next level). Prediction at stride 4, bilinear to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segcompile.zoo.blocks import (
    Activation,
    ASPPLite,
    conv_bn_act,
    prediction_conv,
    resize_to,
    separable_conv,
)

# Backbone feature indices (strides 16, 8, 4) that the top-down path merges, deepest first.
_LATERAL_LEVELS = (3, 2, 1)


class FPNLiteHead(nn.Module):
    """Decoder over backbone features at strides (2, 4, 8, 16, 32)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        decoder_channels: int = 256,
        group_size: int = 1,
        activation: Activation = nn.ReLU,
    ) -> None:
        super().__init__()
        self.aspp = ASPPLite(
            in_channels[-1], decoder_channels, decoder_channels, group_size=group_size, activation=activation
        )
        self.laterals = nn.ModuleList(
            conv_bn_act(in_channels[level], decoder_channels, 1, activation=activation)
            for level in _LATERAL_LEVELS
        )
        self.smooth = nn.ModuleList(
            separable_conv(decoder_channels, decoder_channels, group_size=group_size, activation=activation)
            for _ in _LATERAL_LEVELS
        )
        self.pred = prediction_conv(decoder_channels, num_classes, group_size=group_size)

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        x = self.aspp(features[-1])
        for level, lateral, smooth in zip(_LATERAL_LEVELS, self.laterals, self.smooth, strict=True):
            skip = lateral(features[level])
            x = smooth(resize_to(x, skip) + skip)
        return resize_to(self.pred(x), image_size)
