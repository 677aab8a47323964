"""ClipKernelsToOps: the ONNX importer's Clip kernels become Relax ``maximum``/``minimum`` operators.

TVM's ONNX frontend imports Clip (ReLU6) as ``call_tir`` of TOPI maximum/minimum kernels. A ``call_tir``
is opaque to ConvertLayout, so every ReLU6 of a channels-last network would be wrapped in two transposes
(NHWC -> NCHW -> NHWC). As operators, the bounds are ordinary scalar broadcasts that follow any layout.
"""

from __future__ import annotations

import re

import tvm
from tvm import relax

# The importer's kernels are named by op and numbered per shape: maximum, maximum1, minimum12, ...
_CLIP_KERNEL = re.compile(r"^(maximum|minimum)\d*$")


@relax.expr_functor.mutator
class _ClipRewriter(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"):
            return call
        kernel = call.args[0]
        match = _CLIP_KERNEL.match(kernel.name_hint) if isinstance(kernel, tvm.ir.GlobalVar) else None
        operands = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
        if match is None or len(operands) != 2 or len(operands[1].ty.shape) != 0:
            return call
        op = relax.op.maximum if match.group(1) == "maximum" else relax.op.minimum
        return op(operands[0], operands[1])


def ClipKernelsToOps() -> tvm.transform.Pass:  # noqa: N802 (a pass, named like TVM's)
    """Replace ``call_tir(maximum*/minimum*, [x, scalar])`` with ``maximum(x, scalar)``/``minimum``."""

    @tvm.transform.module_pass(opt_level=0, name="ClipKernelsToOps")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _ClipRewriter(mod)
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return _pass
