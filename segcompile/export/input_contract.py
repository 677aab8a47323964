"""What the user says about a model's input and output when the model cannot say it itself.

A zoo entry knows its preprocessing; an ONNX file from another framework does not. ``--mean``,
``--std`` (or ``--scale``), ``--channel-order``, ``--layout``, ``--input-shape`` and ``--threshold``
are collected here into one :class:`InputContract` and applied on top of whatever the model
carries, so every later stage reads them back from the :class:`ModelInfo` stored in
``float.onnx`` (and the manifest records them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo

CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class InputContract:
    """User overrides of a model's preprocessing and output reading (None: keep the model's own)."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str | None = None
    layout: str | None = None
    threshold: float | None = None

    def apply(self, info: ModelInfo) -> ModelInfo:
        """``info`` with every given override in place."""
        changes: dict = {}
        if self.mean is not None:
            changes["mean"] = tuple(self.mean)
        if self.std is not None:
            changes["std"] = tuple(self.std)
        if self.channel_order is not None:
            changes["channel_order"] = self.channel_order
        if self.threshold is not None:
            if info.output_kind != "probability":
                raise SegcompileError(
                    f"--threshold {self.threshold}: model {info.name} outputs {info.num_classes}-class "
                    "logits "
                    "(labels are their argmax); a threshold applies to one-channel probability outputs"
                )
            changes["threshold"] = float(self.threshold)
        return replace(info, **changes) if changes else info

    def to_dict(self) -> dict:
        return {
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "channel_order": self.channel_order,
            "layout": self.layout,
            "threshold": self.threshold,
        }


def parse_channel_values(text: str, option: str) -> tuple[float, float, float]:
    """``123.7,116.3,103.5`` (one value per channel) or ``127.5`` (the same for all three)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise SegcompileError(
            f"{option} {text}: expected one number or three comma-separated numbers"
        ) from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise SegcompileError(f"{option} {text}: expected 1 or 3 values (one per channel), got {len(values)}")
    return (values[0], values[1], values[2])


def std_from_options(std: str | None, scale: str | None) -> tuple[float, float, float] | None:
    """``--std`` divides, ``--scale`` multiplies (``--scale 0.0039`` is ``--std 255``); not both."""
    if std is not None and scale is not None:
        raise SegcompileError("--std and --scale say the same thing (scale = 1/std); give one of them")
    if std is not None:
        values = parse_channel_values(std, "--std")
        if any(value <= 0 for value in values):
            raise SegcompileError(f"--std {std}: every value must be positive")
        return values
    if scale is not None:
        values = parse_channel_values(scale, "--scale")
        if any(value <= 0 for value in values):
            raise SegcompileError(f"--scale {scale}: every value must be positive")
        return (1.0 / values[0], 1.0 / values[1], 1.0 / values[2])
    return None


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``1,3,512,512`` (NCHW) or ``1,512,512,3`` (NHWC): four positive integers."""
    parts = [part.strip() for part in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(part) for part in parts)
    except ValueError:
        raise SegcompileError(f"--input-shape {text}: expected four integers, e.g. 1,3,512,512") from None
    if len(dims) != 4 or any(dim < 1 for dim in dims):
        raise SegcompileError(f"--input-shape {text}: expected four positive integers, e.g. 1,3,512,512")
    if dims[0] != 1:
        raise SegcompileError(f"--input-shape {text}: batch must be 1 (one frame per inference)")
    if 3 not in (dims[1], dims[3]):
        raise SegcompileError(
            f"--input-shape {text}: expected 3 colour channels, as 1,3,H,W (NCHW) or 1,H,W,3 (NHWC)"
        )
    return dims[0], dims[1], dims[2], dims[3]


def size_of_shape(shape: tuple[int, int, int, int], layout: str) -> tuple[int, int]:
    """(width, height) of an input shape in ``layout``."""
    return (shape[3], shape[2]) if layout == "NCHW" else (shape[2], shape[1])


def layout_of_shape(shape: tuple[int, int, int, int]) -> str:
    """The layout a 4-D image shape implies (channels=3 second: NCHW; last: NHWC)."""
    if shape[1] == 3 and shape[3] != 3:
        return "NCHW"
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    return "NCHW"  # 3x?x3: ambiguous, take the ONNX convention; --layout says otherwise
