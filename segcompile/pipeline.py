"""`segcompile build`: the five stages run in order over one build folder.

Each stage reads and writes files in the folder, so it can also be run alone. A stage whose
inputs are unchanged since it last finished is skipped: its fingerprint (a sha256 over its
input files and options) is kept in ``stages.json``. ``manifest.json`` is written last and
removed first, so a folder without it is never mistaken for a finished build.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from segcompile.artifacts import sha256_file, write_json_atomic
from segcompile.errors import SegcompileError
from segcompile.export.input_contract import InputContract
from segcompile.manifest import MANIFEST_JSON, write_manifest

STAGES_JSON = "stages.json"


@dataclass(frozen=True)
class BuildConfig:
    """Everything `segcompile build` was asked to do."""

    model: str
    target: str
    calib: str
    out: Path
    eval: str | None = None
    checkpoint: str | None = None
    input_size: tuple[int, int] | None = None
    input_shape: tuple[int, int, int, int] | None = None
    contract: InputContract = field(default_factory=InputContract)
    scheme: str | None = None  # overrides the target profile's quantization scheme
    method: str = "minmax"
    calib_frames: int = 32
    eval_frames: int | None = None
    bias_correction: bool = True
    max_drop: float | None = None
    fallback: bool = False
    int8_runner: str = "auto"
    seed: int = 0
    force: bool = False


@dataclass
class BuildResult:
    """Where the build went, what each stage did (ran or skipped) and the headline report."""

    out: Path
    stages: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] | None = None


class StageLedger:
    """Fingerprints of the stages that finished in a build folder (``stages.json``)."""

    def __init__(self, build_dir: Path) -> None:
        self.path = build_dir / STAGES_JSON
        self.entries: dict[str, str] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except ValueError:
                self.entries = {}

    def is_current(self, stage: str, fingerprint: str, outputs: list[Path]) -> bool:
        return self.entries.get(stage) == fingerprint and all(p.exists() for p in outputs)

    def record(self, stage: str, fingerprint: str) -> None:
        self.entries[stage] = fingerprint
        write_json_atomic(self.path, self.entries)

    def forget_from(self, stage: str) -> None:
        """A stage re-ran: everything after it must re-run too."""
        order = list(STAGE_ORDER)
        for later in order[order.index(stage) :]:
            self.entries.pop(later, None)


STAGE_ORDER = ("export", "quantize", "compile", "verify")


def fingerprint(*parts: Any) -> str:
    """sha256 over JSON-able parts; Paths contribute their file content hash."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = sha256_file(part) if part.is_file() else f"missing:{part}"
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def run_build(config: BuildConfig, echo: Callable[[str], None] = click.echo) -> BuildResult:
    """Run export, quantize, compile, verify and report into ``config.out``."""
    from segcompile.compile.profiles import load_profile
    from segcompile.data.spec import open_dataset

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise SegcompileError(f"--out {out}: exists and is not a folder")
    # Fail fast on a bad model, target, calibration or evaluation spec, before minutes of work.
    from segcompile.export.source import classify_model_argument
    from segcompile.zoo.registry import get_entry

    if classify_model_argument(config.model) == "zoo":
        get_entry(config.model)
    profile = load_profile(config.target)
    calib_set = open_dataset(config.calib, role="calib")
    eval_set = open_dataset(config.eval, role="eval") if config.eval else None
    if len(calib_set) == 0:
        raise SegcompileError(f"--calib {config.calib}: no frames")

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_JSON).unlink(missing_ok=True)
    ledger = StageLedger(out)
    if config.force:
        ledger.entries.clear()

    result = BuildResult(out=out)

    def run_stage(name: str, stage_fingerprint: str, outputs: list[Path], body: Callable[[], None]) -> None:
        if ledger.is_current(name, stage_fingerprint, outputs):
            result.stages[name] = "skipped (inputs unchanged)"
            echo(f"[{name}] up to date, skipped")
            return
        ledger.forget_from(name)
        echo(f"[{name}] running")
        started = time.perf_counter()
        body()
        result.timings[name] = round(time.perf_counter() - started, 3)
        ledger.record(name, stage_fingerprint)
        result.stages[name] = "ran"

    # 1 export
    from segcompile.export.config import ExportConfig
    from segcompile.export.stage import export_fingerprint, run_export

    first = calib_set[0]
    export_config = ExportConfig(
        model=config.model,
        checkpoint=config.checkpoint,
        input_size=config.input_size,
        input_shape=config.input_shape,
        contract=config.contract,
        seed=config.seed,
        sample_image=first.image,
        sample_name=first.name,
    )
    float_onnx = out / "float.onnx"
    run_stage(
        "export",
        fingerprint(export_fingerprint(export_config), first.name, _array_hash(first.image)),
        [float_onnx, out / "export.json"],
        lambda: run_export(export_config, out),
    )

    # 2 quantize
    from segcompile.quantize.inputs import calibration_inputs
    from segcompile.quantize.scheme import PRESETS
    from segcompile.quantize.stage import QuantizeConfig, run_quantize
    from segcompile.verify.stage import load_model_info

    info = load_model_info(out)
    if config.scheme and config.scheme not in PRESETS:
        raise SegcompileError(f"--scheme: {config.scheme!r} is not one of {', '.join(PRESETS)}")
    scheme = PRESETS[config.scheme] if config.scheme else profile.quant_scheme()
    quantize_config = QuantizeConfig(
        scheme=scheme,
        method=config.method,
        frames=config.calib_frames,
        bias_correction=config.bias_correction,
        seed=config.seed,
    )
    calib_names = list(calib_set.names)[: min(config.calib_frames, len(calib_set))]

    def quantize() -> None:
        _, inputs = calibration_inputs(config.calib, info, config.calib_frames)
        run_quantize(quantize_config, float_onnx, inputs, out)

    qdq_onnx = out / "int8.qdq.onnx"
    run_stage(
        "quantize",
        fingerprint(float_onnx, asdict(quantize_config), config.calib, calib_names),
        [qdq_onnx, out / "quant_params.json"],
        quantize,
    )

    # 3 compile
    from segcompile.compile.stage import CompileConfig, run_compile

    compile_config = CompileConfig(seed=config.seed)
    run_stage(
        "compile",
        fingerprint(qdq_onnx, profile.content_sha256, asdict(compile_config)),
        [out / "compile.json"],
        lambda: run_compile(compile_config, qdq_onnx, profile, out),
    )

    # 4 verify + 5 report
    if eval_set is not None:
        from segcompile.report.stage import summary_text, write_report
        from segcompile.verify.gate import check_gate
        from segcompile.verify.stage import VerifyConfig, run_verify, run_verify_with_fallback

        verify_config = VerifyConfig(
            int8_runner=config.int8_runner, max_frames=config.eval_frames, max_drop=config.max_drop
        )

        def verify() -> None:
            if config.fallback:
                run_verify_with_fallback(verify_config, out, eval_set, calib_names)
            else:
                run_verify(verify_config, out, eval_set, calib_names)

        run_stage(
            "verify",
            fingerprint(
                qdq_onnx,
                out / "compile.json",
                asdict(verify_config),
                config.eval,
                config.fallback,
                calib_names,
            ),
            [out / "report.json"],
            verify,
        )
        started = time.perf_counter()
        write_report(out)
        result.timings["report"] = round(time.perf_counter() - started, 3)
        result.report = json.loads((out / "report.json").read_text())
        echo(summary_text(result.report))
    else:
        echo("[verify] skipped: no --eval data given")

    write_manifest(out, profile=profile, info=info, build=asdict(config))
    if eval_set is not None:
        echo(f"report: {out / 'report.html'} (also report.md, report.json)")
    echo(f"build folder: {out} (manifest: {out / MANIFEST_JSON})")
    if eval_set is not None and config.max_drop is not None:
        drop = result.report.get("miou_drop") if result.report else None
        if result.report and result.report.get("fallback"):
            drop = result.report["fallback"].get("final_drop", drop)
        check_gate(float("nan") if drop is None else drop, config.max_drop, str(out))
    return result


def _array_hash(array) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()
