"""What every stage must know about a model, carried inside the ONNX file itself.

The export stage writes a :class:`ModelInfo` as JSON into the ONNX ``metadata_props``
under the key ``segcompile``; quantize, compile and verify read it back, so float and
int8 always see identical preprocessing without a side file that could drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from segcompile.errors import SegcompileError

METADATA_KEY = "segcompile"

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# Class names of a one-channel probability model that does not name its foreground.
BINARY_CLASS_NAMES = ("background", "foreground")


@dataclass(frozen=True)
class ModelInfo:
    """Identity, input contract and classes of a segmentation model."""

    name: str
    num_classes: int
    input_size: tuple[int, int]  # (width, height)
    class_names: tuple[str, ...] = ()
    # Preprocessing on 0..255 pixel values: x = (pixel - mean) / std, per channel in `channel_order`.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"  # of the input tensor
    output_layout: str = "NCHW"  # of the output tensor (models converted from TensorFlow often give NHWC)
    # "logits": argmax over channels; "probability": one channel compared with `threshold`.
    output_kind: str = "logits"
    threshold: float = 0.5
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        width, height = self.input_size
        return (1, 3, height, width) if self.layout == "NCHW" else (1, height, width, 3)

    def output_as_nchw(self, output: np.ndarray) -> np.ndarray:
        """The model's 4-D output in NCHW order, whatever layout the model itself gives."""
        output = np.asarray(output)
        if self.output_layout == "NHWC" and output.ndim == 4:
            return output.transpose(0, 3, 1, 2)
        return output

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        raw = json.loads(text)
        for key in ("input_size", "class_names", "mean", "std"):
            if key in raw and raw[key] is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)


def attach_model_info(model: onnx.ModelProto, info: ModelInfo) -> None:
    """Store ``info`` in the model's metadata, replacing any earlier copy."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=info.to_json())


def read_model_info(model: onnx.ModelProto, source: str = "model") -> ModelInfo:
    """Read the :class:`ModelInfo` that the export stage stored in ``model``."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return ModelInfo.from_json(prop.value)
            except (ValueError, TypeError) as exc:
                raise SegcompileError(f"{source}: unreadable segcompile metadata ({exc})") from exc
    raise SegcompileError(
        f"{source}: has no segcompile metadata; run `segcompile export` on it first "
        "(it records input size, preprocessing and classes)"
    )
