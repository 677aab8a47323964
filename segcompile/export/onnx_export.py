"""torch -> ONNX (one file) -> onnxsim -> onnx checker and strict shape inference.

Also prepares an ONNX file given as input the same way: static 1x3xHxW input named ``input``,
one output named ``logits``, simplified and checked.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnxsim
import torch
from torch import nn

from segcompile.errors import SegcompileError
from segcompile.export.config import MIN_OPSET
from segcompile.export.messages import root_reason, short_reason
from segcompile.export.naming import (
    make_node_names_unique,
    name_nodes_from_torch_scopes,
    name_tensors_after_nodes,
    rename_values,
    strip_node_metadata,
)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTER_DYNAMO = "torch.onnx.export(dynamo=True)"
EXPORTER_LEGACY = "torch.onnx.export(dynamo=False) (legacy TorchScript)"


@dataclass(frozen=True)
class TorchExport:
    """The raw exporter output, before simplification."""

    model: onnx.ModelProto
    exporter: str
    fallback_reason: str | None = None


def export_torch(module: nn.Module, example: np.ndarray, opset: int, what: str) -> TorchExport:
    """Export ``module`` at the (static) shape of ``example`` with meaningful node names.

    Uses the dynamo exporter; only if it fails, the legacy TorchScript exporter, recording why.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(example))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, (tensor,), dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
        model = program.model_proto
        name_nodes_from_torch_scopes(model.graph)
        result = TorchExport(model, EXPORTER_DYNAMO)
    except Exception as dynamo_exc:  # the exporter raises many types; any failure means "try legacy"
        reason = f"dynamo exporter failed ({root_reason(dynamo_exc)})"
        buffer = io.BytesIO()
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    module, (tensor,), buffer, dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                )
        except Exception as legacy_exc:
            raise SegcompileError(
                f"{what}: ONNX export failed ({reason}; legacy exporter: {short_reason(legacy_exc)})"
            ) from legacy_exc
        # The legacy exporter already names nodes after module paths (/backbone/conv/Conv).
        result = TorchExport(onnx.load_model_from_string(buffer.getvalue()), EXPORTER_LEGACY, reason)
    strip_node_metadata(result.model.graph)
    make_node_names_unique(result.model.graph)
    actual = opset_of(result.model)
    if actual < MIN_OPSET:
        raise SegcompileError(f"{what}: exported opset {actual} is below the minimum {MIN_OPSET} (--opset)")
    return result


@dataclass(frozen=True)
class PreparedInput:
    """An ONNX model given the stage's input contract, and the layout its input turned out to have."""

    model: onnx.ModelProto
    layout: str  # NCHW | NHWC
    input_size: tuple[int, int]  # (width, height)
    notes: tuple[str, ...] = ()


def prepare_onnx_input(
    model: onnx.ModelProto,
    input_size: tuple[int, int] | None,
    source: str,
    *,
    input_shape: tuple[int, int, int, int] | None = None,
    layout: str | None = None,
) -> PreparedInput:
    """Give an ONNX model the stage's contract: one static image input ``input``, one output ``logits``.

    The input is 1x3xHxW (NCHW) or 1xHxWx3 (NHWC, as TensorFlow exports give). Symbolic
    dimensions are fixed from ``input_shape`` (or ``input_size``, batch 1); a static dimension
    that contradicts them is an error rather than a silent reshape, and a dynamic one left open
    is an error naming the input.
    """
    model = _copy(model)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise SegcompileError(
            f"{source}: expected exactly one image input, found {len(inputs)}: "
            + ", ".join(value.name for value in inputs)
        )
    if len(graph.output) != 1:
        raise SegcompileError(
            f"{source}: expected exactly one output (the logits), found {len(graph.output)}: "
            + ", ".join(value.name for value in graph.output)
        )
    image = inputs[0]
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise SegcompileError(f"{source}: input {image.name!r} must be float32")
    dims = list(image.type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise SegcompileError(
            f"{source}: input {image.name!r} must be an image batch (rank 4, NCHW or NHWC), "
            f"has rank {len(dims)}"
        )
    static = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in dims]
    symbols = [dim.dim_param or "?" for dim in dims]
    layout = layout or _layout_of(static, input_shape)
    channel_axis, height_axis, width_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    if static[channel_axis] not in (3, None):
        raise SegcompileError(
            f"{source}: input {image.name!r} has {static[channel_axis]} channels on axis {channel_axis} "
            f"({layout}); expected 3 colour channels"
            + ("" if layout == "NHWC" else " (for a channels-last model give --layout NHWC)")
        )
    if static[0] not in (1, None):
        raise SegcompileError(f"{source}: input {image.name!r} has batch {static[0]}; expected 1")
    wanted = [None, None, None, None]
    wanted[0], wanted[channel_axis] = 1, 3
    if input_shape is not None:
        if input_shape[channel_axis] != 3:
            raise SegcompileError(
                f"--input-shape {','.join(map(str, input_shape))}: a {layout} input has its 3 channels on "
                f"axis {channel_axis}"
            )
        wanted = list(input_shape)
    elif input_size is not None:
        wanted[width_axis], wanted[height_axis] = input_size
    given = ",".join(str(v) for v in input_shape) if input_shape else None
    for axis, (have, want) in enumerate(zip(static, wanted, strict=True)):
        if have is not None and want is not None and have != want:
            option = f"--input-shape {given}" if given else f"--input-size {input_size[0]}x{input_size[1]}"
            raise SegcompileError(
                f"{source}: input {image.name!r} is fixed at {_shape_text(static, symbols)}; {option} "
                f"contradicts axis {axis} (resizing a static ONNX graph is not supported)"
            )
    final = [want if want is not None else have for have, want in zip(static, wanted, strict=True)]
    notes = []
    if static[0] is None and input_shape is None:
        final[0] = 1
        notes.append(f"fixed the dynamic batch dimension {symbols[0]!r} of input {image.name!r} to 1")
    open_axes = [axis for axis, value in enumerate(final) if value is None]
    if open_axes:
        names = ", ".join(f"{('batch', 'channels', 'height', 'width')[_role(axis, layout)]} {symbols[axis]!r}"
                          for axis in open_axes)
        example = "1,3,H,W" if layout == "NCHW" else "1,H,W,3"
        raise SegcompileError(
            f"{source}: input {image.name!r} has dynamic dimensions ({names}): give --input-shape {example} "
            "(or --input-size WxH)"
        )
    for dim, value in zip(dims, final, strict=True):
        dim.Clear()
        dim.dim_value = value
    mapping = {}
    for old, new in ((image.name, INPUT_NAME), (graph.output[0].name, OUTPUT_NAME)):
        if old != new:
            if _value_in_use(graph, new):
                mapping[new] = f"{new}__renamed"
            mapping[old] = new
    rename_values(graph, mapping)
    # Shapes recorded for the old dynamic input may now be stale; shape inference will refill them.
    del graph.value_info[:]
    for output in graph.output:
        for dim in output.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    return PreparedInput(model, layout, (final[width_axis], final[height_axis]), tuple(notes))


def _layout_of(static: list[int | None], input_shape: tuple[int, int, int, int] | None) -> str:
    """NCHW unless the input (or the shape the user gave) has its 3 channels last only."""
    shape = input_shape or static
    if shape[3] == 3 and shape[1] != 3:
        return "NHWC"
    return "NCHW"


def _role(axis: int, layout: str) -> int:
    """Index into (batch, channels, height, width) of ``axis`` in ``layout``."""
    return axis if layout == "NCHW" else (0, 2, 3, 1)[axis]


def _shape_text(static: list[int | None], symbols: list[str]) -> str:
    pairs = zip(static, symbols, strict=True)
    return "x".join(str(value) if value is not None else symbol for value, symbol in pairs)


def simplify_and_check(
    model: onnx.ModelProto, source: str, *, tensor_names: bool = True,
) -> onnx.ModelProto:
    """onnxsim, then ``onnx.checker`` (full) and strict shape inference; return the checked model.

    onnxsim leaves QuantizeLinear/DequantizeLinear pairs (e.g. from QAT) in place, so learned
    quantization ranges survive.
    """
    try:
        # certify=False: its Z3 proof is optional, slow, and would write a verdict into the metadata.
        simplified, ok = onnxsim.simplify(model, certify=False, check_n=0)
    except Exception as exc:
        raise SegcompileError(
            f"{source}: onnxsim could not simplify the graph ({short_reason(exc)})"
        ) from exc
    if not ok:
        raise SegcompileError(f"{source}: onnxsim reports the simplified graph differs from the original")
    # onnxsim may record its own bookkeeping in model metadata; keep only what we put there.
    kept = [(prop.key, prop.value) for prop in model.metadata_props]
    del simplified.metadata_props[:]
    for key, value in kept:
        simplified.metadata_props.add(key=key, value=value)
    make_node_names_unique(simplified.graph)
    if tensor_names:
        name_tensors_after_nodes(simplified.graph)
    checked = check_model(simplified, source)
    return checked


def check_model(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """Run the full ONNX checker and strict shape inference; return the model with inferred shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise SegcompileError(f"{source}: ONNX check failed ({short_reason(exc)})") from exc
    output = inferred.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(dim.HasField("dim_value") for dim in dims):
        raise SegcompileError(
            f"{source}: output {output.name!r} has no static NCHW shape after shape inference"
        )
    return inferred


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version of ``model``."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise SegcompileError("model imports no default ONNX opset")


def value_shape(value: onnx.ValueInfoProto) -> list[int]:
    """Static dims of a graph input/output (0 for a symbolic dim)."""
    return [dim.dim_value for dim in value.type.tensor_type.shape.dim]


def _value_in_use(graph: onnx.GraphProto, name: str) -> bool:
    if any(value.name == name for value in (*graph.input, *graph.output, *graph.value_info)):
        return True
    if any(tensor.name == name for tensor in graph.initializer):
        return True
    return any(name in node.input or name in node.output for node in graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence exporter chatter (missing torchvision ops, graph dumps of a failed trace, deprecations).

    The CLI should print results and, on a fallback, one note. torch's loggers each carry their own
    level, so every ``torch.*`` logger is raised to ERROR for the duration and restored after; and
    torch.export prints the partial graph of a failed trace straight to stderr. Failures still
    surface as exceptions (with the full chain under ``--debug``).
    """
    names = ["torch", *(name for name in logging.root.manager.loggerDict if name.startswith("torch."))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
