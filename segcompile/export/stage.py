"""The export stage: write ``float.onnx`` and ``export.json`` into a build folder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxscript
import onnxsim
import torch

from segcompile import __version__
from segcompile.artifacts import sha256_file, write_bytes_atomic, write_json_atomic
from segcompile.errors import SegcompileError
from segcompile.export.config import DEFAULT_OPSET, MIN_OPSET, ExportConfig
from segcompile.export.constant_nodes import constant_nodes_to_initializers
from segcompile.export.onnx_export import (
    OUTPUT_NAME,
    PreparedInput,
    export_torch,
    opset_of,
    prepare_onnx_input,
    simplify_and_check,
    value_shape,
)
from segcompile.export.operator_support import check_operators
from segcompile.export.opset_upgrade import upgrade_opset
from segcompile.export.parity import (
    ParityReport,
    compare_logits,
    onnxruntime_logits,
    synthetic_image,
    torch_logits,
)
from segcompile.export.resize_inputs import omit_unused_resize_inputs
from segcompile.export.source import (
    CHECKPOINT_SUFFIXES,
    ONNX_SUFFIXES,
    OnnxSource,
    TorchSource,
    resolve_source,
)
from segcompile.modelinfo import (
    BINARY_CLASS_NAMES,
    METADATA_KEY,
    ModelInfo,
    attach_model_info,
    read_model_info,
)

FLOAT_ONNX = "float.onnx"
# Largest output difference, relative to the output's magnitude, accepted between an ONNX file as
# given and the float.onnx made from it (both run by onnxruntime; float reassociation only).
PARITY_RTOL = 1e-4
EXPORT_JSON = "export.json"


@dataclass(frozen=True)
class _Exported:
    """A checked model ready to write, with what is known about how it was made."""

    model: onnx.ModelProto
    info: ModelInfo
    parity: ParityReport
    exporter: str
    nodes_before: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ExportResult:
    """What the export stage produced."""

    onnx_path: Path
    json_path: Path
    info: ModelInfo
    parity: ParityReport
    exporter: str
    opset: int
    fingerprint: str
    nodes_before: int
    nodes_after: int
    elapsed_s: float
    notes: tuple[str, ...] = ()


def run_export(config: ExportConfig, out_dir: Path | str) -> ExportResult:
    """Export the configured model to ``out_dir/float.onnx`` and record the details in ``export.json``.

    ``float.onnx`` is simplified, checked, has a static 1x3xHxW input ``input``, one output
    ``logits`` and carries :class:`ModelInfo` in its metadata. Nothing is written unless every
    step succeeds.
    """
    started = time.perf_counter()
    _validate(config)
    fingerprint = export_fingerprint(config)
    out_dir = Path(out_dir)
    source = resolve_source(config)
    built = _from_torch(source, config) if isinstance(source, TorchSource) else _from_onnx(source, config)
    model, info, parity = built.model, built.info, built.parity
    data = model.SerializeToString()
    onnx_path = write_bytes_atomic(out_dir / FLOAT_ONNX, data)
    elapsed = time.perf_counter() - started
    graph = model.graph
    record = {
        "stage": "export",
        "segcompile_version": __version__,
        "fingerprint": fingerprint,
        "source": source.description,
        "model_info": asdict(info),
        "exporter": built.exporter,
        "notes": list(built.notes),
        "opset": opset_of(model),
        "opset_requested": config.opset,
        "seed": config.seed,
        "versions": _versions(),
        "nodes_before_simplify": built.nodes_before,
        "nodes_after_simplify": len(graph.node),
        "op_counts": dict(sorted(Counter(node.op_type for node in graph.node).items())),
        "input": {"name": graph.input[0].name, "shape": value_shape(graph.input[0])},
        "output": {"name": graph.output[0].name, "shape": value_shape(graph.output[0])},
        "parity": parity.to_dict(),
        "float_onnx": {"file": FLOAT_ONNX, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
        "elapsed_s": round(elapsed, 3),
    }
    json_path = write_json_atomic(out_dir / EXPORT_JSON, record)
    return ExportResult(
        onnx_path=onnx_path, json_path=json_path, info=info, parity=parity, exporter=built.exporter,
        opset=record["opset"], fingerprint=fingerprint, nodes_before=built.nodes_before,
        nodes_after=len(graph.node), elapsed_s=elapsed, notes=built.notes,
    )


def export_fingerprint(config: ExportConfig) -> str:
    """sha256 over everything the export's output depends on.

    Covers the config, the bytes of any model/checkpoint file, the factory's source file, the
    sample image, and the segcompile/torch/onnx/onnxsim versions; equal fingerprints mean the
    earlier ``float.onnx`` and ``export.json`` can be reused.
    """
    digest = hashlib.sha256()
    fields = {
        "model": config.model, "checkpoint": config.checkpoint, "factory": config.factory,
        "input_size": list(config.input_size) if config.input_size else None,
        "input_shape": list(config.input_shape) if config.input_shape else None,
        "contract": config.contract.to_dict(),
        "num_classes": config.num_classes, "opset": config.opset, "seed": config.seed,
        "sample_name": config.sample_name, "versions": _versions(), "segcompile": __version__,
    }
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for path in _input_files(config):
        digest.update(f"\0file:{path}\0".encode())
        digest.update(sha256_file(path).encode() if path.is_file() else b"missing")
    if config.sample_image is not None:
        image = np.ascontiguousarray(config.sample_image)
        digest.update(f"\0image:{image.shape}:{image.dtype}\0".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def is_up_to_date(config: ExportConfig, out_dir: Path | str) -> bool:
    """True when ``out_dir`` holds the export of exactly this config, intact, so the stage can be skipped."""
    out_dir = Path(out_dir)
    onnx_path, json_path = out_dir / FLOAT_ONNX, out_dir / EXPORT_JSON
    if not onnx_path.is_file() or not json_path.is_file():
        return False
    try:
        record = json.loads(json_path.read_text())
        recorded_fingerprint, recorded_sha = record["fingerprint"], record["float_onnx"]["sha256"]
    except (ValueError, KeyError, TypeError):
        return False
    return recorded_fingerprint == export_fingerprint(config) and recorded_sha == sha256_file(onnx_path)


def _from_torch(source: TorchSource, config: ExportConfig) -> _Exported:
    if config.contract.layout not in (None, "NCHW") or config.input_shape is not None:
        raise SegcompileError(
            "--layout/--input-shape describe an ONNX file's input; a torch model is exported NCHW at "
            "--input-size WxH"
        )
    info = config.contract.apply(source.info)
    batch, input_source = _sample_batch(config, info)
    what = f"model {info.name}"
    exported = export_torch(source.module, batch, config.opset, what)
    notes = []
    if exported.fallback_reason:
        notes.append(f"used the legacy exporter because the {exported.fallback_reason}")
    if opset_of(exported.model) != config.opset:
        notes.append(f"the exporter produced opset {opset_of(exported.model)} (asked for {config.opset})")
    nodes_before = len(exported.model.graph.node)
    attach_model_info(exported.model, info)
    model = simplify_and_check(exported.model, what)
    reference = torch_logits(source.module, batch)
    candidate = onnxruntime_logits(model.SerializeToString(), batch, what)
    parity = compare_logits(
        reference, candidate, info, reference_name="torch", candidate_name="onnxruntime",
        input_source=input_source,
    )
    return _Exported(model, info, parity, exported.exporter, nodes_before, tuple(notes))


def _from_onnx(source: OnnxSource, config: ExportConfig) -> _Exported:
    where = str(source.path)
    notes = []
    original_opset = opset_of(source.model)
    wanted_opset = DEFAULT_OPSET if original_opset < MIN_OPSET else original_opset
    model = upgrade_opset(source.model, wanted_opset, where)
    if original_opset < MIN_OPSET:
        notes.append(f"upgraded opset {original_opset} -> {DEFAULT_OPSET} with onnx's version converter")
    check_operators(model, where)
    prepared = prepare_onnx_input(
        model, config.input_size, where, input_shape=config.input_shape, layout=config.contract.layout,
    )
    notes.extend(prepared.notes)
    nodes_before = len(prepared.model.graph.node)
    simplified = simplify_and_check(prepared.model, where, tensor_names=False)
    constant_nodes_to_initializers(simplified)
    if omit_unused_resize_inputs(simplified):
        notes.append("left out Resize inputs that do not apply (roi, empty scales), as TVM needs")
    info = config.contract.apply(_onnx_model_info(simplified, source, config, prepared))
    attach_model_info(simplified, info)
    batch, input_source = _sample_batch(config, info)
    # The reference is the file as given (old opset, dynamic axes): the upgrade, the fixed shape and
    # the simplification are all checked against it.
    reference = onnxruntime_logits(source.model.SerializeToString(), batch, where)
    candidate = onnxruntime_logits(simplified.SerializeToString(), batch, f"{where} (simplified)")
    parity = compare_logits(
        reference, candidate, info, reference_name="onnxruntime (input model)",
        candidate_name="onnxruntime (float.onnx)", input_source=input_source,
    )
    tolerance = PARITY_RTOL * max(1.0, float(np.abs(reference).max()))
    if parity.max_abs_diff > tolerance:
        # Upgrading, fixing shapes and simplifying must not change what the model computes.
        raise SegcompileError(
            f"{where}: after opset upgrade and simplification the model's output differs from the file's "
            f"(max |diff| {parity.max_abs_diff:.3g} > {tolerance:.3g}); please report this model"
        )
    return _Exported(simplified, info, parity, "none (ONNX input)", nodes_before, tuple(notes))


def _onnx_model_info(
    model: onnx.ModelProto, source: OnnxSource, config: ExportConfig, prepared: PreparedInput,
) -> ModelInfo:
    """The input model's own segcompile metadata, else one built from the graph and the options."""
    width, height = prepared.input_size
    output_shape = value_shape(model.graph.output[0])
    output_layout = _output_layout(output_shape, prepared)
    channels = output_shape[1] if output_layout == "NCHW" else output_shape[3]
    where = str(source.path)
    if any(prop.key == METADATA_KEY for prop in model.metadata_props):
        stored = read_model_info(model, where)
        if tuple(stored.input_size) != (width, height):
            raise SegcompileError(
                f"{where}: its segcompile metadata says input {stored.input_size[0]}x{stored.input_size[1]} "
                f"but the graph takes {width}x{height}"
            )
        if config.num_classes is not None and config.num_classes != stored.num_classes:
            raise SegcompileError(
                f"{where}: --num-classes {config.num_classes} contradicts its metadata ({stored.num_classes})"
            )
        return stored
    if channels == 1:
        # One output channel is a foreground probability map (e.g. text or person segmentation).
        num_classes, class_names, kind = 2, BINARY_CLASS_NAMES, "probability"
    else:
        num_classes, class_names, kind = channels, tuple(f"class_{i}" for i in range(channels)), "logits"
    if config.num_classes is not None and config.num_classes != num_classes:
        raise SegcompileError(
            f"{where}: --num-classes {config.num_classes} "
            f"but the output {OUTPUT_NAME!r} has {channels} channels"
        )
    return ModelInfo(
        name=source.path.stem, num_classes=num_classes, input_size=(width, height), class_names=class_names,
        layout=prepared.layout, output_layout=output_layout, output_kind=kind,
    )


def _output_layout(shape: list[int], prepared: PreparedInput) -> str:
    """Where the class channels of a 1x?x?x? output are.

    An output at the input's resolution says it by where H and W sit; an output at a lower
    resolution (stride-4 logits) is taken to follow the input's layout.
    """
    width, height = prepared.input_size
    if shape[2:] == [height, width]:
        return "NCHW"
    if shape[1:3] == [height, width]:
        return "NHWC"
    return prepared.layout


def _sample_batch(config: ExportConfig, info: ModelInfo) -> tuple[np.ndarray, str]:
    from segcompile.data.preprocess import preprocess

    if config.sample_image is not None:
        image = config.sample_image  # preprocess checks it is a uint8 HxWx3 RGB image
        description = f"sample image {config.sample_name}" if config.sample_name else "sample image"
    else:
        width, height = info.input_size
        image = synthetic_image(width, height)
        description = "synthetic smooth image (no sample image given)"
    batch = preprocess(image, info)
    return np.ascontiguousarray(batch, dtype=np.float32), description


def _validate(config: ExportConfig) -> None:
    if config.input_size is not None:
        width, height = config.input_size
        if width < 1 or height < 1:
            raise SegcompileError(f"--input-size {width}x{height}: width and height must be positive")
    if config.input_shape is not None and config.input_size is not None:
        raise SegcompileError("--input-shape and --input-size both give the input size; pass one of them")
    if config.num_classes is not None and config.num_classes < 1:
        raise SegcompileError(f"--num-classes {config.num_classes}: must be at least 1")
    if config.opset < MIN_OPSET:
        raise SegcompileError(f"--opset {config.opset}: must be at least {MIN_OPSET}")


def _input_files(config: ExportConfig) -> list[Path]:
    files = []
    if config.model and Path(config.model).suffix.lower() in ONNX_SUFFIXES + CHECKPOINT_SUFFIXES:
        files.append(Path(config.model))
    if config.checkpoint:
        files.append(Path(config.checkpoint))
    if config.factory and ":" in config.factory:
        module_name = config.factory.split(":")[0]
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            files.append(Path(spec.origin))
    return files


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxsim": onnxsim.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
    }


