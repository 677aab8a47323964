"""MarkTakeInjective: ``take`` kernels may fuse with the elementwise arithmetic around them.

AnnotateTIROpPattern calls a kernel opaque when an output index does not map affinely to an input index,
and a gather (``out[..., i, ...] = x[..., index[i], ...]``) does not. Opaque kernels never fuse, so each
``take`` of the integer resize (two per axis) writes and re-reads a full-size intermediate: at 512x512 the
final upsample spent more time in memory traffic than the whole backbone in convolutions. A gather along
one axis still computes each output from one input element, which is all injective fusion needs.
"""

from __future__ import annotations

import re

import tvm
from tvm import tirx

# Relax's kInjective.
_INJECTIVE = 2
# Legalized relax.take kernels: take, take1, take12, ...
_TAKE_KERNEL = re.compile(r"^take\d*$")


def MarkTakeInjective() -> tvm.transform.Pass:  # noqa: N802 (a pass, named like TVM's)
    """Set ``op_pattern`` = injective on the legalized ``take`` kernels (run after AnnotateTIROpPattern)."""

    @tvm.transform.module_pass(opt_level=0, name="MarkTakeInjective")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {
            gvar: func.with_attr("op_pattern", _INJECTIVE)
            for gvar, func in mod.functions.items()
            if isinstance(func, tirx.PrimFunc) and _TAKE_KERNEL.match(gvar.name_hint)
        }
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    return _pass
