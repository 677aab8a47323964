"""Quantization schemes, scale arithmetic and streaming observers."""

from __future__ import annotations

import numpy as np
import pytest

from segcompile.errors import SegcompileError
from segcompile.quantize.observers import (
    HistogramObserver,
    MinMaxObserver,
    choose_range,
    entropy_range,
    mse_range,
    percentile_range,
)
from segcompile.quantize.scheme import (
    PRESETS,
    activation_qparams,
    conform_qparams,
    get_scheme,
    is_pow2,
    scheme_from_dict,
    snap_pow2,
)
from segcompile.quantize.weights import quantize_weight, weight_error_mean_shift, weight_qparams


def test_presets_match_the_target_constraints():
    assert get_scheme("tda4vm").power_of_2 and get_scheme("tda4vm").weight_granularity == "per-tensor"
    assert get_scheme("per-channel").per_channel and get_scheme("per-channel").activation_symmetric
    asym = get_scheme("per-channel-asym")
    assert not asym.activation_symmetric and asym.activation_dtype == "uint8"


def test_scheme_from_profile_section_reads_every_field():
    scheme = scheme_from_dict(
        {
            "weight_granularity": "per-tensor",
            "power_of_2": True,
            "activation_symmetric": True,
            "activation_dtype": "int8",
        }
    )
    assert scheme.power_of_2 and not scheme.per_channel


def test_scheme_from_dict_starts_from_a_preset_and_overrides():
    scheme = scheme_from_dict({"preset": "tda4vm", "weight_granularity": "per-channel"})
    assert scheme.power_of_2 and scheme.per_channel


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"weight_granularity": "per-row"}, "weight_granularity"),
        ({"power_of_2": "yes"}, "power_of_2"),
        ({"activation_dtype": "int4"}, "activation_dtype"),
        ({"weight_bits": 4}, "weight_bits"),
        ({"activation_dtype": "uint8", "activation_symmetric": True}, "activation_dtype"),
        ({"per_channel": True}, "per_channel"),
        ({"preset": "tda5"}, "preset"),
        ({"preset": "per-channel-asym", "unsigned_activations": True}, "unsigned_activations"),
    ],
)
def test_scheme_from_dict_names_the_bad_field(section, field):
    with pytest.raises(SegcompileError, match=field):
        scheme_from_dict(section, "target_profiles/x.yaml quantization")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(SegcompileError, match="per-channel-asym"):
        get_scheme("int4")


def test_pow2_snapping_rounds_up_and_keeps_exact_powers():
    assert snap_pow2(0.3) == 0.5
    assert snap_pow2(0.25) == 0.25
    assert snap_pow2(0.3, "floor") == 0.25
    assert all(is_pow2(float(s)) for s in snap_pow2(np.array([1e-5, 0.07, 3.0, 1000.0])))


def test_symmetric_int8_range_makes_the_max_exact():
    qp = activation_qparams(-2.0, 5.08, get_scheme("per-channel"))
    assert int(qp.zero_point) == 0 and qp.dtype == "int8"
    assert np.isclose(float(qp.scale) * 127, 5.08)


def test_pow2_activation_scale_covers_the_range():
    qp = activation_qparams(0.0, 5.0, PRESETS["tda4vm"])
    assert is_pow2(float(qp.scale)) and float(qp.scale) * 127 >= 5.0


def test_asymmetric_uint8_range_maps_min_and_max_to_the_ends():
    qp = activation_qparams(-1.0, 3.0, get_scheme("per-channel-asym"))
    lo, hi = qp.real_range()
    assert qp.dtype == "uint8" and abs(lo + 1.0) < float(qp.scale) and abs(hi - 3.0) < float(qp.scale)


def test_imported_range_is_snapped_to_pow2_and_reported():
    qat = activation_qparams(0.0, 5.0, get_scheme("per-channel"))
    conformed, changes = conform_qparams(qat, PRESETS["tda4vm"])
    assert changes == ["snapped-pow2"] and is_pow2(float(conformed.scale))
    assert float(conformed.scale) >= float(qat.scale)


def test_imported_asymmetric_range_is_converted_for_a_symmetric_target():
    qat = activation_qparams(-1.0, 3.0, get_scheme("per-channel-asym"))
    conformed, changes = conform_qparams(qat, get_scheme("per-channel"))
    assert int(conformed.zero_point) == 0 and conformed.dtype == "int8"
    assert changes[0].startswith("converted-symmetric")


# ---- observers ------------------------------------------------------------------------------------------


def test_histogram_state_size_does_not_depend_on_frames():
    rng = np.random.default_rng(0)
    obs = HistogramObserver(bins=256)
    sizes = set()
    for i in range(20):
        obs.update(rng.normal(0, 1 + i, 5000).astype(np.float32))
        sizes.add(obs.hist.nbytes)
    assert sizes == {256 * 8}
    assert obs.hist.sum() == 20 * 5000


def test_histogram_regrowth_merges_bins_exactly():
    values = np.array([0.1, 0.2, -0.3, 0.45], np.float32)
    grown = HistogramObserver(bins=16)
    grown.update(values)
    grown.update(np.array([3.5], np.float32))  # radius 0.5 -> 4: three doublings
    direct = HistogramObserver(bins=16)
    direct.update(np.array([3.5], np.float32))
    direct.update(values)
    assert grown.radius == direct.radius == 4.0
    np.testing.assert_array_equal(grown.hist, direct.hist)


def test_minmax_observer_tracks_running_extremes():
    obs = MinMaxObserver()
    obs.update(np.array([1.0, -2.0]))
    obs.update(np.array([0.5, 7.0]))
    assert (obs.min, obs.max) == (-2.0, 7.0)


def test_observers_flag_non_finite_values_instead_of_hiding_them():
    obs = HistogramObserver()
    obs.update(np.array([1.0, 2.0], np.float32))
    obs.update(np.array([np.nan, 3.0], np.float32))
    assert obs.nonfinite and obs.max == 2.0


def _outlier_observer() -> HistogramObserver:
    rng = np.random.default_rng(1)
    obs = HistogramObserver()
    for _ in range(8):
        values = rng.normal(0, 1, 20000).astype(np.float32)
        values[:2] = [40.0, -35.0]  # rare outliers stretch min/max
        obs.update(values)
    return obs


@pytest.mark.parametrize("chooser", [percentile_range, entropy_range])
def test_histogram_methods_clip_rare_outliers(chooser):
    obs = _outlier_observer()
    scheme = get_scheme("per-channel")
    lo, hi = chooser(obs, scheme)
    assert 2.5 < hi < 20.0 and -20.0 < lo < -2.5
    assert choose_range(obs, "minmax", scheme) == (obs.min, obs.max)


def test_mse_range_clips_a_heavy_tail_to_lower_expected_error():
    from segcompile.quantize.observers import histogram_error

    rng = np.random.default_rng(4)
    obs = HistogramObserver()
    for _ in range(8):
        obs.update(rng.laplace(0, 1, 50000).astype(np.float32))
    scheme = get_scheme("per-channel")
    lo, hi = mse_range(obs, scheme)
    assert hi < obs.max and lo > obs.min
    candidates = [activation_qparams(*r, scheme) for r in ((obs.min, obs.max), (lo, hi))]
    errors = histogram_error(obs, np.array([float(c.scale) for c in candidates]), np.zeros(2), (-128, 127))
    assert errors[1] < errors[0]


# ---- weights --------------------------------------------------------------------------------------------


def _skewed_weights() -> np.ndarray:
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 0.05, (8, 4, 3, 3)).astype(np.float32)
    weight[:, 0, 0, 0] *= 20  # one large tap per channel
    return weight


def test_per_channel_weights_have_one_scale_per_output_channel():
    weight = _skewed_weights()
    qp = weight_qparams(weight, get_scheme("per-channel"), axis=0)
    q = quantize_weight(weight, qp)
    assert q.dtype == np.int8 and qp.scale.shape == (8,) and qp.axis == 0
    assert np.abs(q).max() == 127 and q.min() >= -127


def test_mse_weight_search_reduces_weight_error():
    weight = np.random.default_rng(5).laplace(0, 0.02, (16, 32, 3, 3)).astype(np.float32)
    scheme = get_scheme("per-channel")
    errors = {}
    for search in ("minmax", "mse"):
        qp = weight_qparams(weight, scheme, axis=0, search=search)
        deq = quantize_weight(weight, qp).astype(np.float32) * qp.scale.reshape(-1, 1, 1, 1)
        errors[search] = float(((deq - weight) ** 2).sum())
    assert errors["mse"] < errors["minmax"]


def test_pow2_weight_search_keeps_powers_of_two():
    qp = weight_qparams(_skewed_weights(), PRESETS["tda4vm"], axis=0, search="mse")
    assert qp.scale.ndim == 0 and is_pow2(float(qp.scale))


def test_weight_error_mean_shift_matches_a_direct_convolution():
    import torch

    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.3, (6, 2, 3, 3)).astype(np.float32)  # groups=2, 4 input channels
    noisy = weight + rng.normal(0, 0.01, weight.shape).astype(np.float32)
    means = np.array([0.5, -1.0, 2.0, 0.25])
    x = torch.tensor(np.broadcast_to(means.reshape(1, 4, 1, 1), (1, 4, 9, 9)).astype(np.float32))
    delta = torch.nn.functional.conv2d(x, torch.tensor(noisy - weight), groups=2)  # no padding: exact
    expected = delta[0, :, 4, 4].numpy()
    got = weight_error_mean_shift(weight, noisy, means, group=2, transposed=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_tap_means_give_the_exact_mean_shift_of_a_padded_dilated_strided_conv():
    import torch

    from segcompile.quantize.observers import TapMeanObserver
    from segcompile.quantize.weights import tap_mean_shift

    rng = np.random.default_rng(8)
    weight = rng.normal(0, 0.3, (6, 2, 3, 3)).astype(np.float32)  # groups=2, 4 input channels
    noisy = weight + rng.normal(0, 0.01, weight.shape).astype(np.float32)
    frames = [rng.normal(1.0, 1.0, (1, 4, 7, 9)).astype(np.float32) for _ in range(3)]
    obs = TapMeanObserver(kernel=(3, 3), strides=(2, 1), pads=(2, 1, 2, 3), dilations=(2, 2))
    outputs = []
    for frame in frames:
        obs.update(frame)
        padded = torch.nn.functional.pad(torch.tensor(frame), (1, 3, 2, 2))  # (left, right, top, bottom)
        delta = torch.nn.functional.conv2d(
            padded, torch.tensor(noisy - weight), stride=(2, 1), dilation=2, groups=2
        )
        outputs.append(delta.numpy())
    expected = np.concatenate(outputs).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(
        tap_mean_shift(weight, noisy, obs.mean, group=2), expected, rtol=1e-4, atol=1e-6
    )
