"""Segmentation accuracy from confusion matrices.

Everything is accumulated as integer confusion matrices (rows = ground-truth label, columns =
prediction), one ``np.bincount(label * C + pred)`` per frame, so that shards of an evaluation
can be summed exactly and the final numbers do not depend on frame order or batching.

Units: IoU and mIoU are returned here as fractions in [0, 1]; the report stores them as percent
(``miou_drop`` is in percent points).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from segcompile.data.classes import IGNORE_LABEL
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo


def confusion_matrix(
    labels: np.ndarray, pred: np.ndarray, num_classes: int, source: str = "frame"
) -> np.ndarray:
    """Return the ``num_classes x num_classes`` int64 confusion matrix of one frame.

    ``labels`` pixels equal to ``IGNORE_LABEL`` (255) are skipped. Any other label outside
    ``[0, num_classes)`` is a dataset/model mismatch and raises a :class:`SegcompileError`
    naming ``source``.
    """
    if labels.shape != pred.shape:
        raise SegcompileError(
            f"{source}: mask shape {labels.shape} differs from prediction shape {pred.shape}"
        )
    labels = labels.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = labels != IGNORE_LABEL
    labels, pred = labels[keep], pred[keep]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise SegcompileError(
            f"{source}: mask holds label {bad} but the model has {num_classes} classes "
            f"(labels must be 0..{num_classes - 1} or {IGNORE_LABEL} for ignore)"
        )
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise SegcompileError(f"{source}: prediction outside 0..{num_classes - 1}")
    counts = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of every class as a fraction; NaN for classes absent from both labels and predictions.

    IoU_c = TP / (TP + FP + FN), the definition of the Cityscapes/VOC/ADE20K benchmarks.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    true_pos = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - np.diag(confusion)
    iou = np.full(confusion.shape[0], np.nan)
    present = union > 0
    iou[present] = true_pos[present] / union[present]
    return iou


def miou_from_confusion(confusion: np.ndarray) -> float:
    """Mean IoU (fraction) over the classes present in labels or predictions.

    Classes absent from both are excluded, as the usual benchmarks do. Returns NaN when the
    matrix is empty (no labelled pixel at all).
    """
    iou = iou_per_class(confusion)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of labelled pixels predicted correctly."""
    total = int(np.asarray(confusion).sum())
    return float(np.trace(confusion) / total) if total else float("nan")


def effective_classes(info: ModelInfo) -> tuple[str, ...]:
    """Class names the metric counts: the model's classes, or background/foreground for binary models."""
    if info.output_kind == "probability":
        names = tuple(info.class_names)
        if len(names) == 2:
            return names
        foreground = names[-1] if names else "foreground"
        return ("background", foreground)
    if info.class_names and len(info.class_names) == info.num_classes:
        return tuple(info.class_names)
    return tuple(f"class_{i}" for i in range(info.num_classes))


def predict_labels(output: np.ndarray, info: ModelInfo, source: str = "model") -> np.ndarray:
    """Turn one model output into an ``H x W`` uint8 label map.

    ``logits`` models: argmax over channels (ties go to the lower class id, numpy's rule, so float
    and int8 are treated alike). ``probability`` models (one channel): foreground where the value
    is strictly greater than ``info.threshold``.
    """
    out = info.output_as_nchw(np.asarray(output))
    if out.ndim == 4:
        if out.shape[0] != 1:
            raise SegcompileError(f"{source}: expected batch 1, got output shape {out.shape}")
        out = out[0]
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3:
        raise SegcompileError(f"{source}: expected a 1xCxHxW output, got shape {np.shape(output)}")
    if info.output_kind == "probability":
        if out.shape[0] != 1:
            raise SegcompileError(
                f"{source}: output_kind 'probability' needs one output channel, got {out.shape[0]}"
            )
        return (out[0] > info.threshold).astype(np.uint8)
    if info.output_kind != "logits":
        raise SegcompileError(f"{source}: unknown output_kind {info.output_kind!r} (logits|probability)")
    if out.shape[0] != info.num_classes:
        raise SegcompileError(
            f"{source}: output has {out.shape[0]} channels but the model declares {info.num_classes} classes"
        )
    return np.argmax(out, axis=0).astype(np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size`` = (width, height).

    Used only when a network's output resolution differs from its input resolution; index
    arithmetic (pixel centres) instead of PIL because label maps must never be interpolated.
    """
    width, height = size
    in_h, in_w = labels.shape
    if (in_w, in_h) == (width, height):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.int64), in_w - 1)
    return labels[rows[:, None], cols[None, :]]


@dataclass
class EvalTally:
    """Running totals of a float-vs-int8 evaluation; tallies of disjoint shards add up exactly."""

    num_classes: int
    float_confusion: np.ndarray = field(default=None)  # type: ignore[assignment]
    int8_confusion: np.ndarray = field(default=None)  # type: ignore[assignment]
    agree_pixels: int = 0
    total_pixels: int = 0
    frames: int = 0

    def __post_init__(self) -> None:
        shape = (self.num_classes, self.num_classes)
        if self.float_confusion is None:
            self.float_confusion = np.zeros(shape, dtype=np.int64)
        if self.int8_confusion is None:
            self.int8_confusion = np.zeros(shape, dtype=np.int64)

    def update(
        self, float_pred: np.ndarray, int8_pred: np.ndarray, mask: np.ndarray | None, source: str = "frame"
    ) -> None:
        """Add one frame. Without a mask only the float/int8 pixel agreement is counted."""
        if float_pred.shape != int8_pred.shape:
            raise SegcompileError(
                f"{source}: float prediction {float_pred.shape} and int8 prediction {int8_pred.shape} differ"
            )
        self.agree_pixels += int(np.count_nonzero(float_pred == int8_pred))
        self.total_pixels += int(float_pred.size)
        self.frames += 1
        if mask is not None:
            self.float_confusion += confusion_matrix(mask, float_pred, self.num_classes, source)
            self.int8_confusion += confusion_matrix(mask, int8_pred, self.num_classes, source)

    def __add__(self, other: EvalTally) -> EvalTally:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add tallies with different class counts")
        return EvalTally(
            self.num_classes,
            self.float_confusion + other.float_confusion,
            self.int8_confusion + other.int8_confusion,
            self.agree_pixels + other.agree_pixels,
            self.total_pixels + other.total_pixels,
            self.frames + other.frames,
        )

    @property
    def pixel_agreement(self) -> float:
        """Fraction of pixels where float and int8 predict the same class."""
        return self.agree_pixels / self.total_pixels if self.total_pixels else float("nan")

    @property
    def float_miou(self) -> float:
        return miou_from_confusion(self.float_confusion)

    @property
    def int8_miou(self) -> float:
        return miou_from_confusion(self.int8_confusion)

    @property
    def miou_drop_points(self) -> float:
        """Float minus int8 mIoU in percent points."""
        return 100.0 * (self.float_miou - self.int8_miou)
