"""The quantize stage on a real exported network: QDQ structure, onnxruntime, schemes, extras, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from quantize_nets import INPUT_SHAPE, smooth_frames, tiny_onnx

from segcompile.errors import SegcompileError
from segcompile.modelinfo import read_model_info
from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize, scheme_from_dict
from segcompile.quantize.calibrate import make_session, with_outputs
from segcompile.quantize.scheme import is_pow2

FRAMES = 8


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return smooth_frames(FRAMES)


@pytest.fixture(scope="module")
def quantized(float_onnx, frames, tmp_path_factory):
    """One quantize run per scheme, shared by the structural tests."""
    runs = {}
    for name in ("tda4vm", "per-channel", "per-channel-asym"):
        out = tmp_path_factory.mktemp(name)
        result = run_quantize(QuantizeConfig(scheme=get_scheme(name), frames=FRAMES), float_onnx, frames, out)
        runs[name] = (result, onnx.load(str(result.qdq_onnx)), json.loads(result.quant_params.read_text()))
    return runs


def _run(model: onnx.ModelProto, frame: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"input": frame})[0]


def _relative_error(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.sqrt(((reference - got) ** 2).mean() / (reference**2).mean()))


@pytest.mark.parametrize("scheme", ["tda4vm", "per-channel", "per-channel-asym"])
def test_onnxruntime_runs_the_qdq_model_close_to_float(quantized, float_onnx, frames, scheme):
    _, qdq, _ = quantized[scheme]
    reference = _run(onnx.load(str(float_onnx)), frames[0])
    got = _run(qdq, frames[0])
    assert got.shape == reference.shape
    assert _relative_error(reference, got) < 0.1
    assert (reference.argmax(1) == got.argmax(1)).mean() > 0.9


def test_power_of_2_scheme_yields_only_power_of_2_scales(quantized):
    _, qdq, params = quantized["tda4vm"]
    scales = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_scale")]
    assert len(scales) > 20
    assert all(is_pow2(float(s)) for scale in scales for s in np.ravel(scale))
    weight_scales = [t["scale"] for t in params["tensors"] if t["role"] == "weight"]
    assert all(isinstance(s, float) for s in weight_scales)  # per-tensor


def test_weights_are_int8_per_channel_with_axis_0(quantized):
    _, qdq, _ = quantized["per-channel"]
    inits = {i.name: i for i in qdq.graph.initializer}
    weight_dqs = [
        n
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert weight_dqs
    for node in weight_dqs:
        assert next(a.i for a in node.attribute if a.name == "axis") == 0
        values = numpy_helper.to_array(inits[node.input[0]])
        assert len(numpy_helper.to_array(inits[node.input[1]])) == values.shape[0]
        assert values.min() >= -127


def test_bias_is_int32_at_input_scale_times_weight_scale(quantized):
    _, qdq, params = quantized["per-channel"]
    arrays = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    nodes = {n.output[0]: n for n in qdq.graph.node}
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        x_dq, w_dq, b_dq = (nodes[name] for name in conv.input[:3])
        assert arrays[b_dq.input[0]].dtype == np.int32
        np.testing.assert_array_equal(arrays[b_dq.input[2]], 0)
        expected = (arrays[x_dq.input[1]] * arrays[w_dq.input[1]]).astype(np.float32)
        np.testing.assert_array_equal(arrays[b_dq.input[1]], expected)
    assert not params["saturated_biases"]


def test_relu_and_clip_are_folded_into_the_conv_output_range(quantized):
    _, qdq, params = quantized["per-channel"]
    producers = {o: n for n in qdq.graph.node for o in n.output}
    activations = [n for n in qdq.graph.node if n.op_type in ("Relu", "Clip")]
    assert activations
    for act in activations:
        assert producers[act.input[0]].op_type == "Conv"  # no Q/DQ between conv and activation
    folded = [t for t in params["tensors"] if t.get("folded_from")]
    assert len(folded) == len(activations)


def test_asymmetric_scheme_uses_uint8_with_zero_points(quantized):
    _, _, params = quantized["per-channel-asym"]
    activations = [t for t in params["tensors"] if t["role"] == "activation"]
    assert {t["dtype"] for t in activations} == {"uint8"}
    assert any(t["zero_point"] not in (0, 128) for t in activations)


def test_quant_params_describe_every_tensor_with_its_error(quantized):
    result, qdq, params = quantized["per-channel"]
    assert params["frames"] == FRAMES and params["method"] == "minmax" and params["seed"] == 0
    q_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    names = {t["name"] for t in params["tensors"]}
    assert {name.removesuffix("_float") for name in q_inputs} <= names
    for tensor in params["tensors"]:
        assert {"name", "role", "scale", "zero_point", "bits", "dtype", "source"} <= set(tensor)
        if tensor["role"] == "activation":
            assert tensor["sqnr_db"] is not None and tensor["sqnr_db"] > 10
            assert tensor["source"].startswith(("calibrated:minmax", "shared:"))
    assert result.worst_layers and result.worst_layers[0][1] == min(
        t["sqnr_db"] for t in params["tensors"] if t["role"] == "activation"
    )


def test_model_info_metadata_survives(quantized, float_onnx):
    _, qdq, _ = quantized["tda4vm"]
    assert read_model_info(qdq) == read_model_info(onnx.load(str(float_onnx)))


def test_outputs_are_byte_identical_for_the_same_inputs(float_onnx, frames, tmp_path):
    config = QuantizeConfig(scheme=get_scheme("tda4vm"), method="entropy", frames=4)
    first = run_quantize(config, float_onnx, frames, tmp_path / "a")
    second = run_quantize(config, float_onnx, frames, tmp_path / "b")
    assert first.qdq_onnx.read_bytes() == second.qdq_onnx.read_bytes()
    assert first.quant_params.read_bytes() == second.quant_params.read_bytes()


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_produce_working_models(float_onnx, frames, tmp_path, method):
    result = run_quantize(QuantizeConfig(method=method, frames=FRAMES), float_onnx, frames, tmp_path)
    reference = _run(onnx.load(str(float_onnx)), frames[1])
    got = _run(onnx.load(str(result.qdq_onnx)), frames[1])
    # Untrained weights: the ranges these methods clip are not outliers the net learned to ignore.
    assert _relative_error(reference, got) < 0.15
    assert (reference.argmax(1) == got.argmax(1)).mean() > 0.9
    params = json.loads(result.quant_params.read_text())
    assert any(t["source"] == f"calibrated:{method}" for t in params["tensors"])
    logits = next(t for t in params["tensors"] if t["name"] == "logits")
    assert logits["source"] == "calibrated:minmax (model output)"  # logits are never clipped
    relu6 = next(t for t in params["tensors"] if t["name"] == "hardtanh")
    assert relu6["source"] == "calibrated:minmax (clip-bounded)"  # saturated values are not outliers


def test_frames_limits_how_many_inputs_are_read(float_onnx, tmp_path):
    taken = []

    def endless():
        while True:
            taken.append(1)
            yield smooth_frames(1, seed=len(taken))[0]

    result = run_quantize(QuantizeConfig(frames=3), float_onnx, endless(), tmp_path)
    assert result.frames_used == 3 and len(taken) == 3


def test_bias_correction_reduces_the_output_mean_shift(float_onnx, frames, tmp_path):
    reference = np.stack([_run(onnx.load(str(float_onnx)), f) for f in frames])
    shifts = {}
    for corrected in (False, True):
        config = QuantizeConfig(
            scheme=get_scheme("tda4vm"), frames=FRAMES, bias_correction=corrected, weight_search="minmax"
        )
        result = run_quantize(config, float_onnx, frames, tmp_path / str(corrected))
        qdq = onnx.load(str(result.qdq_onnx))
        got = np.stack([_run(qdq, f) for f in frames])
        shifts[corrected] = float(np.abs((got - reference).mean(axis=(0, 1, 3, 4))).mean())
        params = json.loads(result.quant_params.read_text())
        assert params["bias_correction"]["applied"] is corrected
    assert shifts[True] < shifts[False]


def test_equalization_keeps_the_float_function_and_evens_channel_ranges(float_onnx, frames):
    from segcompile.quantize.equalize import equalize

    model = onnx.load(str(float_onnx))
    before = _run(model, frames[0])
    report = equalize(model)
    assert report["pairs"], "the depthwise -> pointwise pair joined by ReLU is equalized"
    assert report["skipped"] == [] or all(s["reason"] for s in report["skipped"])
    for pair in report["pairs"]:
        assert pair["spread_after"] < pair["spread_before"]
    np.testing.assert_allclose(_run(model, frames[0]), before, rtol=1e-4, atol=1e-4)


def test_scheme_from_a_profile_section_drives_the_stage(float_onnx, frames, tmp_path):
    scheme = scheme_from_dict({"weight_granularity": "per-tensor", "power_of_2": True})
    result = run_quantize(QuantizeConfig(scheme=scheme, frames=2), float_onnx, frames, tmp_path)
    params = json.loads(result.quant_params.read_text())
    assert params["scheme"]["power_of_2"] and params["scheme"]["weight_granularity"] == "per-tensor"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SegcompileError, match="nope.onnx"):
        run_quantize(QuantizeConfig(), tmp_path / "nope.onnx", [], tmp_path)


def test_wrong_frame_shape_names_the_frame(float_onnx, tmp_path):
    bad = [np.zeros((1, 3, 16, 16), np.float32)]
    with pytest.raises(SegcompileError, match=r"calibration input 0: shape \(1, 3, 16, 16\)"):
        run_quantize(QuantizeConfig(frames=1), float_onnx, bad, tmp_path)


def test_no_frames_for_a_float_model_is_an_error(float_onnx, tmp_path):
    with pytest.raises(SegcompileError, match="frames"):
        run_quantize(QuantizeConfig(frames=0), float_onnx, [], tmp_path)
    with pytest.raises(SegcompileError, match="no frames"):
        run_quantize(QuantizeConfig(frames=4), float_onnx, [], tmp_path)


def test_unknown_method_is_rejected(float_onnx, tmp_path):
    with pytest.raises(SegcompileError, match="--method"):
        run_quantize(QuantizeConfig(method="kl"), float_onnx, [], tmp_path)


def test_input_shape_matches_the_test_net():
    assert INPUT_SHAPE == (1, 3, 32, 48)


def test_unsigned_activations_store_relu_outputs_as_uint8_with_zero_point_0(float_onnx, frames, tmp_path):
    scheme = scheme_from_dict({"preset": "tda4vm", "unsigned_activations": True})
    result = run_quantize(QuantizeConfig(scheme=scheme, frames=FRAMES), float_onnx, frames, tmp_path)
    params = json.loads(result.quant_params.read_text())
    activations = {t["name"]: t for t in params["tensors"] if t["role"] == "activation"}
    unsigned = {name for name, t in activations.items() if t["dtype"] == "uint8"}
    assert unsigned and all(activations[name]["zero_point"] == 0 for name in unsigned)
    assert all(t["folded_from"] or t["source"].startswith("shared:") for t in map(activations.get, unsigned))
    assert activations["logits"]["dtype"] == "int8" and activations["input"]["dtype"] == "int8"
    reference = _run(onnx.load(str(float_onnx)), frames[0])
    assert _relative_error(reference, _run(onnx.load(str(result.qdq_onnx)), frames[0])) < 0.1


def _conv_relu6_conv() -> onnx.ModelProto:
    """conv(4->6, skewed channels) -> Clip(0, 6) -> conv(6->3), built directly as ONNX."""
    from onnx import helper

    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32) * np.array(
        [8, 1, 0.2, 3, 1, 0.05], np.float32
    ).reshape(-1, 1, 1, 1)
    w2 = rng.normal(0, 0.3, (3, 6, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
            helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6"),
            helper.make_node("Conv", ["a1", "w2"], ["logits"], name="conv2"),
        ],
        "pair",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_equalization_across_relu6_is_exact_on_the_calibration_frames():
    from segcompile.quantize.equalize import clip_pair_outputs, equalize

    model = _conv_relu6_conv()
    frames = [np.random.default_rng(i).normal(0, 1, (1, 4, 8, 8)).astype(np.float32) for i in range(4)]
    session = make_session(model)
    before = [session.run(None, {"input": f})[0] for f in frames]
    assert clip_pair_outputs(model) == ["c1"]
    assert equalize(onnx.ModelProto.FromString(model.SerializeToString()))["skipped"], (
        "no statistics: skipped"
    )
    c1 = make_session(with_outputs(model, ["c1"]))
    peak = np.max([c1.run(["c1"], {"input": f})[0].max(axis=(0, 2, 3)) for f in frames], axis=0)
    assert (peak > 6).any() and (peak < 6).any(), "the test needs both clipped and unclipped channels"
    report = equalize(model, {"c1": peak})
    assert (
        len(report["pairs"]) == 1 and report["pairs"][0]["spread_after"] < report["pairs"][0]["spread_before"]
    )
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    original = numpy_helper.to_array(next(i for i in _conv_relu6_conv().graph.initializer if i.name == "w1"))
    np.testing.assert_array_equal(w1[peak > 6], original[peak > 6])  # clipped channels keep their scale
    after = make_session(model)
    for frame, expected in zip(frames, before, strict=True):
        np.testing.assert_allclose(after.run(None, {"input": frame})[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["tda4vm", "per-channel-asym"])
def test_compiled_integer_program_matches_onnxruntime_within_one_lsb(quantized, frames, tmp_path, scheme):
    """The QDQ graph says exactly what the compile stage's integer kernels compute."""
    from segcompile.compile import HostModule, build_for_host, import_qdq, lower_to_integer

    result, qdq, params = quantized[scheme]
    module, _ = lower_to_integer(import_qdq(result.qdq_onnx))
    compiled = HostModule(build_for_host(module, tmp_path))
    lsb = next(t["scale"] for t in params["tensors"] if t["name"] == "logits")
    for frame in frames[:2]:
        got = np.asarray(compiled(frame))
        assert np.abs(got - _run(qdq, frame)).max() <= lsb * 1.001


def test_layer_error_compares_like_with_like_after_equalization(quantized):
    _, _, params = quantized["tda4vm"]
    assert params["equalization"]["pairs"], "tda4vm equalizes the depthwise -> pointwise pair"
    activations = [t for t in params["tensors"] if t["role"] == "activation"]
    # Each tensor's own rounding error is small; a reference from the unequalized graph would not be.
    assert all(t["sqnr_local_db"] > 20 for t in activations), [
        (t["name"], t["sqnr_local_db"]) for t in activations
    ]
