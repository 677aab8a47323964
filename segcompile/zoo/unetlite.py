"""UNetLite head (ASPP + U-Net decoder with separable convs), after TI's edgeai-torchvision.

ASPPLite on the stride-32 feature, then for strides 16, 8, 4 and 2: x2 bilinear up, concat the
encoder feature of that stride, one separable 3x3 to max(feature channels, minimum) channels, where
the minimum is max(2 * classes, 32) as in TI's decoder. Prediction at stride 2, bilinear to input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segcompile.zoo.blocks import Activation, ASPPLite, prediction_conv, resize_to, separable_conv

# Backbone feature indices (strides 16, 8, 4, 2) the decoder concatenates, deepest first.
_SKIP_LEVELS = (3, 2, 1, 0)


class UNetLiteHead(nn.Module):
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
        minimum = max(2 * num_classes, 32)
        current = decoder_channels
        blocks = []
        for level in _SKIP_LEVELS:
            out = max(minimum, in_channels[level])
            blocks.append(
                separable_conv(
                    current + in_channels[level], out, group_size=group_size, activation=activation
                )
            )
            current = out
        self.blocks = nn.ModuleList(blocks)
        self.pred = prediction_conv(current, num_classes, group_size=group_size)

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        x = self.aspp(features[-1])
        for level, block in zip(_SKIP_LEVELS, self.blocks, strict=True):
            skip = features[level]
            x = block(torch.cat((resize_to(x, skip), skip), dim=1))
        return resize_to(self.pred(x), image_size)
