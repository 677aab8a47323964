"""The sweep's one table: a row per model x target x method, as Markdown, CSV and a self-contained HTML page.

Every row is read back from its build folder (report.json, compile.json, sweep_job.json), so a row
reused from an earlier run and a row built now are made the same way.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from segcompile.artifacts import write_bytes_atomic
from segcompile.report.assemble import read_json
from segcompile.report.html import page
from segcompile.report.markdown import fmt
from segcompile.sweep.jobs import JOB_JSON, Job
from segcompile.sweep.steps import LATENCY_REPEATS, LATENCY_THREADS, LATENCY_WARMUP

BUILT, REUSED, FAILED = "built", "reused", "failed"
TABLE_MD, TABLE_CSV, TABLE_HTML = "sweep.md", "sweep.csv", "sweep.html"


@dataclass(frozen=True)
class SweepRow:
    """One build of the sweep; numbers are None where a failed job has none."""

    model: str
    target: str
    method: str
    status: str  # built | reused | failed
    folder: str  # relative to the sweep's out folder
    gmacs: float | None = None
    float_miou: float | None = None  # percent
    int8_miou: float | None = None  # percent
    miou_drop: float | None = None  # percent points, float minus int8
    latency_ratio: float | None = None  # TVM int8 median / onnxruntime int8 median
    tvm_int8_ms: float | None = None
    ort_int8_ms: float | None = None
    compile_seconds: float | None = None
    artifact_bytes: int | None = None
    calib_frames: int | None = None
    eval_frames: int | None = None
    error: str | None = None


def row_from_folder(job: Job, out: Path, status: str, error: str | None = None) -> SweepRow:
    """The table row of ``job``, read from its build folder (only the names for a failed job)."""
    base = SweepRow(
        model=job.model.label,
        target=job.target.label,
        method=job.method.label,
        status=status,
        folder=job.folder.relative_to(out).as_posix(),
        error=error,
    )
    if status == FAILED:
        return base
    folder = job.folder
    report = read_json(folder / "report.json", required=True)
    record = read_json(folder / JOB_JSON, required=True)
    compiled = read_json(folder / "compile.json", required=True)
    latency = record.get("latency") or {}
    return SweepRow(
        **{
            **asdict(base),
            "gmacs": record.get("gmacs"),
            "float_miou": report.get("float_miou"),
            "int8_miou": report.get("int8_miou"),
            "miou_drop": report.get("miou_drop"),
            "latency_ratio": latency.get("ratio"),
            "tvm_int8_ms": latency.get("tvm_int8_ms"),
            "ort_int8_ms": latency.get("ort_int8_ms"),
            "compile_seconds": compiled.get("elapsed_seconds"),
            "artifact_bytes": artifact_bytes(compiled),
            "calib_frames": len(report.get("frames_calibration", [])),
            "eval_frames": len(report.get("frames_eval", [])),
        }
    )


def artifact_bytes(compiled: dict) -> int:
    """Bytes of what ships to the board: each core's library and DSP sources (not the x86 reference)."""
    total = 0
    for core in compiled.get("cores", []):
        if isinstance(core.get("library"), dict):
            total += int(core["library"]["size"])
        total += sum(int(entry["size"]) for entry in core.get("files", []))
    return total


# (header, SweepRow field, digits); the CSV uses the field names and unrounded values.
COLUMNS = (
    ("model", "model", None),
    ("target", "target", None),
    ("method", "method", None),
    ("GMACs", "gmacs", 3),
    ("float mIoU (%)", "float_miou", 2),
    ("int8 mIoU (%)", "int8_miou", 2),
    ("drop (points)", "miou_drop", 2),
    ("latency TVM int8 / ORT int8", "latency_ratio", 2),
    ("compile (s)", "compile_seconds", 1),
    ("artifact (MiB)", "artifact_bytes", 2),
    ("status", "status", None),
)


def _cell(row: SweepRow, key: str, digits: int | None) -> str:
    value = getattr(row, key)
    if key == "artifact_bytes" and value is not None:
        return f"{value / 2**20:.{digits}f}"
    if key == "latency_ratio" and value is not None:
        return f"{value:.{digits}f}x"
    if key == "status" and row.status == FAILED:
        return f"failed: {row.error}" if row.error else "failed"
    return fmt(value, digits or 2)


def table_cells(rows: Sequence[SweepRow]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the table."""
    header = [title for title, _, _ in COLUMNS]
    return header, [[_cell(row, key, digits) for _, key, digits in COLUMNS] for row in rows]


@dataclass(frozen=True)
class TableNotes:
    """What a reader must know to read the numbers: data, frames, how latency was measured."""

    calib: str
    eval: str
    shard_size: int
    per_model_data: tuple[str, ...] = ()

    def lines(self, rows: Sequence[SweepRow]) -> list[str]:
        counts = {s: sum(r.status == s for r in rows) for s in (BUILT, REUSED, FAILED)}
        reused = [f"{r.model} / {r.target} / {r.method}" for r in rows if r.status == REUSED]
        lines = [
            f"{len(rows)} builds: {counts[BUILT]} built now, {counts[REUSED]} reused (finished folders "
            f"with the same input hash), {counts[FAILED]} failed.",
            f"Calibration: {self.calib}. Evaluation: {self.eval}; evaluation leaves out every frame "
            "calibration used, so the two are disjoint.",
            *self.per_model_data,
            "mIoU: confusion-matrix mIoU (%) at the model's input resolution; float = onnxruntime on "
            "float.onnx, int8 = the compiled integer module (host build); drop = float minus int8 in points. "
            f"Evaluated in shards of {self.shard_size} frames whose confusion matrices are summed: the "
            "numbers equal one pass over all frames exactly.",
            f"Latency: median of {LATENCY_REPEATS} interleaved runs ({LATENCY_WARMUP} warm-up) of the host "
            "(x86_64) build of the integer module against onnxruntime on the int8 QDQ model, side by side in "
            f"one process, {LATENCY_THREADS} thread each, on the machine that ran the job; below 1x TVM is "
            "faster. A ratio on this machine, not a board latency.",
            "Compile: seconds of the compile stage (integer lowering and every core's build). Artifact: what "
            "ships to the board (every core's library and DSP sources; the x86_64 verification build is not "
            "counted). GMACs: multiply-accumulates of the network at its input size.",
        ]
        if reused:
            lines.append("Reused rows: " + "; ".join(reused) + ".")
        return lines


def to_markdown(rows: Sequence[SweepRow], notes: TableNotes) -> str:
    """The table with its notes as Markdown."""
    header, cells = table_cells(rows)
    lines = ["# segcompile sweep", ""]
    lines += [f"- {line}" for line in notes.lines(rows)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[SweepRow]) -> str:
    """Every field of every row, unrounded (artifact size in bytes), one row per build."""
    buffer = io.StringIO()
    names = [f.name for f in fields(SweepRow)]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return buffer.getvalue()


def to_html(rows: Sequence[SweepRow], notes: TableNotes) -> str:
    """The table with its notes as one self-contained HTML page (inline style, no external URLs)."""
    header, cells = table_cells(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row, row_cells in zip(rows, cells, strict=True):
        css = {FAILED: ' class="bad"', REUSED: ' class="note"'}.get(row.status, "")
        tds = "".join(
            f'<td class="{"text" if i < 3 or i == len(row_cells) - 1 else "num"}">{html.escape(c)}</td>'
            for i, c in enumerate(row_cells)
        )
        body.append(f"<tr{css}>{tds}</tr>")
    items = "".join(f"<li>{html.escape(line)}</li>" for line in notes.lines(rows))
    content = f"<h1>segcompile sweep</h1><ul>{items}</ul><table><tr>{head}</tr>{''.join(body)}</table>"
    return page("segcompile sweep", content)


def write_tables(rows: Sequence[SweepRow], out: Path, notes: TableNotes) -> dict[str, Path]:
    """Write sweep.md, sweep.csv and sweep.html into ``out``; their paths by format."""
    out = Path(out)
    return {
        "md": write_bytes_atomic(out / TABLE_MD, to_markdown(rows, notes).encode()),
        "csv": write_bytes_atomic(out / TABLE_CSV, to_csv(rows).encode()),
        "html": write_bytes_atomic(out / TABLE_HTML, to_html(rows, notes).encode()),
    }
