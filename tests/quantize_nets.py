"""Small segmentation-shaped networks and inputs for the quantize tests (no weights or data downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from segcompile.modelinfo import ModelInfo, attach_model_info

INPUT_SHAPE = (1, 3, 32, 48)


class TinySegNet(nn.Module):
    """MobileNet/DeepLab-lite in miniature: conv-bn-relu6, depthwise-separable, residual add with pad,
    two-branch ASPP-like concat, bilinear upsample, skip concat, 1x1 classifier."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.branch1 = nn.Conv2d(16, 8, 1)
        self.branch2 = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 2, dilation=2), nn.ReLU())
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        y = self.pw(self.dw(a)) + F.pad(a, (0, 0, 0, 0, 0, 8))
        z = self.down(y)
        z = torch.cat([self.branch1(z), self.branch2(z)], 1)
        z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(torch.cat([z, y], 1))


def tiny_model(seed: int = 0, num_classes: int = 4) -> TinySegNet:
    """A TinySegNet with seeded weights and non-trivial BatchNorm statistics (as after training)."""
    torch.manual_seed(seed)
    model = TinySegNet(num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)
    return model.eval()


def export_onnx(model: nn.Module, path: Path, shape=INPUT_SHAPE, info: ModelInfo | None = None) -> Path:
    """torch -> ONNX (dynamo, one file) -> onnxsim, with segcompile metadata, as the export stage does."""
    import onnxsim

    raw = path.with_suffix(".raw.onnx")
    torch.onnx.export(
        model,
        (torch.zeros(shape),),
        str(raw),
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    simplified, ok = onnxsim.simplify(onnx.load(str(raw)))
    assert ok
    attach_model_info(
        simplified, info or ModelInfo(name="tiny", num_classes=4, input_size=(shape[3], shape[2]))
    )
    onnx.save(simplified, str(path))
    raw.unlink()
    return path


_EXPORTED: dict[tuple, Path] = {}


def tiny_onnx(tmp_path_factory, shape=INPUT_SHAPE) -> Path:
    """The tiny net exported once per test session (modules share it; tests must not modify the file)."""
    key = tuple(shape)
    if key not in _EXPORTED or not _EXPORTED[key].is_file():
        _EXPORTED[key] = export_onnx(tiny_model(), tmp_path_factory.mktemp("tiny_onnx") / "float.onnx", shape)
    return _EXPORTED[key]


_QAT_EXPORTED: dict[str, tuple[nn.Module, Path]] = {}


def tiny_qat_onnx(tmp_path_factory, scheme_name: str) -> tuple[nn.Module, Path]:
    """The tiny net prepared for QAT under a preset, ranges observed on 4 frames, exported once a session."""
    from segcompile.quantize import get_scheme
    from segcompile.quantize.qat import export_qat_onnx, observe_qat, prepare_qat

    if scheme_name not in _QAT_EXPORTED:
        model = prepare_qat(tiny_model(), get_scheme(scheme_name), INPUT_SHAPE)
        observe_qat(model, [torch.from_numpy(f) for f in smooth_frames(4, seed=10)])
        info = ModelInfo(name="tiny", num_classes=4, input_size=(INPUT_SHAPE[3], INPUT_SHAPE[2]))
        path = tmp_path_factory.mktemp(f"qat_{scheme_name}") / "qat.onnx"
        _QAT_EXPORTED[scheme_name] = (model.eval(), export_qat_onnx(model, path, model_info=info))
    return _QAT_EXPORTED[scheme_name]


def smooth_frames(count: int, shape=INPUT_SHAPE, seed: int = 0) -> list[np.ndarray]:
    """Seeded image-like inputs: smooth colour gradients plus blobs, roughly ImageNet-normalized."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for _ in range(count):
        img = np.empty((1, c, h, w), np.float32)
        for ch in range(c):
            a, b, p = rng.uniform(-1, 1, 3)
            img[0, ch] = a * xx / w + b * yy / h + p
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 10)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img[0] += rng.uniform(-1.5, 1.5, (c, 1, 1)).astype(np.float32) * blob
        frames.append(img.astype(np.float32))
    return frames
