"""Per-core builds of a real integer program: cross-linked libraries of the right ELF machine, the DSP
partition, its C99 package compiled by the host gcc and checked against TVM's LLVM build, compile.json,
atomic writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from click.testing import CliRunner
from compile_nets import qdq_model, smooth_inputs
from tvm import relax

from segcompile.artifacts import sha256_file
from segcompile.cli import main
from segcompile.compile.build import build_core
from segcompile.compile.c_kernels import HostDspLibrary, compile_dsp_sources, emit_dsp_sources
from segcompile.compile.dsp_partition import partition_for_dsp, subgraph_module
from segcompile.compile.host_runtime import compile_relax, host_target
from segcompile.compile.import_qdq import import_qdq
from segcompile.compile.integer_lowering import lower_to_integer
from segcompile.compile.profiles import list_profiles, load_profile
from segcompile.compile.stage import CompileConfig, run_compile
from segcompile.errors import SegcompileError

ELF_MACHINE = {"x86_64-linux-gnu": (62, 2), "aarch64-linux-gnu": (183, 2), "arm-linux-gnueabihf": (40, 1)}


def _elf_machine_and_class(path: Path) -> tuple[int, int]:
    """Read e_machine / EI_CLASS straight from the bytes (independent of segcompile's own ELF reader)."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little"), head[4]


@pytest.fixture(scope="module")
def qdq_path(tmp_path_factory) -> Path:
    return qdq_model(tmp_path_factory.mktemp("model") / "int8.qdq.onnx")


@pytest.fixture(scope="module")
def integer_module(qdq_path):
    mod, report = lower_to_integer(import_qdq(qdq_path))
    return mod


@pytest.fixture(scope="module")
def minimal_qdq_path(tmp_path_factory) -> Path:
    return qdq_model(tmp_path_factory.mktemp("minimal") / "int8.qdq.onnx", minimal=True)


@pytest.fixture(scope="module")
def minimal_module(minimal_qdq_path):
    """conv -> relu -> conv as an integer program: the cheapest real build, one per target triple/CPU."""
    mod, report = lower_to_integer(import_qdq(minimal_qdq_path))
    assert report.all_integer("Conv")
    return mod


def _distinct_cpu_cores():
    """One core per distinct (triple, cpu, features, float ABI) among the shipped profiles."""
    seen = {}
    for name in list_profiles():
        core = load_profile(name).cpu_core
        seen.setdefault((core.triple, core.mcpu, core.mattr, core.mfloat_abi), (name, core))
    return sorted(seen.values(), key=lambda item: item[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("profile_name", "core"), _distinct_cpu_cores(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_distinct_cpu_target_links_a_library_of_its_elf_machine(
    minimal_module, tmp_path, profile_name, core
):
    build = build_core(minimal_module, core, tmp_path)
    assert build.library == tmp_path / "model.so" and build.library.is_file()
    assert _elf_machine_and_class(build.library) == ELF_MACHINE[core.triple]
    assert build.elf_machine == ELF_MACHINE[core.triple][0]
    assert build.size_bytes == build.library.stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_a_library_build_is_byte_identical_when_repeated(minimal_module, tmp_path):
    core = load_profile("tda4vm").cpu_core
    first = build_core(minimal_module, core, tmp_path / "first")
    second = build_core(minimal_module, core, tmp_path / "second")
    assert sha256_file(first.library) == sha256_file(second.library)


def test_all_three_triples_are_covered_by_the_shipped_profiles():
    assert {core.triple for _, core in _distinct_cpu_cores()} == set(ELF_MACHINE)


@pytest.fixture(scope="module")
def tda4vm_build(qdq_path, tmp_path_factory) -> Path:
    """`segcompile compile int8.qdq.onnx --target tda4vm --out DIR`, run through the CLI."""
    out = tmp_path_factory.mktemp("build") / "tda4vm"
    result = CliRunner().invoke(main, ["compile", str(qdq_path), "--target", "tda4vm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "bit-exact" in result.output
    return out


@pytest.mark.slow
def test_tda4vm_build_has_an_aarch64_library_dsp_sources_and_a_host_reference(tda4vm_build):
    summary = json.loads((tda4vm_build / "compile.json").read_text())
    cores = {core["name"]: core for core in summary["cores"]}
    assert set(cores) == {"a72", "c7x"}
    assert cores["a72"]["elf_machine"] == 183
    assert _elf_machine_and_class(tda4vm_build / "a72" / "model.so") == (183, 2)
    assert _elf_machine_and_class(tda4vm_build / "host" / "model.so") == (62, 2)
    assert {"kernels.c", "graph.c", "runtime.c", "segc_dsp.h", "README.md"} <= {
        p.name for p in (tda4vm_build / "c7x").iterdir()
    }
    assert summary["profile"]["name"] == "tda4vm"
    assert summary["elapsed_seconds"] > 0
    assert not [p for p in tda4vm_build.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_compile_json_hashes_and_sizes_match_the_files(tda4vm_build):
    summary = json.loads((tda4vm_build / "compile.json").read_text())
    entries = [summary["host_reference"]]
    entries += [core["library"] for core in summary["cores"] if "library" in core]
    entries += [entry for core in summary["cores"] for entry in core.get("files", [])]
    assert len(entries) >= 8
    for entry in entries:
        path = tda4vm_build / entry["path"]
        assert path.stat().st_size == entry["size"]
        assert sha256_file(path) == entry["sha256"]


@pytest.mark.slow
def test_compile_json_reports_the_lowering_and_the_partition(tda4vm_build):
    summary = json.loads((tda4vm_build / "compile.json").read_text())
    lowering = summary["lowering"]
    assert lowering["by_op_type"]["Conv"] == {"integer": 5, "float": 0}
    assert [node["name"] for node in lowering["float_nodes"]] == ["gate_softmax"]
    dsp = next(core for core in summary["cores"] if core["name"] == "c7x")
    partition = dsp["partition"]
    # The softmax is not a DSP operator: it runs on the ARM core between two DSP subgraphs.
    assert partition["op_counts"]["arm"] == {"relax.nn.softmax": 1}
    assert len(partition["subgraphs"]) == 2 <= dsp["max_subgraphs"]
    # Five model convs, plus the average pool, which the integer lowering computes as a depthwise conv.
    assert partition["op_counts"]["dsp"]["relax.nn.conv2d"] >= 5
    check = dsp["c_check"]
    assert check["bit_exact"] and check["mismatches"] == 0 and check["elements"] > 0


@pytest.mark.slow
def test_shipped_dsp_sources_compile_as_strict_c99_with_the_host_gcc(tda4vm_build, tmp_path):
    c7x = tda4vm_build / "c7x"
    for name in ("kernels.c", "graph.c", "runtime.c"):
        subprocess.run(
            [
                shutil.which("gcc"),
                "-std=c99",
                "-pedantic-errors",
                "-c",
                "-I",
                str(c7x),
                "-I",
                str(c7x / "include"),
                str(c7x / name),
                "-o",
                str(tmp_path / f"{name}.o"),
            ],
            check=True,
        )
    kernels_c = (c7x / "kernels.c").read_text()
    assert '#include "tvm/' not in kernels_c  # no libtvm headers: the folder stands alone
    graph_c = (c7x / "graph.c").read_text()
    assert "static SEGC_ALIGNED const int8_t" in graph_c  # int8 weights stay int8
    # Intermediates share static buffers by lifetime: fewer buffers than kernel calls writing them.
    assert 0 < graph_c.count("static SEGC_ALIGNED int8_t pool") < graph_c.count("/* step ")


@pytest.fixture(scope="module")
def partitioned(integer_module):
    profile = load_profile("tda4vm")
    return partition_for_dsp(integer_module, profile.accelerator_ops, profile.max_subgraphs)


@pytest.mark.slow
def test_host_compiled_dsp_c_equals_the_llvm_build_on_a_real_image(partitioned, tmp_path):
    mod, plan = partitioned
    sources = emit_dsp_sources(mod, tmp_path / "c7x")
    library = HostDspLibrary(compile_dsp_sources(tmp_path / "c7x", tmp_path / "dsp.so"), sources)
    reference = relax.VirtualMachine(compile_relax(subgraph_module(mod), host_target()), tvm.cpu())
    image = smooth_inputs(1, seed=3)[0]
    first = sources.subgraphs[0]
    assert first.inputs[0].shape == image.shape  # subgraph 0 starts at the model input
    ours = library(first.function, [image])
    theirs = reference[first.function](tvm.runtime.tensor(image))
    theirs = [theirs.numpy()] if hasattr(theirs, "numpy") else [t.numpy() for t in theirs]
    assert [o.dtype for o in ours] == [t.dtype for t in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert any(o.dtype == np.int8 for o in ours)


@pytest.mark.slow
def test_the_partitioned_program_computes_exactly_what_the_whole_program_does(integer_module, partitioned):
    mod, plan = partitioned
    image = smooth_inputs(1, seed=9)[0]
    whole = relax.VirtualMachine(compile_relax(integer_module, host_target()), tvm.cpu())
    split = relax.VirtualMachine(compile_relax(mod, host_target()), tvm.cpu())
    expected = whole["main"](tvm.runtime.tensor(image)).numpy()
    assert np.array_equal(split["main"](tvm.runtime.tensor(image)).numpy(), expected)
    # Each DSP subgraph stays callable on its own (the hand-off points).
    assert split["dsp_subgraph_0"] is not None


def test_partition_keeps_every_operator_exactly_once(integer_module, partitioned):
    mod, plan = partitioned
    original = [
        b.value.op.name
        for block in integer_module["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
    ]
    placed = sum(plan.arm_op_counts.values()) + sum(plan.dsp_op_counts.values())
    assert placed == len(original)
    assert sum(s.num_ops for s in plan.subgraphs) == sum(plan.dsp_op_counts.values())
    assert {g.name_hint for g in mod.get_global_vars()} >= {"main", "dsp_subgraph_0", "dsp_subgraph_1"}


def test_max_subgraphs_sends_the_smaller_subgraphs_back_to_the_arm_core(integer_module):
    profile = load_profile("tda4vm")
    _, unbounded = partition_for_dsp(integer_module, profile.accelerator_ops, 16)
    _, bounded = partition_for_dsp(integer_module, profile.accelerator_ops, 1)
    assert unbounded.candidate_subgraphs == bounded.candidate_subgraphs == 2
    assert len(bounded.subgraphs) == 1
    kept = bounded.subgraphs[0].num_ops
    assert kept == max(s.num_ops for s in unbounded.subgraphs)
    assert sum(bounded.fallback_ops.values()) == sum(s.num_ops for s in unbounded.subgraphs) - kept
    assert sum(bounded.arm_op_counts.values()) == 1 + sum(bounded.fallback_ops.values())


def test_an_operator_the_dsp_does_not_list_is_unsupported_there(integer_module):
    _, plan = partition_for_dsp(integer_module, ["Conv"], 16)
    assert "relax.nn.conv2d" not in plan.unsupported_ops
    assert "relax.nn.softmax" in plan.unsupported_ops and "relax.concat" in plan.unsupported_ops


def test_dsp_sources_are_byte_identical_across_runs(partitioned, tmp_path):
    mod, _ = partitioned
    first = emit_dsp_sources(mod, tmp_path / "a")
    emit_dsp_sources(mod, tmp_path / "b")
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_failed_build_leaves_no_folder_that_looks_complete(qdq_path, tmp_path):
    profile_path = tmp_path / "broken.yaml"
    text = Path(load_profile("aarch64").source).read_text()
    profile_path.write_text(text.replace("aarch64-linux-gnu-gcc", "no-such-gcc"))
    out = tmp_path / "build"
    out.mkdir()
    (out / "compile.json").write_text("{}")  # left over from an earlier, successful build
    with pytest.raises(SegcompileError, match="no-such-gcc"):
        run_compile(CompileConfig(host_reference=False), qdq_path, str(profile_path), out)
    assert not (out / "compile.json").exists()
    assert list(out.iterdir()) == []


def test_compile_command_names_a_missing_model(tmp_path):
    result = CliRunner().invoke(
        main, ["compile", str(tmp_path / "none.onnx"), "--target", "host", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert "none.onnx: no such file" in result.output


def test_compile_command_names_the_node_tvm_cannot_import(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Celu", ["input"], ["logits"], name="head_celu")],
        "celu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(path), "--target", "tda4vm", "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "head_celu" in lines[0] and "Celu" in lines[0]
    assert not (out / "compile.json").exists()


@pytest.mark.slow
def test_a_finished_compile_is_current_until_an_input_or_a_file_changes(tda4vm_build, qdq_path, tmp_path):
    from segcompile.compile.stage import compile_is_current

    assert compile_is_current(CompileConfig(), qdq_path, "tda4vm", tda4vm_build)
    assert not compile_is_current(CompileConfig(), qdq_path, "am68a", tda4vm_build)
    assert not compile_is_current(CompileConfig(seed=1), qdq_path, "tda4vm", tda4vm_build)
    copy = tmp_path / "copy"
    shutil.copytree(tda4vm_build, copy)
    assert compile_is_current(CompileConfig(), qdq_path, "tda4vm", copy)
    graph_c = copy / "c7x" / "graph.c"
    graph_c.write_text(graph_c.read_text() + "/* edited */\n")
    assert not compile_is_current(CompileConfig(), qdq_path, "tda4vm", copy)


@pytest.mark.slow
def test_a_compile_for_another_cpu_is_not_current_here(tda4vm_build, qdq_path, tmp_path):
    """A copied build whose ARM core was built for another CPU (what mcpu: native resolves to on another
    machine) is rebuilt, though the profile's bytes are the same."""
    from segcompile.compile.stage import compile_is_current

    copy = tmp_path / "other_cpu"
    shutil.copytree(tda4vm_build, copy)
    summary = json.loads((copy / "compile.json").read_text())
    core = next(c for c in summary["cores"] if c["kind"] == "arm")
    core["target"] = {**core["target"], "mcpu": "cortex-a53"}
    (copy / "compile.json").write_text(json.dumps(summary))
    assert not compile_is_current(CompileConfig(), qdq_path, "tda4vm", copy)


@pytest.mark.slow
def test_a_dsp_board_whose_dsp_takes_nothing_of_the_model_runs_it_all_on_arm(minimal_qdq_path, tmp_path):
    text = Path(load_profile("am62a").source).read_text()
    start = text.index("accelerator_ops:")
    end = text.index("max_subgraphs:")
    profile_path = tmp_path / "convtranspose_only.yaml"
    profile_path.write_text(text[:start] + "accelerator_ops: [ConvTranspose]\n" + text[end:])
    out = tmp_path / "build"
    result = run_compile(CompileConfig(host_reference=False), minimal_qdq_path, str(profile_path), out)
    assert result.dsp_sources is None and result.partition.subgraphs == ()
    summary = json.loads((out / "compile.json").read_text())
    dsp = next(core for core in summary["cores"] if core["kind"] == "dsp")
    assert dsp["files"] == [] and dsp["partition"]["op_counts"]["dsp"] == {}
    assert "relax.nn.conv2d" in dsp["partition"]["unsupported_ops"]
    assert sorted(p.name for p in out.iterdir()) == ["a53", "compile.json"]
