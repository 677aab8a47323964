"""Relax passes of the compile stage (one pass, one idea, as in tvm.relax.transform)."""

from segcompile.compile.passes.lower_qdq_to_integer import LoweringLog, LowerQdqToInteger

__all__ = ["LowerQdqToInteger", "LoweringLog"]
