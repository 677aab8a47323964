"""The bundled demo network re-expressed the way other exporters write models (not a test module itself).

Users arrive with ONNX files from PaddlePaddle, tf2onnx or older PyTorch: opset 11, dynamic axes,
explicit padding, learned upsampling, squeeze-excite gates, unfused batch norm, channels-last BGR
inputs with normalisation inside the graph, one-channel probability outputs. These wrappers keep
the trained demo weights and add exactly those constructs in ways that (nearly) preserve what the
network computes, so an end-to-end build of the exported file still has a meaningful mIoU on the
demo frames. Each is exported with the legacy TorchScript exporter at opset 11 with dynamic batch,
height and width, as PyTorch 1.x users did.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segcompile.export.source import apply_checkpoint, load_checkpoint
from segcompile.modelinfo import IMAGENET_MEAN, IMAGENET_STD
from segcompile.zoo.registry import build_model, bundled_weights, get_entry

DEMO_MODEL = "demo_mobilenetv2s16_deeplabv3lite_160x128"
DUCK = 2  # class id of "duck" in the demo classes


def trained_demo_network() -> nn.Module:
    """The demo zoo network with its bundled trained weights, in eval mode."""
    entry = get_entry(DEMO_MODEL)
    model = build_model(entry)
    apply_checkpoint(model, load_checkpoint(bundled_weights(entry)), entry.name)
    return model.eval()


def bilinear_transpose_kernel(channels: int, factor: int) -> torch.Tensor:
    """FCN's bilinear initialisation of a ConvTranspose (kernel 2*factor, stride factor, padding factor/2)."""
    size = 2 * factor
    center = factor - 0.5
    og = np.arange(size, dtype=np.float64)
    taps = 1 - np.abs(og - center) / factor
    kernel = np.outer(taps, taps).astype(np.float32)
    weight = np.zeros((channels, channels, size, size), np.float32)
    for channel in range(channels):
        weight[channel, channel] = kernel
    return torch.from_numpy(weight)


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE block (GAP -> 1x1 -> HardSwish -> 1x1 -> HardSigmoid gate -> Mul).

    Small weights and a bias of 3.5 saturate the HardSigmoid at exactly 1, so the gate passes the
    features unchanged: the constructs are real, the trained function is kept.
    """

    def __init__(self, channels: int, reduced: int, gate: str = "hardsigmoid"):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        with torch.no_grad():
            self.reduce.weight.copy_(torch.randn(self.reduce.weight.shape, generator=generator) * 0.01)
            self.expand.weight.copy_(torch.randn(self.expand.weight.shape, generator=generator) * 0.01)
            self.reduce.bias.zero_()
            self.expand.bias.fill_(3.5 if gate == "hardsigmoid" else 8.0)
        self.activation = nn.Hardswish()
        self.gate = nn.Hardsigmoid() if gate == "hardsigmoid" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.activation(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * scale


class ForeignHeadNet(nn.Module):
    """Demo network with tf2onnx/Paddle-style constructs in its stem and head (NCHW, RGB, ImageNet norm).

    - stem: explicit reflection Pad + unpadded conv (TensorFlow SAME padding as exported; a reflect
      pad is not folded into the conv by onnxsim);
    - ASPP output: squeeze-excite gate (HardSwish, HardSigmoid, Mul);
    - ASPP -> stride 4: nearest-neighbour Resize (opset 11: asymmetric, floor);
    - after the concat: an unfused BatchNormalization (nothing before it to fold into);
    - logits stride 4 -> 1: learned upsampling, a ConvTranspose with FCN's bilinear initialisation.
    """

    def __init__(self) -> None:
        super().__init__()
        net = trained_demo_network()
        self.backbone, head = net.backbone, net.head
        self.aspp, self.shortcut, self.pred = head.aspp, head.shortcut, head.pred
        aspp_channels = self.aspp.project[0].out_channels
        concat_channels = aspp_channels + self.shortcut[0].out_channels
        self.se = SqueezeExcite(aspp_channels, 16)
        self.norm = nn.BatchNorm2d(concat_channels).eval()
        classes = net.num_classes
        self.upsample = nn.ConvTranspose2d(classes, classes, 8, stride=4, padding=2, bias=False)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_transpose_kernel(classes, 4))
        _explicit_reflect_padding(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        shortcut = self.shortcut(features[1])
        context = self.se(self.aspp(features[-1]))
        context = F.interpolate(context, scale_factor=4.0, mode="nearest")
        logits = self.pred(self.norm(torch.cat((context, shortcut), dim=1)))
        return self.upsample(logits)


def _explicit_reflect_padding(backbone: nn.Module) -> None:
    """Replace the first 3x3 conv's implicit zero padding by an explicit ReflectionPad2d."""
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.padding == (1, 1):
                child.padding = (0, 0)
                setattr(parent, name, nn.Sequential(nn.ReflectionPad2d(1), child))
                return
    raise AssertionError("no padded 3x3 conv found in the backbone")


class ChannelsLastBgrNet(nn.Module):
    """tf2onnx style: NHWC input of BGR pixels / 255, normalisation inside the graph, NHWC logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = trained_demo_network()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        rgb = bgr.permute(0, 3, 1, 2).flip(1) * 255.0
        logits = self.net((rgb - self.mean) / self.std)
        return logits.permute(0, 2, 3, 1)


class DuckProbabilityNet(nn.Module):
    """A binary segmenter: P(duck) = sigmoid(duck logit - best other logit), one output channel."""

    def __init__(self) -> None:
        super().__init__()
        self.net = trained_demo_network()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        others = torch.cat((logits[:, :DUCK], logits[:, DUCK + 1:]), dim=1)
        margin = logits[:, DUCK:DUCK + 1] - others.amax(dim=1, keepdim=True)
        return torch.sigmoid(margin)


def export_opset11_dynamic(module: nn.Module, path: Path, *, channels_last: bool = False,
                           size: tuple[int, int] = (160, 128)) -> Path:
    """Export ``module`` like PyTorch 1.x users did: legacy exporter, opset 11, dynamic N/H/W."""
    width, height = size
    example = torch.zeros((1, height, width, 3) if channels_last else (1, 3, height, width))
    axes = {0: "batch", 1: "height", 2: "width"} if channels_last else {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), buffer, dynamo=False, opset_version=11,
            input_names=["image"], output_names=["scores"],
            dynamic_axes={"image": axes, "scores": {0: "batch"}},
        )
    path.write_bytes(buffer.getvalue())
    return path
