"""QAT fake quantization, its QDQ export, and the quantize stage keeping QAT ranges (QAT-aware import)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from quantize_nets import INPUT_SHAPE, smooth_frames, tiny_model, tiny_qat_onnx

from segcompile.errors import SegcompileError
from segcompile.modelinfo import ModelInfo, read_model_info
from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize
from segcompile.quantize.calibrate import make_session
from segcompile.quantize.qat import ActFakeQuant, QConvBnAct, export_qat_onnx, observe_qat, prepare_qat
from segcompile.quantize.scheme import is_pow2

INFO = ModelInfo(name="tiny", num_classes=4, input_size=(INPUT_SHAPE[3], INPUT_SHAPE[2]))


def _qat(scheme: str):
    model = prepare_qat(tiny_model(), get_scheme(scheme), INPUT_SHAPE)
    observe_qat(model, [torch.from_numpy(f) for f in smooth_frames(4, seed=10)])
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """QAT models for two schemes, exported to QDQ ONNX."""
    return {scheme: tiny_qat_onnx(tmp_path_factory, scheme) for scheme in ("tda4vm", "per-channel-asym")}


def _logits_scale(params: dict) -> float:
    return next(t["scale"] for t in params["tensors"] if t["name"] == "logits")


@pytest.mark.parametrize("scheme", ["tda4vm", "per-channel-asym"])
def test_qat_fake_quant_output_equals_onnxruntime_qdq_within_one_lsb(exported, tmp_path, scheme):
    model, path = exported[scheme]
    result = run_quantize(QuantizeConfig(scheme=get_scheme(scheme), frames=0), path, [], tmp_path)
    assert result.calibrated == () and len(result.imported) > 10
    params = json.loads(result.quant_params.read_text())
    lsb = _logits_scale(params)
    qdq = make_session(onnx.load(str(result.qdq_onnx)))
    raw = make_session(onnx.load(str(path)))
    for frame in smooth_frames(3, seed=20):
        with torch.no_grad():
            expected = model(torch.from_numpy(frame)).numpy()
        assert np.abs(qdq.run(None, {"input": frame})[0] - expected).max() <= lsb * 1.001
        assert np.abs(raw.run(None, {"input": frame})[0] - expected).max() <= lsb * 1.001


def test_qat_export_is_standard_qdq_with_model_info(exported):
    _, path = exported["tda4vm"]
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert read_model_info(model).name == "tiny"


def test_qat_ranges_are_snapped_to_a_power_of_2_target(exported, tmp_path):
    _, path = exported["per-channel-asym"]
    result = run_quantize(QuantizeConfig(scheme=get_scheme("tda4vm"), frames=0), path, [], tmp_path)
    params = json.loads(result.quant_params.read_text())
    activations = [t for t in params["tensors"] if t["role"] == "activation"]
    assert all(t["source"].startswith(("qat", "shared:")) for t in activations)
    assert any("snapped-pow2" in t["source"] for t in activations)
    assert set(result.snapped) <= set(result.imported) and result.snapped
    qdq = onnx.load(str(result.qdq_onnx))
    scales = [numpy_helper.to_array(i) for i in qdq.graph.initializer if i.name.endswith("_scale")]
    assert all(is_pow2(float(s)) for scale in scales for s in np.ravel(scale))
    weights = [t for t in params["tensors"] if t["role"] == "weight"]
    assert all(t["source"].startswith("qat") and isinstance(t["scale"], float) for t in weights)


def test_tensors_without_qat_ranges_are_calibrated_and_reported(exported, tmp_path):
    _, path = exported["tda4vm"]
    model = onnx.load(str(path))
    # Drop the activation Q/DQ pair after the last Concat: that tensor now has no range.
    producers = {o: n for n in model.graph.node for o in n.output}
    concat = [n for n in model.graph.node if n.op_type == "Concat"][-1]
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == dq.output[0]:
                node.input[i] = concat.output[0]
    model.graph.node.remove(q)
    model.graph.node.remove(dq)
    assert producers[concat.output[0]] is concat
    partial = tmp_path / "partial.onnx"
    onnx.save(model, str(partial))
    result = run_quantize(
        QuantizeConfig(scheme=get_scheme("tda4vm"), frames=2), partial, smooth_frames(2), tmp_path
    )
    assert result.calibrated == (concat.output[0],)
    params = json.loads(result.quant_params.read_text())
    assert params["qat_import"]["calibrated"] == [concat.output[0]]
    assert concat.output[0] not in params["qat_import"]["kept_activation_ranges"]


def test_training_step_moves_weights_and_observes_ranges():
    model = prepare_qat(tiny_model(), get_scheme("per-channel"), INPUT_SHAPE).train()
    convs = [m for m in model.modules() if isinstance(m, QConvBnAct)]
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    assert len(convs) == 7 and len(quantizers) > 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.from_numpy(np.concatenate(smooth_frames(2, seed=30)))
    before = convs[0].weight.detach().clone()
    loss = model(batch).square().mean()
    loss.backward()
    optimizer.step()
    assert all(q.initialized for q in quantizers)
    assert convs[0].weight.grad is not None and not torch.equal(before, convs[0].weight.detach())


def test_qat_state_dict_round_trips_into_a_fresh_wrapper():
    trained = _qat("tda4vm")
    fresh = prepare_qat(tiny_model(seed=5), get_scheme("tda4vm"), INPUT_SHAPE)
    fresh.load_state_dict(trained.state_dict())
    frame = torch.from_numpy(smooth_frames(1, seed=50)[0])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(frame), trained(frame))


def test_prepare_qat_leaves_the_input_model_alone():
    original = tiny_model()
    state = {k: v.clone() for k, v in original.state_dict().items()}
    prepare_qat(original, get_scheme("tda4vm"), INPUT_SHAPE)
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())


def test_untrained_quantizers_refuse_to_export(tmp_path):
    model = prepare_qat(tiny_model(), get_scheme("tda4vm"), INPUT_SHAPE)
    with pytest.raises(SegcompileError, match="without a range"):
        export_qat_onnx(model, tmp_path / "x.onnx")


class _DecoderNet(torch.nn.Module):
    """Max-pool, image pooling broadcast back by nearest resize, transposed-conv decoder, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
        )
        self.pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 8, 1))
        self.up = torch.nn.ConvTranspose2d(16, 4, 4, 4)
        self.drop = torch.nn.Dropout2d(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc(x)
        g = torch.nn.functional.interpolate(self.pool(a), size=a.shape[-2:], mode="nearest")
        return self.up(self.drop(torch.cat([a, g], 1)))


def test_qat_covers_pooling_and_transposed_conv_decoders(tmp_path):
    scheme = get_scheme("per-channel")
    torch.manual_seed(0)
    model = prepare_qat(_DecoderNet().eval(), scheme, INPUT_SHAPE)
    assert sum(isinstance(m, QConvBnAct) for m in model.modules()) == 3
    observe_qat(model, [torch.from_numpy(f) for f in smooth_frames(2, seed=40)])
    path = export_qat_onnx(model.eval(), tmp_path / "qat.onnx")
    result = run_quantize(QuantizeConfig(scheme=scheme, frames=0), path, [], tmp_path)
    assert result.calibrated == ()
    lsb = _logits_scale(json.loads(result.quant_params.read_text()))
    frame = smooth_frames(1, seed=41)[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(frame)).numpy()
    got = make_session(onnx.load(str(result.qdq_onnx))).run(None, {"input": frame})[0]
    assert np.abs(got - expected).max() <= lsb * 1.001


@pytest.mark.slow
def test_prepare_qat_wraps_a_zoo_model():
    from segcompile.zoo import build_model

    model = build_model("cityscapes_mobilenetv2s16_deeplabv3lite_768x384")
    shape = (1, 3, 64, 64)
    qat = prepare_qat(model, get_scheme("tda4vm"), shape)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, QConvBnAct) for m in qat.modules()) == convs
    observe_qat(qat, [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))])
    assert qat.eval()(torch.zeros(shape)).shape == (1, 19, 64, 64)


def test_fixture_paths_are_files(exported):
    assert all(Path(path).is_file() for _, path in exported.values())


def test_qdq_from_onnxruntime_quantizer_is_imported_with_its_fused_relus_restored(tmp_path_factory, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from quantize_nets import tiny_onnx

    float_onnx = tiny_onnx(tmp_path_factory)
    frames = smooth_frames(4)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": f} for f in frames])

        def get_next(self):
            return next(self.batches, None)

    ort_qdq = tmp_path / "ort.qdq.onnx"
    quantize_static(
        str(float_onnx),
        str(ort_qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    assert "Relu" not in {n.op_type for n in onnx.load(str(ort_qdq)).graph.node}  # folded into Q ranges
    result = run_quantize(QuantizeConfig(scheme=get_scheme("tda4vm"), frames=0), ort_qdq, [], tmp_path / "q")
    params = json.loads(result.quant_params.read_text())
    assert result.calibrated == () and len(params["qat_import"]["restored_relus"]) == 4
    assert {"Relu"} <= {n.op_type for n in onnx.load(str(result.qdq_onnx)).graph.node}
    reference = make_session(onnx.load(str(float_onnx))).run(None, {"input": frames[0]})[0]
    got = make_session(onnx.load(str(result.qdq_onnx))).run(None, {"input": frames[0]})[0]
    assert np.sqrt(((got - reference) ** 2).mean() / (reference**2).mean()) < 0.1


def test_prepare_qat_needs_the_training_crop_shape():
    with pytest.raises(SegcompileError, match="input_shape"):
        prepare_qat(tiny_model(), get_scheme("tda4vm"))
