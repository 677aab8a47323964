"""Latency and memory measurement.

Timing is *interleaved*: every repeat calls each runner once in turn, so load from other processes on a
shared machine hits all runners alike and the ratios between them stay meaningful even when absolute
times drift. Warm-up calls (first-call allocation, page faults, lazy initialisation) are excluded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcompile.errors import SegcompileError


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one runner over ``repeats`` timed calls, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


def time_interleaved(
    runners: Mapping[str, Callable[[np.ndarray], object]],
    data: np.ndarray,
    warmup: int = 3,
    repeats: int = 20,
    progress: bool | None = None,
    block: int = 1,
    settle_ms: float = 0.0,
) -> dict[str, LatencyStats]:
    """Median latency of each runner on ``data``; the runners take turns within every round.

    A round gives each runner ``block`` timed calls, after untimed calls for at least ``settle_ms``
    (none by default). With several threads per engine, the settling matters: onnxruntime's and TVM's
    worker threads spin-wait for a few milliseconds after a run, so a runner timed right after the
    other engine shares the cores with that engine's spinning threads. Settling lets them park first,
    which is what a user running one engine sees.
    """
    if warmup < 0 or repeats < 1 or block < 1 or settle_ms < 0:
        raise SegcompileError(
            f"timing: need warmup >= 0, repeats >= 1, block >= 1 and settle_ms >= 0, got {warmup}, "
            f"{repeats}, {block} and {settle_ms}"
        )
    for _ in range(warmup):
        for run in runners.values():
            run(data)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    rounds = -(-repeats // block)
    bar = tqdm(range(rounds), desc="timing", unit="round", disable=None if progress is None else not progress)
    for _ in bar:
        for name, run in runners.items():
            if settle_ms > 0:
                until = time.perf_counter() + settle_ms / 1e3
                while time.perf_counter() < until:
                    run(data)
            for _ in range(min(block, repeats - len(samples[name]))):
                start = time.perf_counter()
                run(data)
                samples[name].append(time.perf_counter() - start)
    return {
        name: LatencyStats(
            median_ms=round(1e3 * statistics.median(s), 4),
            min_ms=round(1e3 * min(s), 4),
            max_ms=round(1e3 * max(s), 4),
            repeats=repeats,
            warmup=warmup,
        )
        for name, s in samples.items()
    }


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SegcompileError(f"/proc/self/status has no {field} field (Linux only)")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_growth(step: Callable[[], object]) -> tuple[object, float | None]:
    """Run ``step`` and return its result and how far the peak RSS rose above the RSS before it (MiB).

    None when the peak cannot be reset (the growth would then include everything before).
    """
    if not reset_peak_rss():
        return step(), None
    before = status_mib("VmRSS")
    result = step()
    return result, round(status_mib("VmHWM") - before, 1)
