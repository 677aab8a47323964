"""The output size of a convolution window, shared by the hand-written convolution kernels."""

from __future__ import annotations


def conv_output_hw(
    in_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """Output (height, width) of a 2-D convolution; ``padding`` is (top, left, bottom, right)."""
    (h, w), (kh, kw), (sh, sw), (dh, dw) = in_hw, kernel, strides, dilation
    top, left, bottom, right = padding
    return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1
