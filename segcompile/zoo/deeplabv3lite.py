"""DeepLabV3Lite head (DeepLabV3+ decoder with separable convs), after TI's edgeai-torchvision.

ASPPLite on the deepest feature (stride 16 with the S16 backbone), x4 bilinear up to stride 4,
concat with a 1x1-projected stride-4 shortcut (24 -> 48 channels for MobileNetV2 1.0), one
separable 3x3 to the classes, bilinear to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segcompile.zoo.blocks import Activation, ASPPLite, conv_bn_act, prediction_conv, resize_to


class DeepLabV3LiteHead(nn.Module):
    """Decoder over backbone features at strides (2, 4, 8, 16, 32|16); uses the stride-4 and deepest ones."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        decoder_channels: int = 256,
        shortcut_channels: int = 48,
        group_size: int = 1,
        activation: Activation = nn.ReLU,
    ) -> None:
        super().__init__()
        self.aspp = ASPPLite(
            in_channels[-1], decoder_channels, decoder_channels, group_size=group_size, activation=activation
        )
        self.shortcut = conv_bn_act(in_channels[1], shortcut_channels, 1, activation=activation)
        self.pred = prediction_conv(decoder_channels + shortcut_channels, num_classes, group_size=group_size)

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        shortcut = self.shortcut(features[1])
        x = resize_to(self.aspp(features[-1]), shortcut)
        x = self.pred(torch.cat((x, shortcut), dim=1))
        return resize_to(x, image_size)
