"""Target profiles: the shipped boards load and validate; a bad field is one line naming file and field."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from segcompile.cli import main
from segcompile.compile.build import check_elf_machine, read_elf_header
from segcompile.compile.profiles import PROFILES_DIR, list_profiles, load_profile
from segcompile.compile.targets import SUPPORTED_TRIPLES, target_dict, tvm_target
from segcompile.errors import SegcompileError

SHIPPED = ["aarch64", "am62", "am62a", "am67a", "am68a", "am69a", "armv7", "host", "tda4vm"]
WITH_DSP = ["am62a", "am67a", "am68a", "am69a", "tda4vm"]


def test_the_nine_boards_of_the_design_are_shipped():
    assert list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_gives_tvm_a_valid_target(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source.endswith(f"{name}.yaml")
    assert len(profile.content_sha256) == 64
    cpu = profile.cpu_core
    assert cpu.triple in SUPPORTED_TRIPLES
    target = tvm_target(cpu)
    assert str(target.kind.name) == "llvm"
    assert target.attrs["mtriple"] == cpu.triple
    # The quantization section is what the quantize stage's scheme_from_dict accepts.
    scheme = profile.quant_scheme()
    assert scheme.activation_dtype == "int8"


@pytest.mark.parametrize("name", SHIPPED)
def test_only_the_c7x_boards_have_a_dsp_with_operators_and_a_subgraph_bound(name):
    profile = load_profile(name)
    if name in WITH_DSP:
        assert profile.dsp_core is not None and profile.dsp_core.name == "c7x"
        assert "Conv" in profile.accelerator_ops and "Sigmoid" not in profile.accelerator_ops
        assert profile.max_subgraphs >= 1
    else:
        assert profile.dsp_core is None
        assert profile.accelerator_ops == () and profile.max_subgraphs == 0


def test_tda4vm_takes_power_of_two_per_tensor_scales_and_newer_boards_per_channel():
    tda4vm = load_profile("tda4vm").quant_scheme()
    assert tda4vm.power_of_2 and tda4vm.weight_granularity == "per-tensor"
    for name in ("am62a", "am67a", "am68a", "am69a"):
        scheme = load_profile(name).quant_scheme()
        assert scheme.weight_granularity == "per-channel" and not scheme.power_of_2


def test_boards_name_their_real_cpus():
    assert load_profile("tda4vm").cpu_core.mcpu == "cortex-a72"
    assert load_profile("am69a").cpu_core.mcpu == "cortex-a72"
    assert load_profile("am62a").cpu_core.mcpu == "cortex-a53"
    assert load_profile("am62").cpu_core.mcpu == "cortex-a53"
    armv7 = load_profile("armv7").cpu_core
    assert armv7.mcpu == "cortex-a15"
    # Debian armhf is hard float: the target must say so or the link fails.
    assert target_dict(armv7)["mfloat-abi"] == "hard"
    assert target_dict(armv7)["mtriple"] == "arm-linux-gnueabihf"


def _write_variant(tmp_path, base: str, mutate) -> str:
    raw = yaml.safe_load((PROFILES_DIR / f"{base}.yaml").read_text())
    mutate(raw)
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _set(path: list, value):
    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: list):
    def mutate(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


BAD_FIELDS = [
    ("tda4vm", _set(["cores", 0, "kind"], "gpu"), "cores[0].kind"),
    ("tda4vm", _set(["cores", 0, "triple"], "riscv64-linux-gnu"), "cores[0].triple"),
    ("tda4vm", _set(["cores", 0, "mcpu"], "cortex-a72; rm -rf /"), "cores[0].mcpu"),
    ("tda4vm", _set(["cores", 0, "mattr"], "neon"), "cores[0].mattr"),
    ("tda4vm", _set(["cores", 0, "vector_width_bits"], "wide"), "cores[0].vector_width_bits"),
    ("tda4vm", _delete(["cores", 0, "cross_compiler"]), "cores[0].cross_compiler"),
    ("tda4vm", _set(["cores", 1, "triple"], "aarch64-linux-gnu"), "cores[1].triple"),
    ("tda4vm", _set(["cores", 1, "name"], "host"), "cores[1].name"),
    ("tda4vm", _set(["cores"], []), "'cores'"),
    ("tda4vm", _set(["quantization", "weight_granularity"], "per-pixel"), "quantization.weight_granularity"),
    ("tda4vm", _set(["quantization", "power_of_2"], "yes"), "quantization.power_of_2"),
    ("tda4vm", _delete(["quantization", "activation_symmetric"]), "quantization.activation_symmetric"),
    ("tda4vm", _set(["quantization", "activation_dtype"], "int4"), "quantization.activation_dtype"),
    ("tda4vm", _set(["accelerator_ops"], ["Conv", "Frobnicate"]), "Frobnicate"),
    ("tda4vm", _set(["max_subgraphs"], 0), "max_subgraphs"),
    ("tda4vm", _set(["coers"], []), "coers"),
    ("am62", _set(["accelerator_ops"], ["Conv"]), "accelerator_ops"),
    ("armv7", _delete(["cores", 0, "mfloat_abi"]), "cores[0].mfloat_abi"),
    ("host", _set(["name"], "My Board"), "'name'"),
]


@pytest.mark.parametrize(("base", "mutate", "field"), BAD_FIELDS, ids=[f for _, _, f in BAD_FIELDS])
def test_a_bad_field_is_a_one_line_error_naming_the_file_and_the_field(tmp_path, base, mutate, field):
    path = _write_variant(tmp_path, base, mutate)
    with pytest.raises(SegcompileError) as error:
        load_profile(path)
    message = str(error.value)
    assert path in message
    assert field in message
    assert "\n" not in message


def test_a_user_profile_is_loaded_from_its_path_with_the_hash_of_its_bytes(tmp_path):
    import hashlib

    path = _write_variant(tmp_path, "aarch64", _set(["name"], "my-board"))
    profile = load_profile(path)
    assert profile.name == "my-board"
    assert profile.content_sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_yaml_tags_that_would_run_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SegcompileError, match="not valid YAML"):
        load_profile(str(path))
    assert not marker.exists()


def test_unknown_target_name_lists_the_known_ones():
    with pytest.raises(SegcompileError) as error:
        load_profile("tda5")
    assert "tda5" in str(error.value) and "tda4vm" in str(error.value)


def test_missing_profile_path_is_named(tmp_path):
    with pytest.raises(SegcompileError, match="no such file"):
        load_profile(str(tmp_path / "nowhere.yaml"))


@pytest.fixture(scope="module")
def host_shared_object(tmp_path_factory):
    """A real x86_64 shared object, built by the host gcc from a one-line C file."""
    folder = tmp_path_factory.mktemp("elf")
    source = folder / "one.c"
    source.write_text("int one(void) { return 1; }\n")
    library = folder / "libone.so"
    subprocess.run([shutil.which("gcc"), "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


def test_elf_header_of_a_host_library_says_x86_64(host_shared_object):
    header = read_elf_header(host_shared_object)
    assert header.machine == 62 and header.elf_class == 2 and header.little_endian
    check_elf_machine(host_shared_object, load_profile("host").cpu_core)


def test_a_library_for_the_wrong_machine_is_rejected(host_shared_object):
    with pytest.raises(SegcompileError) as error:
        check_elf_machine(host_shared_object, load_profile("tda4vm").cpu_core)
    assert str(host_shared_object) in str(error.value) and "183" in str(error.value)


def test_a_file_that_is_not_elf_is_rejected(tmp_path):
    path = tmp_path / "model.so"
    path.write_bytes(b"#!/bin/sh\necho not a library\n")
    with pytest.raises(SegcompileError, match="not an ELF file"):
        read_elf_header(path)


def test_targets_list_prints_every_board():
    result = CliRunner().invoke(main, ["targets", "list"])
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.output


def test_targets_list_json_is_the_validated_profiles():
    result = CliRunner().invoke(main, ["targets", "list", "--json"])
    assert result.exit_code == 0, result.output
    profiles = {p["name"]: p for p in json.loads(result.output)}
    assert sorted(profiles) == SHIPPED
    assert profiles["tda4vm"]["quantization"]["power_of_2"] is True


def test_targets_show_describes_the_cores_and_accelerator():
    result = CliRunner().invoke(main, ["targets", "show", "tda4vm"])
    assert result.exit_code == 0, result.output
    assert "cortex-a72" in result.output and "c7x" in result.output and "max subgraphs: 16" in result.output


def test_targets_show_of_an_unknown_board_is_a_one_line_error():
    result = CliRunner().invoke(main, ["targets", "show", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: unknown target 'nope'")
