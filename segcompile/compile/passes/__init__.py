"""Relax passes of the compile stage (one pass, one idea, as in tvm.relax.transform)."""

from segcompile.compile.passes.clip_kernels_to_ops import ClipKernelsToOps
from segcompile.compile.passes.lower_qdq_to_integer import LoweringLog, LowerQdqToInteger
from segcompile.compile.passes.mark_take_injective import MarkTakeInjective
from segcompile.compile.passes.pad_conv_channels import PadConvOutputChannels
from segcompile.compile.passes.resize_tap_tables import ResizeToTapTables

__all__ = [
    "ClipKernelsToOps",
    "LowerQdqToInteger",
    "LoweringLog",
    "MarkTakeInjective",
    "PadConvOutputChannels",
    "ResizeToTapTables",
]
