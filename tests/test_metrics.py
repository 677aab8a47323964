"""The segmentation metric against confusion matrices and IoUs computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo
from segcompile.verify.metrics import (
    EvalTally,
    confusion_matrix,
    iou_per_class,
    miou_from_confusion,
    pixel_accuracy,
    predict_labels,
    resize_labels,
)

# A 3x4 frame with 3 classes and two ignored pixels.
LABELS = np.array([[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 255, 1]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 2, 2, 0], [2, 0, 1, 1]], dtype=np.uint8)
# Counted by hand over the 10 labelled pixels (rows = label, cols = prediction):
#   label 0 at (0,0),(0,1),(1,0) -> pred 0,1,0
#   label 1 at (0,2),(0,3),(1,2),(2,3) -> pred 1,1,2,1
#   label 2 at (1,1),(2,0),(2,1) -> pred 2,2,0
HAND_CONFUSION = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2]])


def test_confusion_matrix_matches_hand_count_and_skips_ignore_label():
    assert confusion_matrix(LABELS, PRED, 3).tolist() == HAND_CONFUSION.tolist()


def test_iou_per_class_is_tp_over_tp_fp_fn():
    # class 0: TP 2, FN 1, FP 1 -> 2/4; class 1: TP 3, FN 1, FP 1 -> 3/5; class 2: TP 2, FN 1, FP 1 -> 2/4
    assert iou_per_class(HAND_CONFUSION) == pytest.approx([0.5, 0.6, 0.5])
    assert miou_from_confusion(HAND_CONFUSION) == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert pixel_accuracy(HAND_CONFUSION) == pytest.approx(7 / 10)


def test_class_absent_from_labels_and_predictions_is_excluded_from_the_mean():
    confusion = np.zeros((4, 4), dtype=np.int64)
    confusion[:3, :3] = HAND_CONFUSION  # class 3 never appears
    iou = iou_per_class(confusion)
    assert math.isnan(iou[3])
    assert miou_from_confusion(confusion) == pytest.approx((0.5 + 0.6 + 0.5) / 3)


def test_class_only_predicted_counts_with_zero_iou():
    labels = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    pred = np.array([[0, 2], [1, 1]], dtype=np.uint8)  # class 2 is a pure false positive
    confusion = confusion_matrix(labels, pred, 3)
    assert iou_per_class(confusion) == pytest.approx([0.5, 1.0, 0.0])
    assert miou_from_confusion(confusion) == pytest.approx(0.5)


def test_sharded_tallies_sum_to_the_whole():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, (6, 5), dtype=np.uint8) for _ in range(4)]
    floats = [rng.integers(0, 4, (6, 5), dtype=np.uint8) for _ in range(4)]
    int8s = [rng.integers(0, 4, (6, 5), dtype=np.uint8) for _ in range(4)]
    whole, first, second = EvalTally(4), EvalTally(4), EvalTally(4)
    for i, (lab, fp, ip) in enumerate(zip(labels, floats, int8s, strict=True)):
        whole.update(fp, ip, lab)
        (first if i < 2 else second).update(fp, ip, lab)
    summed = first + second
    assert np.array_equal(summed.float_confusion, whole.float_confusion)
    assert np.array_equal(summed.int8_confusion, whole.int8_confusion)
    assert summed.pixel_agreement == whole.pixel_agreement
    assert summed.frames == 4


def test_pixel_agreement_and_drop_in_points():
    tally = EvalTally(3)
    tally.update(float_pred=LABELS.clip(0, 2), int8_pred=PRED, mask=LABELS)
    # float is perfect on the labelled pixels; int8 is PRED (mIoU 53.33 %)
    assert tally.float_miou == pytest.approx(1.0)
    assert tally.miou_drop_points == pytest.approx(100 * (1 - 1.6 / 3))
    agree = np.count_nonzero(LABELS.clip(0, 2) == PRED)
    assert tally.pixel_agreement == pytest.approx(agree / 12)


def test_label_outside_the_model_classes_names_the_frame():
    labels = np.array([[0, 7]], dtype=np.uint8)
    with pytest.raises(SegcompileError, match="street_01.*label 7.*3 classes"):
        confusion_matrix(labels, np.zeros_like(labels), 3, source="street_01")


def test_logits_take_the_argmax():
    info = ModelInfo(name="m", num_classes=3, input_size=(2, 1))
    logits = np.array([[[[0.1, 3.0]], [[2.0, 1.0]], [[-1.0, 2.9]]]], dtype=np.float32)  # 1x3x1x2
    assert predict_labels(logits, info).tolist() == [[1, 0]]


def test_binary_probability_output_uses_the_threshold():
    info = ModelInfo(name="text", num_classes=1, input_size=(4, 1), output_kind="probability", threshold=0.3)
    probs = np.array([[[[0.1, 0.3, 0.31, 0.9]]]], dtype=np.float32)
    assert predict_labels(probs, info).tolist() == [[0, 0, 1, 1]]


def test_probability_model_with_several_channels_is_rejected():
    info = ModelInfo(name="text", num_classes=1, input_size=(1, 1), output_kind="probability")
    with pytest.raises(SegcompileError, match="one output channel"):
        predict_labels(np.zeros((1, 2, 1, 1), np.float32), info)


def test_resize_labels_is_nearest_and_never_invents_classes():
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    assert resize_labels(labels, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert resize_labels(np.kron(labels, np.ones((2, 2), np.uint8)), (2, 2)).tolist() == labels.tolist()
