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
    """``expr`` as numpy if it is a constant, or ``permute_dims``/``reshape`` of one (what the importer
    and ConvertLayout put on weights and biases before FoldConstant runs); None otherwise.
    ``lookup_binding`` resolves dataflow vars (a PyExprMutator's ``lookup_binding``)."""
    if isinstance(expr, relax.Var):
        bound = lookup_binding(expr)
        expr = bound if bound is not None else expr
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if is_call(expr, "relax.permute_dims") and expr.attrs.axes is not None:
        inner = constant_through_permutes(expr.args[0], lookup_binding)
        if inner is not None:
            return np.transpose(inner, [int(a) for a in expr.attrs.axes])
    if is_call(expr, "relax.reshape") and isinstance(expr.ty, relax.TensorType) and expr.ty.shape is not None:
        inner = constant_through_permutes(expr.args[0], lookup_binding)
        if inner is not None:
            return inner.reshape([int(d) for d in expr.ty.shape])
    return None


def use_counts(func) -> dict:
    """How often each variable of the Relax function ``func`` is read (bindings, outputs, tuples)."""
    counts: dict = {}

    @relax.expr_functor.visitor
    class _Counter(relax.PyExprVisitor):
        def visit_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

        def visit_dataflow_var_(self, var):
            counts[var] = counts.get(var, 0) + 1

    _Counter().visit_expr(func)
    return counts
