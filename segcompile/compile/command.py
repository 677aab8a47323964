"""``segcompile compile`` and ``segcompile targets list|show``: option parsing only."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segcompile.compile.profiles import list_profiles, load_profile


@click.command("compile")
@click.argument("qdq_onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--target",
    "target",
    required=True,
    help="Target profile name (see `segcompile targets list`) or path to a profile .yaml.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Build folder (per-core folders and compile.json are written here).",
)
@click.option(
    "--skip-dsp-check",
    is_flag=True,
    help="Do not compile the DSP C with the host gcc and compare it with TVM's LLVM build.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the DSP C check's synthetic inputs.")
def compile_command(qdq_onnx: Path, target: str, out_dir: Path, skip_dsp_check: bool, seed: int) -> None:
    """Lower an int8 QDQ ONNX model to integer code and build it for every core of a target board."""
    from segcompile.compile.stage import CompileConfig, run_compile
    from segcompile.errors import SegcompileError

    if not qdq_onnx.is_file():
        raise SegcompileError(f"{qdq_onnx}: no such file")
    profile = load_profile(target)
    result = run_compile(CompileConfig(check_dsp_c=not skip_dsp_check, seed=seed), qdq_onnx, profile, out_dir)
    report = result.lowering
    click.echo(
        f"{profile.name}: {report.integer_count} ops integer, {report.float_count} float"
        + (f" ({', '.join(n.name for n in report.float_nodes)})" if report.float_nodes else "")
    )
    for build in result.cores:
        click.echo(
            f"  {build.core:<8} {build.library.relative_to(out_dir)}  {build.size_bytes} bytes  "
            f"ELF {build.elf_machine_name} ({build.elf_machine})"
        )
    if result.dsp_sources is not None:
        plan = result.partition
        click.echo(
            f"  {profile.dsp_core.name:<8} {len(plan.subgraphs)} subgraph(s), "
            f"{sum(plan.dsp_op_counts.values())} ops on the DSP, {sum(plan.arm_op_counts.values())} on ARM; "
            f"C sources in {result.dsp_sources.directory.relative_to(out_dir)}/"
        )
        if result.dsp_check is not None:
            click.echo(
                f"  {'':<8} C kernels vs LLVM: {result.dsp_check.elements} elements, "
                f"{'bit-exact' if result.dsp_check.bit_exact else 'MISMATCH'}"
            )
    click.echo(f"wrote {result.compile_json} ({result.seconds:.1f} s)")


@click.group("targets")
def targets() -> None:
    """Target boards (profiles in target_profiles/, or your own YAML)."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def targets_list(as_json: bool) -> None:
    """List the shipped target profiles."""
    profiles = [load_profile(name) for name in list_profiles()]
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles], indent=2, sort_keys=True))
        return
    for profile in profiles:
        cores = " + ".join(f"{c.name}({c.kind})" for c in profile.cores)
        click.echo(f"{profile.name:<10} {cores:<22} {profile.description}")


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
def targets_show(name: str, as_json: bool) -> None:
    """Show one profile (a shipped name or a path to a .yaml) after validation."""
    profile = load_profile(name)
    if as_json:
        click.echo(json.dumps(profile.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"{profile.name}: {profile.description}")
    click.echo(f"  source: {profile.source} (sha256 {profile.content_sha256[:16]})")
    for core in profile.cores:
        if core.kind == "dsp":
            click.echo(
                f"  core {core.name}: dsp, {core.vector_width_bits}-bit vectors, portable C99 kernels"
                + (f" for {core.board_compiler}" if core.board_compiler else "")
            )
        else:
            features = ",".join(core.mattr) or "-"
            cpu = _cpu_shown(core.mcpu)
            click.echo(
                f"  core {core.name}: {core.kind} {core.triple} mcpu={cpu} mattr={features} "
                f"{core.vector_width_bits}-bit vectors, linked with {core.cross_compiler}"
            )
    quant = ", ".join(f"{k}={v}" for k, v in sorted(profile.quantization.items()))
    click.echo(f"  quantization: {quant}")
    if profile.accelerator_ops:
        click.echo(
            f"  accelerator ops ({len(profile.accelerator_ops)}): {', '.join(profile.accelerator_ops)}"
        )
        click.echo(f"  max subgraphs: {profile.max_subgraphs}")


def _cpu_shown(mcpu: str | None) -> str | None:
    from segcompile.compile.targets import NATIVE_CPU, resolve_mcpu

    return f"{NATIVE_CPU} ({resolve_mcpu(mcpu)} here)" if mcpu == NATIVE_CPU else mcpu
