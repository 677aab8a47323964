"""Quantization-aware training: fake quantization that matches a :class:`QuantScheme` exactly.

``prepare_qat`` traces a plain-torch model with torch.export (an ATen-level torch.fx graph; shapes are
specialized, so code like ``x.shape[-2:]`` traces), folds each Conv2d/ConvTranspose2d (+BatchNorm2d)
(+ReLU/ReLU6/Clip) into one :class:`QConvBnAct` (BN folded into the conv weights, weights fake-quantized
per channel or per tensor, bias rounded to the int32 grid at s_in*s_w, activation applied before the
output quantizer) and inserts activation fake-quantizers on exactly the tensors the QDQ writer quantizes
(plan.py's rules: elementwise activations, Mul and unfused BatchNorm included; SiLU is split into
x * sigmoid(x) because its ONNX export is Sigmoid + Mul, two quantized tensors). A grouped ConvTranspose
stays float, as in plan.py. torch.fake_quantize_* ops are used because torch.ao's fused QAT modules do not
export.

``export_qat_onnx`` writes the fine-tuned model as QDQ ONNX; ``segcompile quantize`` then keeps its ranges.
"""

from __future__ import annotations

import copy
import operator
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import fx, nn

from segcompile.artifacts import write_bytes_atomic
from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo, attach_model_info
from segcompile.quantize.scheme import QuantScheme, activation_qparams, unsigned_variant

DEFAULT_MOMENTUM = 0.01


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake-quantizer with an EMA min/max observer (frozen in eval mode)."""

    def __init__(self, scheme: QuantScheme, momentum: float = DEFAULT_MOMENTUM) -> None:
        super().__init__()
        self.scheme = scheme
        self.momentum = momentum
        self.qmin, self.qmax = scheme.activation_qrange
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False
        # EMA while training; observe_qat switches to a plain running min/max to initialize ranges.
        self.running_minmax = False
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync())

    def _sync(self) -> None:
        self._ready = bool(self.initialized)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self._ready and self.running_minmax:
            lo, hi = min(lo, float(self.min_val)), max(hi, float(self.max_val))
        elif self._ready:
            lo = float(self.min_val) + self.momentum * (lo - float(self.min_val))
            hi = float(self.max_val) + self.momentum * (hi - float(self.max_val))
        self.min_val.fill_(lo)
        self.max_val.fill_(hi)
        # The same arithmetic as post-training calibration, so QAT and PTQ grids agree.
        qp = activation_qparams(lo, hi, self.scheme)
        self.scale.fill_(float(qp.scale))
        self.zero_point.fill_(int(qp.zero_point))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x.detach())
        if not self._ready:
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


def _pow2_ceil(scale: torch.Tensor) -> torch.Tensor:
    log = torch.log2(scale)
    exact = (log - torch.round(log)).abs() < 1e-6
    return torch.exp2(torch.where(exact, torch.round(log), torch.ceil(log)))


class QConvBnAct(nn.Module):
    """Conv2d (or ConvTranspose2d) with BatchNorm folded in, fake-quantized weights and bias, then ReLU/Clip.

    ``conv_args`` is (stride, padding, dilation, groups) plus, when ``transposed``, output_padding.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conv_args: tuple,
        bn: dict[str, torch.Tensor | float] | None,
        clip: tuple[float, float] | None,
        scheme: QuantScheme,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        weight = weight.detach().clone().float()
        # Output channels sit on axis 1 of a ConvTranspose weight (C_in, C_out, kh, kw).
        self.axis = 1 if transposed else 0
        out_channels = weight.shape[self.axis]
        bias = bias.detach().clone().float() if bias is not None else torch.zeros(out_channels)
        channel_shape = [1, 1, 1, 1]
        channel_shape[self.axis] = -1
        if bn is not None:
            # BN folded with its running statistics: the deployed conv, so fake-quant sees deployed weights.
            std = torch.sqrt(bn["running_var"] + bn["eps"])
            gamma = bn["weight"] if bn["weight"] is not None else torch.ones_like(std)
            beta = bn["bias"] if bn["bias"] is not None else torch.zeros_like(std)
            weight = weight * (gamma / std).reshape(channel_shape)
            bias = beta + (bias - bn["running_mean"]) * gamma / std
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv_args[:4]
        self.output_padding = conv_args[4] if transposed else None
        self.transposed = transposed
        self.clip = clip
        self.scheme = scheme

    def weight_scale(self) -> torch.Tensor:
        w = self.weight.detach()
        dims = (1, 2, 3) if self.axis == 0 else (0, 2, 3)
        amax = w.abs().amax(dim=dims) if self.scheme.per_channel else w.abs().max().reshape(1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        return _pow2_ceil(scale) if self.scheme.power_of_2 else scale

    def forward(self, x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
        scale = self.weight_scale()
        if self.scheme.per_channel:
            zeros = torch.zeros(scale.shape, dtype=torch.int32)
            # [-128, 127] is what the exporter accepts; |w| <= 127 * scale so -128 is never produced.
            weight = torch.fake_quantize_per_channel_affine(self.weight, scale, zeros, self.axis, -128, 127)
        else:
            weight = torch.fake_quantize_per_tensor_affine(
                self.weight, scale[0], torch.zeros((), dtype=torch.int32), -128, 127
            )
        bias_scale = (input_scale * scale).detach()
        # int32 bias grid at s_in*s_w, straight-through gradient (the range never saturates int32).
        bias = self.bias + (torch.round(self.bias / bias_scale) * bias_scale - self.bias).detach()
        if self.transposed:
            y = F.conv_transpose2d(
                x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
            )
        else:
            y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.clip is not None:
            lo, hi = self.clip
            y = F.relu(y) if (lo, hi) == (0.0, float("inf")) else torch.clamp(y, lo, hi)
        return y


# ---------------------------------------------------------------------------------------------------------
# Graph rewriting on the ATen graph of torch.export: it specializes shapes (x.shape arithmetic in the zoo's
# forward would defeat torch.fx symbolic tracing) and reduces every model to the same small op set.

_aten = torch.ops.aten
_CONV = {_aten.conv2d.default}
_CONV_TRANSPOSE = {_aten.conv_transpose2d.input}
_BN = {_aten.batch_norm.default, _aten._native_batch_norm_legit_no_training.default}
_ACT = {
    _aten.relu.default,
    _aten.relu_.default,
    _aten.hardtanh.default,
    _aten.hardtanh_.default,
    _aten.clamp.default,
    _aten.clamp_.default,
}
_ADD = {_aten.add.Tensor, _aten.add_.Tensor}
# Sub in plan.py: quantized like Add, never structurally non-negative.
_SUB = {_aten.sub.Tensor, _aten.sub_.Tensor, _aten.rsub.Scalar, _aten.rsub.Tensor}
_CAT = {_aten.cat.default}
_SHARED = {
    _aten.upsample_bilinear2d.vec,
    _aten.upsample_bilinear2d.default,
    _aten.upsample_nearest2d.vec,
    _aten.upsample_nearest2d.default,
    _aten.max_pool2d.default,
    _aten.pad.default,
    _aten.constant_pad_nd.default,
    _aten.view.default,
    _aten.reshape.default,
    _aten._unsafe_view.default,
    _aten.flatten.using_ints,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.squeeze.dim,
    _aten.unsqueeze.default,
    _aten.pixel_shuffle.default,
}
_AVG = {
    _aten.adaptive_avg_pool2d.default,
    _aten.avg_pool2d.default,
    _aten.mean.dim,
    _aten._adaptive_avg_pool2d.default,
}
# plan.ELEMENTWISE_ACTIVATIONS: one input, own range (an int8 lookup table after lowering).
_ELEMENTWISE = {
    _aten.sigmoid.default,
    _aten.sigmoid_.default,
    _aten.hardsigmoid.default,
    _aten.hardsigmoid_.default,
    _aten.hardswish.default,
    _aten.hardswish_.default,
    _aten.tanh.default,
    _aten.tanh_.default,
    _aten.leaky_relu.default,
    _aten.leaky_relu_.default,
}
# plan.NONNEGATIVE_ACTIVATIONS
_NONNEGATIVE_ELEMENTWISE = {
    _aten.sigmoid.default,
    _aten.sigmoid_.default,
    _aten.hardsigmoid.default,
    _aten.hardsigmoid_.default,
}
_MUL = {_aten.mul.Tensor, _aten.mul_.Tensor}
_SILU = {_aten.silu.default, _aten.silu_.default}
_TRANSPARENT = {
    _aten.dropout.default,
    _aten.feature_dropout.default,
    _aten.clone.default,
    _aten.contiguous.default,
    _aten.alias.default,
}


def _fetch(gm: nn.Module, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _const(gm: nn.Module, arg) -> torch.Tensor | None:
    if arg is None:
        return None
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return _fetch(gm, arg.target).detach()
    raise SegcompileError(f"QAT: expected a parameter, got {arg}")


def _clip_of(node: fx.Node) -> tuple[float, float] | None:
    """(lo, hi) when ``node`` is a ReLU/ReLU6/Hardtanh/clamp with constant bounds, else None."""
    if node.op != "call_function" or node.target not in _ACT:
        return None
    if node.target in (_aten.relu.default, _aten.relu_.default):
        return (0.0, float("inf"))
    defaults = (
        (-1.0, 1.0) if node.target in (_aten.hardtanh.default, _aten.hardtanh_.default) else (None, None)
    )
    lo = (
        node.args[1]
        if len(node.args) > 1
        else node.kwargs.get("min", node.kwargs.get("min_val", defaults[0]))
    )
    hi = (
        node.args[2]
        if len(node.args) > 2
        else node.kwargs.get("max", node.kwargs.get("max_val", defaults[1]))
    )
    if isinstance(lo, int | float) and (hi is None or isinstance(hi, int | float)):
        return (float(lo), float("inf") if hi is None else float(hi))
    return None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fuse_convs(gm: fx.GraphModule, scheme: QuantScheme) -> None:
    graph = gm.graph
    for index, node in enumerate(list(graph.nodes)):
        if node.op != "call_function" or node.target not in _CONV | _CONV_TRANSPOSE:
            continue
        transposed = node.target in _CONV_TRANSPOSE
        if transposed:
            args = list(node.args) + [None] * (8 - len(node.args))
            x, w, b, stride, padding, output_padding, groups, dilation = args
        else:
            args = list(node.args) + [None] * (7 - len(node.args))
            x, w, b, stride, padding, dilation, groups = args
            output_padding = None
        if isinstance(padding, str):
            raise SegcompileError(f"QAT: conv {node.name} uses padding={padding!r}; use explicit padding")
        if transposed and (groups or 1) != 1:
            continue  # stays float (plan.is_quantizable): no per-channel axis fits its weight

        def pair(value, default):
            if value is None:
                return (default, default)
            return tuple(value) if isinstance(value, list | tuple) else (value, value)

        conv_args = (
            pair(stride, 1),
            pair(padding, 0),
            pair(dilation, 1),
            groups or 1,
            pair(output_padding, 0),
        )
        chain, bn, clip, last = [node], None, None, node
        user = _single_user(last)
        if user is not None and user.target in _BN:
            bn_args = list(user.args)
            if user.target == _aten.batch_norm.default:
                _, bw, bb, rm, rv, _training, _momentum, eps = bn_args[:8]
            else:
                _, bw, bb, rm, rv, _momentum, eps = bn_args[:7]
            bn = {
                "weight": _const(gm, bw),
                "bias": _const(gm, bb),
                "running_mean": _const(gm, rm),
                "running_var": _const(gm, rv),
                "eps": float(eps),
            }
            last = user
            chain.append(last)
            if user.target != _aten.batch_norm.default:
                item = _single_user(user)
                if item is None or item.target is not operator.getitem:
                    raise SegcompileError(f"QAT: unexpected batch norm outputs at {user.name}")
                last = item
                chain.append(item)
            user = _single_user(last)
        if user is not None and _clip_of(user) is not None and user.args[0] is last:
            clip = _clip_of(user)
            last = user
            chain.append(last)
        fused = QConvBnAct(_const(gm, w), _const(gm, b), conv_args, bn, clip, scheme, transposed)
        name = f"conv{index}_qat"
        gm.add_submodule(name, fused)
        with graph.inserting_after(last):
            new = graph.call_module(name, (x,))
        last.replace_all_uses_with(new)
        for old in reversed(chain):
            graph.erase_node(old)


def _split_silu(gm: fx.GraphModule) -> None:
    """x * sigmoid(x) in place of SiLU: the ONNX export is Sigmoid + Mul, and both outputs are quantized."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SILU:
            continue
        with graph.inserting_before(node):
            gate = graph.call_function(_aten.sigmoid.default, (node.args[0],))
            product = graph.call_function(_aten.mul.Tensor, (node.args[0], gate))
        node.replace_all_uses_with(product)
        graph.erase_node(node)


def _is_activation(arg) -> bool:
    return isinstance(arg, fx.Node) and arg.op != "get_attr"


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """conv | act | add | mul | bn | cat | shared | range | transparent | float | other, mirroring plan.py."""
    if node.op == "call_module":
        return "conv" if isinstance(modules.get(node.target), QConvBnAct) else "float"
    if node.op != "call_function":
        return "other"
    target = node.target
    if target in _ACT:
        return "act" if _clip_of(node) is not None else "float"
    if target in _ADD | _SUB:
        # An Add/Sub with a constant is quantized too (plan.py): its ONNX node is Add/Sub(x, const).
        return "add" if any(_is_activation(a) for a in node.args[:2]) else "float"
    if target in _MUL:
        # Mul by a constant is quantized too (plan.py); only a product of two constants is not an activation.
        return "mul" if any(_is_activation(a) for a in node.args[:2]) else "float"
    if target == _aten.batch_norm.default:
        # Unfused BN (after a Concat or an Add; _fuse_convs took those after a conv); eval mode only.
        training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
        return "bn" if not training else "float"
    if target in _ELEMENTWISE:
        return "range"
    for kind, ops in (("cat", _CAT), ("shared", _SHARED), ("range", _AVG), ("transparent", _TRANSPARENT)):
        if target in ops:
            return kind
    return "float"


def _activation_nodes(node_args) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(a):
        if isinstance(a, fx.Node):
            if a.op != "get_attr":
                found.append(a)
        elif isinstance(a, list | tuple):
            for b in a:
                visit(b)

    visit(node_args)
    return found


def _insert_quantizers(gm: fx.GraphModule, scheme: QuantScheme, momentum: float) -> None:
    graph = gm.graph
    modules = dict(gm.named_modules())
    kinds = {n: _kind(n, modules) for n in graph.nodes}
    quantizable = {"conv", "act", "add", "mul", "bn", "cat", "shared", "range"}
    output_node = next(n for n in graph.nodes if n.op == "output")
    graph_outputs = set(_activation_nodes(output_node.args))

    def alias(node: fx.Node) -> fx.Node:
        # Dropout/clone vanish in the exported ONNX graph: their output is their input.
        while kinds.get(node) == "transparent":
            node = node.args[0]
        return node

    def data_inputs(node: fx.Node) -> list[fx.Node]:
        if kinds[node] in ("conv", "act", "shared", "range", "bn"):
            return [alias(node.args[0])]
        if kinds[node] == "cat":
            return [alias(a) for a in _activation_nodes(node.args[0])]
        return [alias(a) for a in _activation_nodes(node.args[:2])]

    def real_users(node: fx.Node) -> list[fx.Node]:
        users = []
        for u in node.users:
            users.extend(real_users(u) if kinds.get(u) == "transparent" else [u])
        return users

    def folded(node: fx.Node) -> bool:
        users = real_users(node)
        return (
            kinds[node] in ("add", "mul", "bn")
            and node not in graph_outputs
            and len(users) == 1
            and kinds[users[0]] == "act"
            and alias(users[0].args[0]) is node
        )

    wanted: list[fx.Node] = []
    for node in graph.nodes:
        if kinds[node] not in quantizable:
            continue
        for inp in data_inputs(node):
            if inp not in wanted and not folded(inp):
                wanted.append(inp)
        if not folded(node) and node not in wanted:
            wanted.append(node)

    quantizer_of: dict[fx.Node, str] = {}  # tensor -> name of the ActFakeQuant holding its (root) range
    replacement: dict[fx.Node, fx.Node] = {}
    order = {n: i for i, n in enumerate(graph.nodes)}
    # Resolved before any rewiring: after it, a node's argument is its input's quantizer.
    shared_source = {n: data_inputs(n)[0] for n in wanted if kinds[n] == "shared"}
    # Mirrors plan.py's structural non-negativity, for schemes that store those tensors as uint8.
    nonnegative: set[fx.Node] = set()
    for node in graph.nodes:
        kind = kinds[node]
        if kind == "conv":
            clip = modules[node.target].clip
            if clip is not None and clip[0] >= 0:
                nonnegative.add(node)
        elif kind == "act" and _clip_of(node)[0] >= 0:
            nonnegative.add(node)
        elif kind == "range" and node.target in _NONNEGATIVE_ELEMENTWISE:
            nonnegative.add(node)
        elif kind == "mul" and _nonnegative_product(gm, node, nonnegative, alias):
            nonnegative.add(node)
        elif kind == "add":
            # plan.py: a sum of non-negative activations (a constant term or a Sub makes no promise).
            if node.target in _ADD and all(
                _is_activation(a) and alias(a) in nonnegative for a in node.args[:2]
            ):
                nonnegative.add(node)
        elif kind in ("shared", "cat") or (kind == "range" and node.target in _AVG):
            if all(i in nonnegative for i in data_inputs(node)) and not _negative_pad(node):
                nonnegative.add(node)
        elif kind == "transparent" and alias(node) in nonnegative:
            nonnegative.add(node)
    for node in sorted(wanted, key=order.__getitem__):
        src = shared_source.get(node)
        if src is not None and src in quantizer_of:
            root = quantizer_of[src]
            with graph.inserting_after(node):
                scale = graph.get_attr(f"{root}.scale")
            with graph.inserting_after(scale):
                zp = graph.get_attr(f"{root}.zero_point")
            root_module = gm.get_submodule(root)
            with graph.inserting_after(zp):
                q = graph.call_function(
                    torch.fake_quantize_per_tensor_affine,
                    (node, scale, zp, root_module.qmin, root_module.qmax),
                )
            quantizer_of[node] = root
        else:
            name = f"{node.name}_aq"
            unsigned = scheme.unsigned_activations and node in nonnegative
            gm.add_submodule(name, ActFakeQuant(unsigned_variant(scheme) if unsigned else scheme, momentum))
            with graph.inserting_after(node):
                q = graph.call_module(name, (node,))
            quantizer_of[node] = name
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
        replacement[node] = q

    # Each fused conv learns its input scale for the int32 bias grid.
    for node in list(graph.nodes):
        if kinds.get(node) != "conv":
            continue
        src = node.args[0]
        while True:
            original = next((t for t, q in replacement.items() if q is src), None)
            if original is not None or kinds.get(src) != "transparent":
                break
            src = src.args[0]
        root = quantizer_of.get(original) if original is not None else None
        if root is None:
            raise SegcompileError(f"QAT: conv {node.target!r} has an unquantized input")
        with graph.inserting_before(node):
            scale = graph.get_attr(f"{root}.scale")
        node.args = (node.args[0], scale)


def _nonnegative_product(gm: fx.GraphModule, node: fx.Node, nonnegative: set, alias) -> bool:
    """plan.py's rule for Mul: every activation factor non-negative and every constant factor >= 0."""
    for arg in node.args[:2]:
        if _is_activation(arg):
            if alias(arg) not in nonnegative:
                return False
        elif isinstance(arg, fx.Node):
            if bool((_fetch(gm, arg.target) < 0).any()):
                return False
        elif not isinstance(arg, int | float) or arg < 0:
            return False
    return True


def _negative_pad(node: fx.Node) -> bool:
    """plan.py's rule: a constant pad with a fill value below 0 can make a non-negative tensor negative."""
    if node.target not in (_aten.pad.default, _aten.constant_pad_nd.default):
        return False
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if node.target == _aten.constant_pad_nd.default:
        mode, value = "constant", node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)
    else:
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return mode == "constant" and value is not None and float(value) < 0


def prepare_qat(
    model: nn.Module,
    scheme: QuantScheme,
    input_shape: tuple[int, int, int, int] | None = None,
    momentum: float = DEFAULT_MOMENTUM,
) -> fx.GraphModule:
    """A trainable copy of ``model`` with fake quantization matching ``scheme``.

    BatchNorm is folded into the preceding conv (its running statistics become the conv's weights and
    bias, trained from there on). Activation ranges are EMA-observed in train mode and frozen in eval mode:
    run a few batches in train mode (or :func:`observe_qat`) before evaluating. ``input_shape`` is the
    training crop (N is free; H and W are fixed because the graph is traced by torch.export); it defaults
    to the model's ``input_shape`` attribute. The input model is not modified.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            # Resize sizes are baked in at this shape: guessing one would silently break other sizes.
            raise SegcompileError("prepare_qat: give input_shape, the training crop (e.g. (1, 3, 128, 160))")
    if len(tuple(input_shape)) != 4:
        raise SegcompileError(f"prepare_qat: input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    input_shape = tuple(int(v) for v in input_shape)
    source = copy.deepcopy(model).eval()
    try:
        exported = torch.export.export(source, (torch.zeros(tuple(input_shape)),))
    except Exception as exc:  # torch.export raises many error types for unsupported code
        raise SegcompileError(f"QAT: cannot trace {type(model).__name__} with torch.export ({exc})") from exc
    traced = exported.module()
    graph = traced.graph
    for node in list(graph.nodes):
        # Shape guards of the exported program would pin the batch size to the example's.
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    _fuse_convs(traced, scheme)
    _split_silu(traced)
    graph.eliminate_dead_code()
    _insert_quantizers(traced, scheme, momentum)
    graph.lint()
    # A plain GraphModule: the exported module forbids train() and keeps only what the graph references.
    gm = fx.GraphModule(traced, graph, class_name="QATModel")
    gm.qat_scheme = scheme
    gm.qat_input_shape = tuple(input_shape)
    return gm


def observe_qat(qat_model: nn.Module, inputs: Iterable[torch.Tensor | np.ndarray]) -> int:
    """Set activation ranges to the running min/max over ``inputs`` (no training); returns batches seen.

    Use it once before fine-tuning so that training starts from post-training-calibration ranges; the
    EMA observers take over afterwards.
    """
    quantizers = [m for m in qat_model.modules() if isinstance(m, ActFakeQuant)]
    was_training = qat_model.training
    qat_model.train()
    for quantizer in quantizers:
        quantizer.running_minmax = True
    count = 0
    try:
        with torch.no_grad():
            for batch in inputs:
                x = (
                    torch.from_numpy(np.asarray(batch, dtype=np.float32))
                    if isinstance(batch, np.ndarray)
                    else batch
                )
                qat_model(x)
                count += 1
    finally:
        for quantizer in quantizers:
            quantizer.running_minmax = False
        qat_model.train(was_training)
    return count


def export_qat_onnx(
    qat_model: nn.Module,
    out_path: Path,
    input_shape: tuple[int, int, int, int] | None = None,
    model_info: ModelInfo | None = None,
) -> Path:
    """Export a prepared (and fine-tuned) QAT model as QDQ ONNX that onnxruntime runs.

    Activation ranges become QuantizeLinear/DequantizeLinear pairs, weights int8 behind DequantizeLinear;
    ``segcompile quantize`` on this file keeps those ranges.
    """
    import onnxsim  # heavy import, only needed here

    unready = [n for n, m in qat_model.named_modules() if isinstance(m, ActFakeQuant) and not m._ready]
    if unready:
        raise SegcompileError(
            f"QAT model has {len(unready)} activation quantizer(s) without a range (e.g. {unready[0]}); "
            "train or run observe_qat first"
        )
    qat_model = qat_model.eval()
    shape = input_shape or getattr(qat_model, "qat_input_shape", None)
    if shape is None:
        raise SegcompileError("export_qat_onnx: input_shape is required for a model not made by prepare_qat")
    example = torch.zeros(tuple(shape), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "qat.onnx"
        torch.onnx.export(
            qat_model,
            (example,),
            str(raw),
            dynamo=True,
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            verbose=False,
        )
        model = onnx.load(str(raw))
    model, ok = onnxsim.simplify(model)
    if not ok:
        raise SegcompileError("QAT export: onnxsim could not validate the simplified model")
    if model_info is not None:
        attach_model_info(model, model_info)
    onnx.checker.check_model(model)
    return write_bytes_atomic(Path(out_path), model.SerializeToString())
