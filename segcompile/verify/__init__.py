"""Verify stage: float vs int8 accuracy of a build folder, accuracy gate and accuracy-aware fallback."""
