"""Calibration memory stays flat as frames grow (runs bench/calibration_memory.py at a small size)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from quantize_nets import tiny_onnx

BENCH = Path(__file__).resolve().parents[1] / "bench" / "calibration_memory.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("calibration_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_peak_memory_of_calibration_over_8_and_64_frames_differs_by_less_than_20_percent(tmp_path_factory):
    onnx_path = tiny_onnx(tmp_path_factory, shape=(1, 3, 96, 128))
    report = _bench_module().measure(onnx_path, [8, 64], method="entropy", scheme="per-channel")
    runs = {run["frames"]: run for run in report["runs"]}
    assert set(runs) == {8, 64}
    assert report["peak_rss_relative_spread"] < 0.20
    # The Python-side peak (numpy observers, per-frame tensors) must not scale with frames either.
    assert runs[64]["tracemalloc_peak_mib"] < 1.2 * runs[8]["tracemalloc_peak_mib"]
    assert runs[64]["seconds"] > 0 and runs[8]["peak_over_baseline_mib"] > 0
