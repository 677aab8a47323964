"""The aarch64 library a board gets computes exactly what the x86_64 host build does (run under qemu).

If the cached sysroot (.cache/aarch64) is missing, the fixture runs scripts/setup-aarch64-sysroot.sh itself,
so this also runs on a fresh CI machine.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compile_nets import INPUT_SHAPE, qdq_model, smooth_inputs

from segcompile.compile.build import build_core, read_elf_header
from segcompile.compile.c_kernels import HostDspLibrary, compile_dsp_sources, emit_dsp_sources
from segcompile.compile.dsp_partition import partition_for_dsp
from segcompile.compile.host_runtime import HostModule, build_for_host
from segcompile.compile.import_qdq import import_qdq
from segcompile.compile.integer_lowering import lower_to_integer
from segcompile.compile.profiles import load_profile
from segcompile.compile.qemu import ensure_sysroot, run_dsp_c_under_qemu, run_under_qemu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sysroot():
    return ensure_sysroot()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qemu")
    path = qdq_model(folder / "int8.qdq.onnx")
    mod, _ = lower_to_integer(import_qdq(path))
    return folder, path, mod


@pytest.fixture(scope="module")
def runs(sysroot, model):
    """One image through the host build, the tda4vm A72 build under qemu, and onnxruntime on the QDQ model."""
    folder, path, mod = model
    host = HostModule(build_for_host(mod, folder / "host"))
    # What `segcompile compile --target tda4vm` ships for the A72: the program split at the DSP subgraphs.
    profile = load_profile("tda4vm")
    partitioned, _ = partition_for_dsp(mod, profile.accelerator_ops, profile.max_subgraphs)
    arm = build_core(partitioned, profile.cpu_core, folder / "a72")
    image = smooth_inputs(1, seed=7)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {
        "host": host(image),
        "aarch64": run_under_qemu(arm.library, [image], sysroot=sysroot)[0],
        "onnxruntime": session.run(None, {"input": image})[0],
        "output_scale": _output_scale(path),
    }


def _output_scale(path) -> float:
    """Scale of the DequantizeLinear that produces the graph output."""
    model = onnx.load(str(path))
    output = model.graph.output[0].name
    node = next(n for n in model.graph.node if output in n.output)
    assert node.op_type == "DequantizeLinear"
    scale = next(i for i in model.graph.initializer if i.name == node.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def test_aarch64_build_under_qemu_is_bit_identical_to_the_host_build(runs):
    assert runs["aarch64"].shape == runs["host"].shape
    assert runs["aarch64"].dtype == runs["host"].dtype == np.float32
    assert np.array_equal(runs["aarch64"], runs["host"])
    assert np.ptp(runs["host"]) > 0  # a real, non-constant output


def test_aarch64_build_is_within_one_lsb_of_onnxruntime(runs):
    scale = runs["output_scale"]
    ours = np.round(runs["aarch64"] / scale).astype(np.int64)
    theirs = np.round(runs["onnxruntime"] / scale).astype(np.int64)
    within = np.abs(ours - theirs) <= 1
    assert within.mean() >= 0.999


@pytest.fixture(scope="module")
def dsp_package(model):
    """The tda4vm DSP C package of the model, and the same C compiled by the host gcc."""
    folder, _, mod = model
    profile = load_profile("tda4vm")
    partitioned, _ = partition_for_dsp(mod, profile.accelerator_ops, profile.max_subgraphs)
    sources = emit_dsp_sources(partitioned, folder / "c7x")
    host = HostDspLibrary(compile_dsp_sources(folder / "c7x", folder / "dsp_x86_64.so"), sources)
    return folder, sources, host


def test_dsp_c_built_by_another_compiler_for_another_cpu_computes_the_same(sysroot, dsp_package):
    """Portability of the shipped C: aarch64 gcc + qemu gives exactly what x86_64 gcc gives."""
    folder, sources, host = dsp_package
    library = compile_dsp_sources(folder / "c7x", folder / "dsp_aarch64.so", compiler="aarch64-linux-gnu-gcc")
    assert read_elf_header(library).machine == 183
    rng = np.random.default_rng(11)
    for signature in sources.subgraphs:
        inputs = [_input_for(tensor, rng) for tensor in signature.inputs]
        ours = run_dsp_c_under_qemu(library, signature, inputs, sysroot=sysroot)
        expected = host(signature.function, inputs)
        for a, b in zip(ours, expected, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def _input_for(tensor, rng) -> np.ndarray:
    """A real image where a subgraph starts at the model input; full-range values elsewhere."""
    if tensor.shape == INPUT_SHAPE and tensor.dtype == "float32":
        return smooth_inputs(1, seed=5)[0]
    if tensor.dtype == "int8":
        return rng.integers(-128, 128, size=tensor.shape).astype(np.int8)
    return rng.standard_normal(tensor.shape).astype(tensor.dtype)


def test_dsp_c_compiles_for_a_32_bit_cpu(dsp_package):
    folder, _, _ = dsp_package
    library = compile_dsp_sources(folder / "c7x", folder / "dsp_armhf.so", compiler="arm-linux-gnueabihf-gcc")
    header = read_elf_header(library)
    assert header.machine == 40 and header.elf_class == 1
