"""The export stage: a zoo name, checkpoint, factory or ONNX file in; a checked ``float.onnx`` out."""

from segcompile.export.config import DEFAULT_OPSET, ExportConfig
from segcompile.export.parity import ParityReport
from segcompile.export.stage import (
    EXPORT_JSON,
    FLOAT_ONNX,
    ExportResult,
    export_fingerprint,
    is_up_to_date,
    run_export,
)

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_JSON",
    "FLOAT_ONNX",
    "ExportConfig",
    "ExportResult",
    "ParityReport",
    "export_fingerprint",
    "is_up_to_date",
    "run_export",
]
