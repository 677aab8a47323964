"""Split a Relax program between the ARM core and a C7x-like DSP, the way TI's flow does.

Operators the profile lists in ``accelerator_ops`` run on the DSP; everything else falls back to the ARM core.
Runs of consecutive DSP operators (in the program's binding order, which is a topological order, so every run
is a convex subgraph: no path leaves a run and re-enters it) become DSP subgraphs. A board's DSP runtime only
takes a bounded number of subgraphs (``max_subgraphs``): beyond that the smallest subgraphs fall back to the
ARM core, so the costliest parts stay on the accelerator.

The partitioned module keeps ``main`` on the ARM core and turns each subgraph into its own Relax function
``dsp_subgraph_<k>`` that ``main`` calls; the C kernels for the DSP are generated from those functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# ONNX operator name (what TI documents and users know) -> the Relax operators it becomes after import or
# after integer lowering. A profile may also name a Relax operator directly as "relax.<op>".
ONNX_TO_RELAX: dict[str, tuple[str, ...]] = {
    "Conv": ("relax.nn.conv1d", "relax.nn.conv2d"),
    "ConvTranspose": ("relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose"),
    "MatMul": ("relax.matmul",),
    "Gemm": ("relax.matmul", "relax.linear", "relax.add", "relax.permute_dims"),
    "Add": ("relax.add",),
    "Sub": ("relax.subtract",),
    "Mul": ("relax.multiply",),
    "Div": ("relax.divide", "relax.floor_divide"),
    "Relu": ("relax.nn.relu",),
    "LeakyRelu": ("relax.nn.leakyrelu", "relax.take"),
    "PRelu": ("relax.nn.prelu",),
    "Clip": ("relax.clip",),
    "Max": ("relax.maximum",),
    "Min": ("relax.minimum",),
    "Concat": ("relax.concat",),
    "Split": ("relax.split",),
    "Slice": ("relax.strided_slice",),
    # The integer lowering computes bilinear resize with index gathers (take) and integer weights.
    "Resize": ("relax.image.resize2d", "relax.take"),
    "AveragePool": ("relax.nn.avg_pool2d",),
    "GlobalAveragePool": ("relax.mean", "relax.nn.adaptive_avg_pool2d"),
    "MaxPool": ("relax.nn.max_pool2d",),
    "Pad": ("relax.nn.pad",),
    "BatchNormalization": ("relax.nn.batch_norm",),
    "Reshape": ("relax.reshape",),
    "Flatten": ("relax.reshape",),
    "Transpose": ("relax.permute_dims",),
    "Squeeze": ("relax.squeeze",),
    "Unsqueeze": ("relax.expand_dims",),
    "Cast": ("relax.astype",),
    "BitShift": ("relax.right_shift", "relax.left_shift"),
    "BitwiseAnd": ("relax.bitwise_and",),
    "BitwiseOr": ("relax.bitwise_or",),
    "Gather": ("relax.take",),
    "Round": ("relax.round",),
    "Floor": ("relax.floor",),
    "Where": ("relax.where",),
    "QuantizeLinear": ("relax.quantize",),
    "DequantizeLinear": ("relax.dequantize",),
    "ArgMax": ("relax.argmax",),
    # The integer lowering computes elementwise activations as 256-entry lookup tables (take).
    "Sigmoid": ("relax.sigmoid", "relax.take"),
    "HardSigmoid": ("relax.take",),
    "HardSwish": ("relax.take",),
    "Softmax": ("relax.nn.softmax",),
    "Tanh": ("relax.tanh", "relax.take"),
    "Exp": ("relax.exp",),
    "ReduceMean": ("relax.mean",),
    "ReduceSum": ("relax.sum",),
}

ARM = "arm"
DSP = "dsp"


def unknown_operator_names(names: Iterable[str]) -> list[str]:
    """The entries of a profile's ``accelerator_ops`` that name no known ONNX operator or Relax op."""
    unknown = []
    for name in names:
        if name in ONNX_TO_RELAX:
            continue
        if name.startswith("relax."):
            import tvm

            try:
                tvm.ir.Op.get(name)
                continue
            except Exception:  # TVM raises its own error type for an unregistered op
                pass
        unknown.append(name)
    return unknown


def accepted_relax_ops(accelerator_ops: Iterable[str]) -> frozenset[str]:
    """The set of Relax operator names a profile's ``accelerator_ops`` admits onto the DSP."""
    accepted: set[str] = set()
    for name in accelerator_ops:
        accepted.update(ONNX_TO_RELAX.get(name, (name,)))
    return frozenset(accepted)


@dataclass(frozen=True)
class Subgraph:
    """One DSP subgraph: consecutive bindings of ``main``."""

    index: int
    function: str
    first_binding: int
    num_ops: int
    op_counts: dict[str, int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class PartitionPlan:
    """Where every operator of ``main`` runs."""

    subgraphs: tuple[Subgraph, ...]
    arm_op_counts: dict[str, int]
    dsp_op_counts: dict[str, int]
    fallback_ops: dict[str, int] = field(
        default_factory=dict
    )  # supported, but sent back to ARM by max_subgraphs
    unsupported_ops: dict[str, int] = field(default_factory=dict)  # the DSP does not take them
    candidate_subgraphs: int = 0

    def to_dict(self) -> dict:
        """JSON view for compile.json."""
        return {
            "candidate_subgraphs": self.candidate_subgraphs,
            "subgraphs": [
                {
                    "index": s.index,
                    "function": s.function,
                    "num_ops": s.num_ops,
                    "op_counts": dict(sorted(s.op_counts.items())),
                    "inputs": list(s.inputs),
                    "outputs": list(s.outputs),
                }
                for s in self.subgraphs
            ],
            "op_counts": {
                "arm": dict(sorted(self.arm_op_counts.items())),
                "dsp": dict(sorted(self.dsp_op_counts.items())),
            },
            "fallback_ops": dict(sorted(self.fallback_ops.items())),
            "unsupported_ops": dict(sorted(self.unsupported_ops.items())),
        }


def _op_name(value) -> str | None:
    """The Relax operator a binding calls, or None for tuples, constants, and calls to functions."""
    import tvm
    from tvm import relax

    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _count(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _free_vars(expr) -> list:
    from tvm import relax

    return list(relax.analysis.free_vars(expr))


def partition_for_dsp(mod, accelerator_ops: Iterable[str], max_subgraphs: int):
    """Split ``mod['main']`` into ARM bindings and at most ``max_subgraphs`` DSP subgraph functions.

    Returns ``(partitioned_module, PartitionPlan)``. The partitioned module computes exactly what ``mod``
    computed (same operators, same order); only the function boundaries differ.
    """
    from tvm import relax

    accepted = accepted_relax_ops(accelerator_ops)
    main_gv = mod.get_global_var("main")
    main = mod[main_gv]
    body = main.body
    if not isinstance(body, relax.SeqExpr):
        body = relax.SeqExpr([], body)
    bindings = [b for block in body.blocks for b in block.bindings]
    dataflow = bool(body.blocks) and all(isinstance(block, relax.DataflowBlock) for block in body.blocks)

    # 1. Which bindings could run on the DSP. Tuples, tuple items and aliases are free glue.
    eligible = []
    for binding in bindings:
        op = _op_name(binding.value) if isinstance(binding, relax.VarBinding) else None
        if op is not None:
            eligible.append(op in accepted)
        else:
            glue = isinstance(binding, relax.VarBinding) and isinstance(
                binding.value, relax.Tuple | relax.TupleGetItem | relax.Var
            )
            eligible.append(glue)

    # 2. Maximal runs of eligible bindings containing at least one real operator.
    runs: list[list[int]] = []
    current: list[int] = []
    for index, ok in enumerate(eligible + [False]):
        if ok:
            current.append(index)
            continue
        if any(_op_name(bindings[i].value) for i in current):
            runs.append(current)
        current = []
    candidate_count = len(runs)

    # 3. Keep the largest max_subgraphs runs on the DSP (ties: earlier first); the rest fall back to ARM.
    ranked = sorted(
        range(len(runs)), key=lambda r: (-sum(_op_name(bindings[i].value) is not None for i in runs[r]), r)
    )
    kept = sorted(ranked[:max_subgraphs])
    fallback_runs = [runs[r] for r in ranked[max_subgraphs:]]
    runs = [runs[r] for r in kept]

    # 4. For each run: inputs (vars defined outside, in first-use order) and outputs (vars used later).
    run_of: dict[int, int] = {i: r for r, run in enumerate(runs) for i in run}
    used_after: dict[int, set] = {}
    later_uses: set = set()
    final_free = set(_free_vars(body.body))
    for index in range(len(bindings) - 1, -1, -1):
        used_after[index] = set(later_uses)
        later_uses.update(_free_vars(bindings[index].value))
    later_uses = set()

    bb = relax.BlockBuilder()
    subgraphs: list[Subgraph] = []
    sub_gvs = []
    run_io: list[tuple[list, list]] = []
    for r, run in enumerate(runs):
        defined = [bindings[i].var for i in run]
        defined_set = set(defined)
        inputs: list = []
        for i in run:
            for var in _free_vars(bindings[i].value):
                if var not in defined_set and var not in inputs:
                    inputs.append(var)
        after = used_after[run[-1]] | final_free
        outputs = [var for var in defined if var in after]
        run_io.append((inputs, outputs))
        name = f"dsp_subgraph_{r}"
        params = [relax.Var(var.name, var.ty) for var in inputs]
        vmap = dict(zip(inputs, params, strict=True))
        with bb.function(name, params):
            with bb.dataflow():
                for i in run:
                    vmap[bindings[i].var] = bb.emit(
                        _substitute(bindings[i].value, vmap), bindings[i].var.name
                    )
                results = [vmap[var] for var in outputs]
                out = bb.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
            bb.emit_func_output(out)
        sub_gvs.append(bb.get().get_global_var(name))
        ops = [_op_name(bindings[i].value) for i in run if _op_name(bindings[i].value)]
        subgraphs.append(
            Subgraph(
                index=r,
                function=name,
                first_binding=run[0],
                num_ops=len(ops),
                op_counts=_count(ops),
                inputs=tuple(v.name for v in inputs),
                outputs=tuple(v.name for v in outputs),
            )
        )

    # 5. The new main: ARM bindings as before, each subgraph replaced by a call to its function.
    new_params = [relax.Var(p.name, p.ty) for p in main.params]
    vmap = dict(zip(main.params, new_params, strict=True))
    starts = {run[0]: r for r, run in enumerate(runs)}
    with bb.function("main", new_params, attrs=dict(main.attrs) if main.attrs else None):
        frame = bb.dataflow() if dataflow else _NullFrame()
        with frame:
            for index, binding in enumerate(bindings):
                if index in starts:
                    r = starts[index]
                    sub = subgraphs[r]
                    inputs, outs = run_io[r]
                    result = bb.emit(relax.Call(sub_gvs[r], [vmap[v] for v in inputs]), f"{sub.function}_out")
                    if len(outs) == 1:
                        vmap[outs[0]] = result
                    else:
                        for j, var in enumerate(outs):
                            vmap[var] = bb.emit(relax.TupleGetItem(result, j), var.name)
                    continue
                if index in run_of:
                    continue
                value = _substitute(binding.value, vmap)
                vmap[binding.var] = bb.emit(value, binding.var.name)
            out_expr = _substitute(body.body, vmap)
            if dataflow:
                out_expr = bb.emit_output(out_expr)
        bb.emit_func_output(out_expr)
    built = bb.get()

    # clone() keeps the module's attributes and global infos; only main changes and the subgraphs are added.
    new_mod = mod.clone()
    new_mod[main_gv] = built["main"]
    for gv in sub_gvs:
        new_mod[gv] = built[gv]  # the same GlobalVar object main calls, so the VM links the call

    dsp_indices = set(run_of)
    fallback_indices = {i for run in fallback_runs for i in run}
    arm_ops = [
        _op_name(b.value) for i, b in enumerate(bindings) if i not in dsp_indices and _op_name(b.value)
    ]
    plan = PartitionPlan(
        subgraphs=tuple(subgraphs),
        arm_op_counts=_count(arm_ops),
        dsp_op_counts=_count(op for s in subgraphs for op in _expand(s.op_counts)),
        fallback_ops=_count(
            _op_name(bindings[i].value) for i in fallback_indices if _op_name(bindings[i].value)
        ),
        unsupported_ops=_count(
            _op_name(b.value) for i, b in enumerate(bindings) if not eligible[i] and _op_name(b.value)
        ),
        candidate_subgraphs=candidate_count,
    )
    return new_mod, plan


def _expand(counts: dict[str, int]) -> Iterable[str]:
    for name, count in counts.items():
        yield from [name] * count


class _NullFrame:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _substitute(expr, vmap: dict):
    """``expr`` with every variable in ``vmap`` replaced (expressions are immutable: rebuild the tree)."""
    from tvm import relax

    if isinstance(expr, relax.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(field_, vmap) for field_ in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_substitute(expr.tuple_value, vmap), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [_substitute(arg, vmap) for arg in expr.args], expr.attrs, expr.ty_args)
    return expr


def subgraph_module(partitioned_mod):
    """Only the DSP subgraph functions, each public: the LLVM reference the C is checked against."""
    import tvm

    return tvm.IRModule(
        {
            gv: partitioned_mod[gv]
            for gv in partitioned_mod.get_global_vars()
            if gv.name_hint.startswith("dsp_subgraph_")
        }
    )


def relax_op_counts(mod) -> dict[str, int]:
    """How often ``mod["main"]`` calls each Relax operator (what a core running the whole program runs)."""
    from tvm import relax

    body = mod["main"].body
    blocks = body.blocks if isinstance(body, relax.SeqExpr) else []
    names = [_op_name(b.value) for block in blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    return dict(sorted(_count(name for name in names if name).items()))
