"""Small questions about Relax expressions that several passes ask."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax


def is_call(expr, name: str) -> bool:
    """Whether ``expr`` is a call of the Relax operator ``name`` (e.g. ``relax.nn.conv2d``)."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name


def constant_through_permutes(expr, lookup_binding: Callable) -> np.ndarray | None:
    """``expr`` as numpy if it is a constant, or ``permute_dims`` of one (what ConvertLayout puts on a
    weight before FoldConstant runs); None otherwise. ``lookup_binding`` resolves dataflow vars (a
    PyExprMutator's ``lookup_binding``)."""
    if isinstance(expr, relax.Var):
        bound = lookup_binding(expr)
        expr = bound if bound is not None else expr
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if is_call(expr, "relax.permute_dims") and expr.attrs.axes is not None:
        inner = constant_through_permutes(expr.args[0], lookup_binding)
        if inner is not None:
            return np.transpose(inner, [int(a) for a in expr.attrs.axes])
    return None
