"""Peak memory of streaming calibration versus number of frames (issue 3 evidence).

Runs the quantize stage once per frame count, each in a fresh subprocess so that its peak RSS (VmHWM)
belongs to that run alone; Python-side allocations are also traced with tracemalloc (numpy reports to it).
Frames are generated lazily, so the only thing that could grow with the frame count is the calibration.

    python bench/calibration_memory.py                                  # zoo model, 8 vs 64 frames
    python bench/calibration_memory.py --onnx build/float.onnx --frames 8 64 --method entropy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

# Run from a checkout without installing: the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_ZOO = "cityscapes_mobilenetv2s16_deeplabv3lite_768x384"
DEFAULT_SIZE = (256, 128)


def _frames(shape: tuple[int, ...], count: int, seed: int):
    """Seeded smooth image-like inputs, generated one at a time (never held together)."""
    rng = np.random.default_rng(seed)
    _, channels, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(count):
        image = np.empty((1, channels, height, width), np.float32)
        for ch in range(channels):
            a, b, c = rng.uniform(-1.5, 1.5, 3)
            image[0, ch] = a * xx / width + b * yy / height + c
        image += rng.normal(0, 0.2, image.shape).astype(np.float32)
        yield image


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def child(onnx_path: Path, frames: int, method: str, scheme: str) -> dict:
    """One measured quantize run (called in a fresh process)."""
    import onnx

    from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize
    from segcompile.quantize.calibrate import graph_input, input_dims

    shape = tuple(d or 1 for d in input_dims(graph_input(onnx.load(str(onnx_path)))))
    config = QuantizeConfig(scheme=get_scheme(scheme), method=method, frames=frames, progress=False)
    # ru_maxrss survives exec (it would report the parent's peak); VmHWM belongs to this process image.
    # Writing 5 to clear_refs resets VmHWM so the peak is the quantize run's own.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    baseline = _status_mib("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_quantize(config, onnx_path, _frames(shape, frames, seed=0), Path(out))
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_mib("VmHWM")
    return {
        "frames": result.frames_used,
        "seconds": round(seconds, 3),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_over_baseline_mib": round(peak - baseline, 1),
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 2),
        "input_shape": list(shape),
    }


def measure(onnx_path: Path, counts: list[int], method: str, scheme: str) -> dict:
    """Run :func:`child` in a subprocess per frame count and compare the peaks."""
    runs = []
    for count in counts:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--onnx",
                str(onnx_path),
                "--frames",
                str(count),
                "--method",
                method,
                "--scheme",
                scheme,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"child run with {count} frames failed:\n{proc.stderr[-2000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rss = [r["peak_rss_mib"] for r in runs]
    traced = [r["tracemalloc_peak_mib"] for r in runs]
    return {
        "model": str(onnx_path),
        "method": method,
        "scheme": scheme,
        "runs": runs,
        "peak_rss_relative_spread": round((max(rss) - min(rss)) / min(rss), 4),
        "tracemalloc_relative_spread": round((max(traced) - min(traced)) / min(traced), 4),
    }


def _export_zoo(name: str, size: tuple[int, int], out: Path) -> Path:
    from segcompile.export.config import ExportConfig
    from segcompile.export.stage import run_export

    return run_export(ExportConfig(model=name, input_size=size), out).onnx_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, help="float ONNX to calibrate (default: export a zoo model)")
    parser.add_argument("--zoo", default=DEFAULT_ZOO, help="zoo model exported when --onnx is not given")
    parser.add_argument("--size", default=f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}", help="export size WxH")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--method", default="entropy", help="entropy/percentile/mse keep histograms")
    parser.add_argument("--scheme", default="per-channel")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "calibration_memory.json"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.onnx, args.frames[0], args.method, args.scheme)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            width, height = (int(v) for v in args.size.lower().split("x"))
            onnx_path = _export_zoo(args.zoo, (width, height), Path(tmp))
        report = measure(onnx_path, args.frames, args.method, args.scheme)
        if args.onnx is None:
            report["model"] = f"{args.zoo} exported at {args.size}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
