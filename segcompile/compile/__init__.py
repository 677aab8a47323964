"""Compile stage: QDQ ONNX -> integer Relax program -> libraries per target core.

Public API used by other stages (keep stable):

- :func:`import_qdq` -> :class:`QdqModel`
- :func:`lower_to_integer` -> ``(tvm.IRModule, LoweringReport)``
- :func:`build_for_host` -> path of ``model.so``; :class:`HostModule` runs it
- :func:`integer_reference`: numpy requantization reference
"""

# Imported eagerly: the function ``import_qdq`` shares its name with its module, and only an
# explicit import here makes ``from segcompile.compile import import_qdq`` return the function.
from segcompile.compile.fixed_point import integer_reference, quantize_multiplier
from segcompile.compile.host_runtime import HostModule, build_for_host
from segcompile.compile.import_qdq import QdqModel, import_qdq
from segcompile.compile.integer_lowering import FloatNode, LoweringReport, lower_to_integer

__all__ = [
    "FloatNode",
    "HostModule",
    "LoweringReport",
    "QdqModel",
    "build_for_host",
    "import_qdq",
    "integer_reference",
    "lower_to_integer",
    "quantize_multiplier",
]
