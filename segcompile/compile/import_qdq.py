"""Load and validate a QDQ ONNX model and import it into Relax, remembering ONNX node names.

TVM's ONNX importer turns QDQ graphs into simulated quantization: ``relax.quantize`` /
``relax.dequantize`` around float operators, with int8 weights kept as int8 constants feeding a
``dequantize``. That is the input of the integer lowering pass. The importer does not record
which Relax binding came from which ONNX node, so :func:`import_to_relax` drives
``ONNXGraphImporter`` itself and reads its tensor table afterwards to map every binding back to
the ONNX node that produced it (the lowering report names nodes with that map).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm
from tvm import relax

from segcompile.errors import SegcompileError
from segcompile.modelinfo import METADATA_KEY, ModelInfo, read_model_info

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqModel:
    """A validated QDQ ONNX model, ready for :func:`import_to_relax`."""

    path: Path
    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    opset: int
    info: ModelInfo | None = None

    @property
    def quantized(self) -> bool:
        """Whether the graph holds any QuantizeLinear node (else it is a plain float model)."""
        return any(node.op_type == "QuantizeLinear" for node in self.model.graph.node)


@dataclass(frozen=True)
class NodeRef:
    """The ONNX node a Relax binding came from."""

    name: str
    op_type: str


@dataclass
class RelaxImport:
    """The simulated-quantization Relax module and the ONNX name of each binding."""

    mod: tvm.IRModule
    # Relax binding var -> ONNX node; only compute nodes (not Q/DQ, not constant-folded ones).
    node_of_var: dict = field(default_factory=dict)
    compute_nodes: tuple[NodeRef, ...] = ()


def _fail(path: Path | str, message: str) -> SegcompileError:
    return SegcompileError(f"{path}: {message}")


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def import_qdq(path: Path | str) -> QdqModel:
    """Load ``path``, check it with the ONNX checker and shape inference, and read its ModelInfo.

    The model must have one float32 image input of static shape. ModelInfo (written by the export
    stage) is optional here: a QDQ file made elsewhere still compiles.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such QDQ ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a corrupt file
        raise _fail(path, f"not a readable ONNX model ({exc.__class__.__name__}: {exc})") from exc
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx.checker.ValidationError, InferenceError
        detail = " ".join(str(exc).split())[:400] or exc.__class__.__name__
        raise _fail(path, f"invalid ONNX model: {detail}") from exc

    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise _fail(path, f"expected exactly one image input, found {[v.name for v in inputs]}")
    tensor_type = inputs[0].type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise _fail(path, f"input {inputs[0].name!r} must be float32 (the image before quantization)")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise _fail(path, f"input {inputs[0].name!r} needs a static 4-D shape, got {dims}")

    info = None
    if any(prop.key == METADATA_KEY for prop in model.metadata_props):
        info = read_model_info(model, str(path))
    return QdqModel(
        path=path,
        model=model,
        input_name=inputs[0].name,
        input_shape=dims,
        output_names=tuple(out.name for out in model.graph.output),
        opset=_default_opset(model),
        info=info,
    )


class _NamingImporter:
    """Wraps TVM's ONNXGraphImporter so that a failing node is reported by name and op type."""

    def __init__(self, qdq: QdqModel):
        # The importer class is public in the module but not re-exported; importing it here keeps
        # the dependency in one place.
        from tvm.relax.frontend.onnx import onnx_frontend

        self._frontend = onnx_frontend
        self.qdq = qdq
        self.importer = onnx_frontend.ONNXGraphImporter(
            {qdq.input_name: list(qdq.input_shape)}, "float32", keep_params_in_input=False
        )

    def _check_supported(self) -> None:
        convert_map = self._frontend._get_convert_map()
        for node in self.qdq.model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise _fail(
                    self.qdq.path,
                    f"node {node.name!r} ({node.domain}::{node.op_type}) is a custom-domain operator "
                    "that TVM cannot import",
                )
            if node.op_type not in convert_map and node.op_type not in ("Constant", "If"):
                raise _fail(
                    self.qdq.path,
                    f"node {node.name!r} has op type {node.op_type}, "
                    "which TVM's ONNX importer does not support",
                )

    def run(self) -> tvm.IRModule:
        self._check_supported()
        importer = self.importer
        original = importer._convert_operator

        def convert_naming_node(op_name, inputs, attrs, opset):
            node_name = attrs.get("tvm_custom", {}).get("name", "?")
            try:
                return original(op_name, inputs, attrs, opset)
            except Exception as exc:
                message = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
                raise _fail(
                    self.qdq.path, f"TVM cannot import node {node_name!r} ({op_name}): {message}"
                ) from exc

        importer._convert_operator = convert_naming_node
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the importer warns about renamed identifiers
            try:
                return importer.from_onnx(self.qdq.model.graph, self.qdq.opset)
            except SegcompileError:
                raise
            except Exception as exc:
                raise _fail(self.qdq.path, f"TVM could not import the model: {exc}") from exc


def import_to_relax(qdq: QdqModel) -> RelaxImport:
    """Import ``qdq`` with TVM's ONNX frontend (params bound as constants, nothing folded yet).

    Raises :class:`SegcompileError` naming the node and op type when TVM cannot import a node.
    """
    wrapper = _NamingImporter(qdq)
    mod = wrapper.run()
    tensors = wrapper.importer._nodes

    value_to_var = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value_to_var[binding.value] = binding.var
    node_of_var: dict = {}
    compute_nodes = []
    for node in qdq.model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type == "Constant" or not node.output:
            continue
        expr = tensors.get(node.output[0])
        if expr is not None and any(
            expr.same_as(tensors.get(name)) for name in node.input if name in tensors
        ):
            continue  # an alias of its input (Identity, no-op reshape): no runtime work
        var = expr if isinstance(expr, relax.Var) else value_to_var.get(expr)
        if var is None or var in node_of_var:
            continue  # folded to a constant at import time (shape arithmetic): not a runtime op
        ref = NodeRef(name=node.name or node.output[0], op_type=node.op_type)
        node_of_var[var] = ref
        compute_nodes.append(ref)
    return RelaxImport(mod=mod, node_of_var=node_of_var, compute_nodes=tuple(compute_nodes))
