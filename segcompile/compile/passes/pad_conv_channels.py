"""PadConvOutputChannels: channels-last convolutions get a whole number of vectors of output channels.

A channels-last convolution vectorizes along its output channels. A classifier with 19 or 21 classes
leaves no vector width that divides the channel count, and the kernel falls back to one odd-sized vector
(a fifth of the speed on AVX-512). Zero weights pad the output channels to a multiple of the vector
width; a slice drops the extra channels again (one cheap pass over the small classifier output).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from segcompile.compile.passes.relax_exprs import constant_through_permutes, is_call


@relax.expr_functor.mutator
class _ChannelPadder(relax.PyExprMutator):
    def __init__(self, mod, multiple: int):
        super().__init__(mod)
        self.multiple = multiple

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not is_call(call, "relax.nn.conv2d"):
            return call
        attrs = call.attrs
        if attrs.data_layout != "NHWC" or attrs.out_layout != "NHWC" or int(attrs.groups) != 1:
            return call
        weight = constant_through_permutes(call.args[1], self.lookup_binding)
        if weight is None:
            return call
        out_axis = str(attrs.kernel_layout).index("O")
        channels = weight.shape[out_axis]
        if channels % self.multiple == 0 or channels < self.multiple // 2:
            return call
        padded_channels = -(-channels // self.multiple) * self.multiple
        widths = [(0, 0)] * weight.ndim
        widths[out_axis] = (0, padded_channels - channels)
        padded = relax.const(np.pad(weight, widths), str(weight.dtype))
        conv = relax.op.nn.conv2d(
            call.args[0],
            padded,
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=1,
            data_layout="NHWC",
            kernel_layout=attrs.kernel_layout,
            out_layout="NHWC",
            out_dtype=attrs.out_dtype,
        )
        return relax.op.strided_slice(self.builder_.emit(conv), axes=[3], begin=[0], end=[channels])


def PadConvOutputChannels(multiple: int = 16) -> tvm.transform.Pass:  # noqa: N802 (a pass, named like TVM's)
    """Pad the output channels of channels-last convolutions with constant weights to ``multiple``."""

    @tvm.transform.module_pass(opt_level=0, name="PadConvOutputChannels")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        padder = _ChannelPadder(mod, multiple)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                padder.builder_.update_func(gvar, padder.visit_expr(func))
        return padder.builder_.get()

    return _pass
