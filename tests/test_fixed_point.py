"""Fixed-point requantization: multiplier/shift pairs and the numpy integer reference."""

from __future__ import annotations

import numpy as np
import pytest

from segcompile.compile.fixed_point import (
    common_shift_multipliers,
    integer_reference,
    quantize_multiplier,
    rounding_right_shift,
)
from segcompile.errors import SegcompileError


def test_multiplier_and_shift_reproduce_real_scales_to_1e9():
    rng = np.random.default_rng(0)
    # Realistic requantization factors s_in * s_w / s_out span many decades.
    scales = 10.0 ** rng.uniform(-7, 0.5, size=2000)
    fixed = quantize_multiplier(scales)
    relative = np.abs(fixed.real() - scales) / scales
    assert relative.max() < 1e-9
    assert fixed.multiplier.min() >= 2**30 and fixed.multiplier.max() < 2**31
    assert not fixed.pure_shift


def test_power_of_two_scale_becomes_a_pure_shift():
    fixed = quantize_multiplier(np.array([2.0**-7, 2.0**-12, 1.0]))
    assert fixed.pure_shift
    assert fixed.multiplier.tolist() == [1, 1, 1]
    assert fixed.shift.tolist() == [7, 12, 0]


def test_a_single_non_power_of_two_channel_needs_multipliers():
    fixed = quantize_multiplier(np.array([2.0**-7, 0.3 * 2.0**-7]))
    assert not fixed.pure_shift
    np.testing.assert_allclose(fixed.real(), [2.0**-7, 0.3 * 2.0**-7], rtol=1e-9)


def test_rounding_right_shift_rounds_ties_to_even():
    values = np.array([5, 6, 7, 10, 14, -5, -6, -7, -10, -14, 0, 1, -1])
    # divide by 4: 1.25, 1.5, 1.75, 2.5, 3.5 and negatives; 0, 0.25, -0.25
    expected = np.array([1, 2, 2, 2, 4, -1, -2, -2, -2, -4, 0, 0, 0])
    np.testing.assert_array_equal(rounding_right_shift(values, 2), expected)
    np.testing.assert_array_equal(rounding_right_shift(values, 2), np.round(values / 4.0))


def test_rounding_right_shift_by_zero_is_identity():
    values = np.arange(-20, 20)
    np.testing.assert_array_equal(rounding_right_shift(values, 0), values)


@pytest.mark.parametrize("real_scale", [0.0123456, 2.0**-9, 0.7, 3.1e-5])
def test_requantize_matches_float64_reference_within_rounding(real_scale):
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**22), 2**22, size=20000)
    got = integer_reference(acc, real_scale, zero_point=3, qmin=-128, qmax=127)
    exact = acc.astype(np.float64) * real_scale
    expected = np.clip(np.round(exact) + 3, -128, 127)
    # Only values whose exact product sits within the fixed-point error of a .5 tie may differ.
    differs = got.astype(np.int64) != expected
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-6
    assert np.all(np.abs(got.astype(np.int64) - expected) <= 1)
    assert np.all(near_tie[differs])
    assert got.dtype == np.int8


def test_requantize_per_channel_scales_apply_along_channel_axis():
    acc = np.full((1, 3, 2, 2), 1000, dtype=np.int32)
    got = integer_reference(acc, np.array([0.01, 0.02, 0.05]), channel_axis=1)
    assert got[0, :, 0, 0].tolist() == [10, 20, 50]


def test_requantize_power_of_two_scale_agrees_with_numpy_round():
    acc = np.arange(-5000, 5000)
    got = integer_reference(acc, 2.0**-5)
    np.testing.assert_array_equal(got, np.clip(np.round(acc / 32.0), -128, 127).astype(np.int8))


def test_common_shift_multipliers_share_one_shift():
    (m_a, m_b), shift = common_shift_multipliers([0.75, 0.1])
    assert m_a < 2**31 and m_a >= 2**30
    assert abs(m_a / 2**shift - 0.75) < 1e-9 and abs(m_b / 2**shift - 0.1) / 0.1 < 1e-8


def test_negative_or_infinite_scale_is_rejected():
    with pytest.raises(SegcompileError, match="scale"):
        quantize_multiplier(np.array([0.1, -0.5]))
    with pytest.raises(SegcompileError, match="scale"):
        quantize_multiplier(np.inf)


def test_zero_scale_channel_requantizes_to_the_zero_point():
    got = integer_reference(np.full((1, 2, 1, 1), 5000), np.array([0.0, 0.01]), zero_point=3)
    assert got.ravel().tolist() == [3, 53]
