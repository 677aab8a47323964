"""Assemble a segmentation network from a backbone name and a head name.

The zoo registry (``registry.py``) names concrete models; this module knows which backbones and heads
exist and how a head is sized from its backbone (decoder width, group size, activation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from segcompile.errors import SegcompileError
from segcompile.zoo.blocks import make_divisible
from segcompile.zoo.deeplabv3lite import DeepLabV3LiteHead
from segcompile.zoo.fpnlite import FPNLiteHead
from segcompile.zoo.mobilenetv2 import MobileNetV2Backbone
from segcompile.zoo.regnetx import REGNETX_CONFIGS, RegNetXBackbone
from segcompile.zoo.unetlite import UNetLiteHead


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone the zoo can build: family, output stride and default width multiplier."""

    name: str
    family: str  # "mobilenetv2" or "regnetx"
    output_stride: int
    default_width: float = 1.0


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenetv2": BackboneSpec("mobilenetv2", "mobilenetv2", 32),
    "mobilenetv2s16": BackboneSpec("mobilenetv2s16", "mobilenetv2", 16),
    "mobilenetv2w1.4": BackboneSpec("mobilenetv2w1.4", "mobilenetv2", 32, 1.4),
    **{name: BackboneSpec(name, "regnetx", 32) for name in REGNETX_CONFIGS},
}

HEADS: dict[str, type[nn.Module]] = {
    "deeplabv3lite": DeepLabV3LiteHead,
    "fpnlite": FPNLiteHead,
    "unetlite": UNetLiteHead,
}

# DeepLabV3+ projects the stride-4 shortcut to 48 channels for a 256-wide decoder; TI scales it with width.
_DEEPLAB_SHORTCUT_PER_256 = 48


class SegmentationNet(nn.Module):
    """Backbone + head; ``forward(images N x 3 x H x W) -> logits N x num_classes x H x W``.

    H and W must be multiples of 32 (the deepest backbone stride).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, num_classes: int, backbone_name: str, head_name: str
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.backbone_name = backbone_name
        self.head_name = head_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return self.head(self.backbone(x), (height, width))


def _make_backbone(spec: BackboneSpec, width_mult: float) -> nn.Module:
    if spec.family == "mobilenetv2":
        return MobileNetV2Backbone(width_mult=width_mult, output_stride=spec.output_stride)
    if width_mult != 1.0:
        raise SegcompileError(
            f"backbone {spec.name}: width_mult {width_mult} is not supported (RegNetX is 1.0 only)"
        )
    return RegNetXBackbone(REGNETX_CONFIGS[spec.name], output_stride=spec.output_stride)


def _make_head(head: str, backbone: nn.Module, num_classes: int) -> nn.Module:
    kwargs: dict[str, object] = {
        "decoder_channels": backbone.decoder_channels,
        "group_size": backbone.group_size,
        "activation": backbone.activation,
    }
    if head == "deeplabv3lite":
        kwargs["shortcut_channels"] = make_divisible(
            _DEEPLAB_SHORTCUT_PER_256 * backbone.decoder_channels / 256
        )
    head_class: Callable[..., nn.Module] = HEADS[head]
    return head_class(backbone.out_channels, num_classes, **kwargs)


def initialize_weights(model: nn.Module, seed: int = 0) -> None:
    """Deterministic init from ``seed`` without touching torch's global RNG.

    Kaiming-normal (fan-out) convs and zero biases, unit BN, as TI's Pixel2PixelNet does.
    Parameters on the meta device (used for fast MAC counting) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and not module.weight.is_meta:
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d) and not module.weight.is_meta:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_network(
    backbone: str,
    head: str,
    num_classes: int,
    *,
    width_mult: float | None = None,
    seed: int = 0,
) -> SegmentationNet:
    """Build ``backbone`` + ``head`` for ``num_classes`` classes, initialised from ``seed``, in eval mode.

    ``width_mult`` defaults to the backbone's own (1.4 for ``mobilenetv2w1.4``, else 1.0); the
    MobileNetV2 heads scale their decoder widths with it.
    """
    if backbone not in BACKBONES:
        raise SegcompileError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if head not in HEADS:
        raise SegcompileError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    if num_classes < 1:
        raise SegcompileError(f"num_classes must be at least 1, got {num_classes}")
    spec = BACKBONES[backbone]
    # torch's layer constructors draw their default init from the global RNG; fork it so that building
    # a model never shifts the random stream of the caller (e.g. a seeded training loop).
    with torch.random.fork_rng(devices=[]):
        features = _make_backbone(spec, spec.default_width if width_mult is None else width_mult)
        model = SegmentationNet(
            features, _make_head(head, features, num_classes), num_classes, backbone, head
        )
    initialize_weights(model, seed)
    return model.eval()
