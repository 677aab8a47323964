"""Streaming range observers: fixed-size state updated batch by batch, nothing buffered.

Modeled on torch.ao's MinMaxObserver and HistogramObserver. The histogram covers a symmetric range
[-R, R] with a fixed number of bins; when a batch exceeds R, R doubles and pairs of bins merge, so
re-binning is exact (no interpolation) and memory never depends on how many frames were seen.
Range choice from a histogram (percentile, entropy/KL, MSE) happens once, after the last batch.
"""

from __future__ import annotations

import numpy as np

from segcompile.quantize.scheme import QuantScheme, activation_qparams

METHODS = ("minmax", "percentile", "entropy", "mse")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.99


class MinMaxObserver:
    """Running min and max."""

    def __init__(self) -> None:
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.nonfinite = False  # a NaN/inf arrived; the caller reports it (it knows the tensor's name)

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            self.nonfinite = True
            return
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += values.size

    @property
    def seen(self) -> bool:
        return self.count > 0


class HistogramObserver(MinMaxObserver):
    """Running min/max plus a fixed-bin histogram over a doubling symmetric range."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__()
        if bins % 4:
            raise ValueError("bins must be a multiple of 4 so that doubling the range merges bin pairs")
        self.bins = bins
        self.radius = 0.0
        self.hist = np.zeros(bins, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        super().update(values)
        if self.nonfinite:
            return
        amax = max(abs(self.min), abs(self.max))
        if amax == 0:
            self.hist[self.bins // 2] += values.size
            return
        if self.radius == 0:
            # Start at a power of two so every later doubling keeps edges aligned.
            self.radius = float(2.0 ** np.ceil(np.log2(amax)))
            zeros = self.hist[self.bins // 2]
            self.hist[:] = 0
            self.hist[self._index(np.zeros(1, np.float32))[0]] += zeros
        while amax > self.radius:
            merged = self.hist.reshape(self.bins // 2, 2).sum(axis=1)
            self.hist = np.zeros(self.bins, dtype=np.int64)
            self.hist[self.bins // 4 : 3 * self.bins // 4] = merged
            self.radius *= 2.0
        self.hist += np.bincount(self._index(values.ravel()), minlength=self.bins)

    def _index(self, values: np.ndarray) -> np.ndarray:
        idx = np.floor((values.astype(np.float64) + self.radius) * (self.bins / (2.0 * self.radius)))
        return np.clip(idx, 0, self.bins - 1).astype(np.int64)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.radius, self.radius, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2.0


class ChannelMeanObserver:
    """Running per-channel mean of an NCHW tensor (for bias correction)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        if values.ndim < 2:
            return
        sums = values.astype(np.float64).sum(axis=tuple(i for i in range(values.ndim) if i != 1))
        self.total = sums if self.total is None else self.total + sums
        self.count += values.size // values.shape[1]

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None or self.count == 0 else self.total / self.count


class TapMeanObserver:
    """Running mean of a conv's input as each kernel tap sees it, zero padding included: (C, kh, kw).

    The mean output shift that weight rounding causes is sum(dW[o, c, i, j] * M[c, i, j]); with the
    per-tap means M it is exact even where padding covers much of a small, dilated feature map (a
    per-channel input mean ignores the padded zeros and over-corrects there).
    """

    def __init__(
        self,
        kernel: tuple[int, int],
        strides: tuple[int, int],
        pads: tuple[int, int, int, int],
        dilations: tuple[int, int],
    ) -> None:
        self.kernel, self.strides, self.pads, self.dilations = kernel, strides, pads, dilations
        self.total: np.ndarray | None = None
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        if values.ndim != 4:
            return
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        padded = np.pad(values.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
        out_h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
        out_w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
        sums = np.empty((values.shape[1], kh, kw))
        for i in range(kh):
            for j in range(kw):
                window = padded[
                    :,
                    :,
                    i * dh : i * dh + (out_h - 1) * sh + 1 : sh,
                    j * dw : j * dw + (out_w - 1) * sw + 1 : sw,
                ]
                sums[:, i, j] = window.sum(axis=(0, 2, 3))
        self.total = sums if self.total is None else self.total + sums
        self.count += values.shape[0] * out_h * out_w

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.total is None or self.count == 0 else self.total / self.count


# ---------------------------------------------------------------------------------------------------------
# Choosing a range from an observer


def _abs_histogram(obs: HistogramObserver) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of |x| over [0, R] (bins/2 bins) and its right edges."""
    half = obs.bins // 2
    folded = obs.hist[half:] + obs.hist[:half][::-1]
    right = np.linspace(0.0, obs.radius, half + 1)[1:]
    return folded, right


def percentile_range(obs: HistogramObserver, scheme: QuantScheme, pct: float = DEFAULT_PERCENTILE):
    """Range that keeps ``pct`` percent of the values (of |x| when symmetric)."""
    if scheme.activation_symmetric:
        folded, right = _abs_histogram(obs)
        cdf = np.cumsum(folded) / max(folded.sum(), 1)
        t = float(right[min(np.searchsorted(cdf, pct / 100.0), len(right) - 1)])
        return max(obs.min, -t), min(obs.max, t)
    cdf = np.cumsum(obs.hist) / max(obs.hist.sum(), 1)
    edges = obs.edges
    lo = float(edges[np.searchsorted(cdf, (100.0 - pct) / 100.0)])
    hi = float(edges[min(np.searchsorted(cdf, pct / 100.0) + 1, obs.bins)])
    return max(obs.min, lo), min(obs.max, hi)


def entropy_range(obs: HistogramObserver, scheme: QuantScheme, levels: int = 128):
    """Threshold minimizing the KL divergence between the |x| distribution and its quantized copy.

    TensorRT's calibration algorithm (Migacz, "8-bit Inference with TensorRT", 2017) on the folded
    |x| histogram; written here because onnxruntime's version needs all activations in memory.
    """
    folded, right = _abs_histogram(obs)
    folded = folded.astype(np.float64)
    # ReLU outputs put a spike of exact zeros in the first bin that would dominate the divergence;
    # flatten it as NVIDIA's pytorch-quantization entropy calibrator does.
    folded[0] = folded[1]
    amax = max(abs(obs.min), abs(obs.max))
    nbins = len(folded)
    last_used = int(np.searchsorted(right, amax)) + 1
    best_t, best_kl = amax, np.inf
    # Candidate thresholds every few bins: the KL curve is smooth and this keeps the search cheap.
    step = max(1, (last_used - levels) // 256)
    for i in range(levels, min(last_used, nbins) + 1, step):
        ref = folded[:i].copy()
        ref[i - 1] += folded[i:].sum()
        # As in MXNet's/onnxruntime's implementation: Q is built from the sliced histogram (outliers
        # excluded) and spread over the bins where the reference P (outliers included) is nonzero.
        nonzero = ref > 0
        # Merge i bins into `levels` groups, then spread each group's mass over its nonzero bins.
        group = (np.arange(i) * levels) // i
        group_mass = np.bincount(group, weights=folded[:i], minlength=levels)
        group_nonzero = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        expanded = np.where(nonzero, group_mass[group] / np.maximum(group_nonzero[group], 1), 0.0)
        p = ref / max(ref.sum(), 1e-12)
        q = expanded / max(expanded.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, float(right[i - 1])
    best_t = min(best_t, amax)
    return max(obs.min, -best_t), min(obs.max, best_t)


def histogram_error(
    obs: HistogramObserver, scales: np.ndarray, zero_points: np.ndarray, qrange
) -> np.ndarray:
    """Expected squared quantization error of the observed distribution for each candidate (scale, zp)."""
    centers = obs.centers
    mask = obs.hist > 0
    c, n = centers[mask], obs.hist[mask].astype(np.float64)
    s = np.asarray(scales, np.float64)[:, None]
    z = np.asarray(zero_points, np.float64)[:, None]
    q = (np.clip(np.rint(c[None] / s) + z, qrange[0], qrange[1]) - z) * s
    return ((q - c[None]) ** 2 * n[None]).sum(axis=1)


def mse_range(obs: HistogramObserver, scheme: QuantScheme):
    """Range minimizing the expected squared quantization error over shrunk copies of [min, max]."""
    ratios = np.linspace(0.3, 1.0, 71)
    candidates = [activation_qparams(obs.min * r, obs.max * r, scheme) for r in ratios]
    errors = histogram_error(
        obs,
        np.array([float(c.scale) for c in candidates]),
        np.array([int(c.zero_point) for c in candidates]),
        scheme.activation_qrange,
    )
    r = float(ratios[int(np.argmin(errors))])
    return obs.min * r, obs.max * r


def choose_range(
    obs: MinMaxObserver, method: str, scheme: QuantScheme, percentile: float = DEFAULT_PERCENTILE
):
    """(lo, hi) chosen by ``method`` from a filled observer."""
    if method == "minmax" or not isinstance(obs, HistogramObserver) or obs.radius == 0:
        return obs.min, obs.max
    if method == "percentile":
        return percentile_range(obs, scheme, percentile)
    if method == "entropy":
        return entropy_range(obs, scheme)
    if method == "mse":
        return mse_range(obs, scheme)
    raise ValueError(f"unknown calibration method {method!r}")


def pow2_mode_for(obs: MinMaxObserver, method: str, lo: float, hi: float, scheme: QuantScheme) -> str:
    """How to snap a chosen range to a power-of-two scale.

    minmax promises no clipping (ceil). The other methods already trade clipping for resolution, so the
    power of two below or above the ideal scale is picked by the histogram's expected error.
    """
    if method == "minmax" or not isinstance(obs, HistogramObserver) or obs.radius == 0:
        return "ceil"
    up = activation_qparams(lo, hi, scheme, "ceil")
    down = activation_qparams(lo, hi, scheme, "floor")
    errors = histogram_error(
        obs,
        np.array([float(up.scale), float(down.scale)]),
        np.array([int(up.zero_point), int(down.zero_point)]),
        scheme.activation_qrange,
    )
    return "ceil" if errors[0] <= errors[1] else "floor"


def make_observer(method: str):
    """A fresh observer suited to ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    return MinMaxObserver() if method == "minmax" else HistogramObserver()
