"""The model zoo: architectures, MAC counts against the seed table, the registry and `segcompile models`."""

from __future__ import annotations

import collections
import json
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from segcompile.cli import main
from segcompile.data.classes import DATASET_CLASSES
from segcompile.errors import SegcompileError
from segcompile.zoo import build_model, build_network, count_macs, entry_macs, get_entry, list_entries
from segcompile.zoo.regnetx import REGNETX_CONFIGS

# The EdgeAI-Torchvision table of /work/shared/SEED-segmentation-zoo.md, transcribed as the specification:
# (dataset, backbone, head, qat, (width, height), seed GigaMACs, seed mIoU%).
SEED_TABLE = [
    ("ade20k32", "mobilenetv2s16", "deeplabv3lite", False, (512, 512), 3.28, 51.01),
    ("ade20k32", "mobilenetv2", "unetlite", False, (512, 512), 2.427, 49.95),
    ("ade20k32", "mobilenetv2", "fpnlite", False, (512, 512), 3.481, 50.72),
    ("ade20k32", "mobilenetv2w1.4", "fpnlite", False, (512, 512), 6.646, 52.93),
    ("ade20k32", "regnetx400mf", "fpnlite", False, (384, 384), 3.1526, 51.03),
    ("ade20k32", "regnetx800mf", "fpnlite", False, (512, 512), 8.0683, 53.29),
    ("cocoseg21", "mobilenetv2s16", "deeplabv3lite", False, (512, 512), 3.161, 57.77),
    ("cocoseg21", "mobilenetv2", "unetlite", False, (512, 512), 2.009, 57.01),
    ("cocoseg21", "mobilenetv2", "fpnlite", False, (512, 512), 3.357, None),
    ("cocoseg21", "regnetx800mf", "fpnlite", False, (512, 512), 7.864, 61.15),
    ("cityscapes", "mobilenetv2s16", "deeplabv3lite", False, (768, 384), 3.54, 69.13),
    ("cityscapes", "mobilenetv2", "unetlite", False, (768, 384), 2.20, 68.94),
    ("cityscapes", "mobilenetv2", "fpnlite", False, (768, 384), 3.84, 70.39),
    ("cityscapes", "mobilenetv2", "fpnlite", False, (1536, 768), 15.07, 74.61),
    ("cityscapes", "mobilenetv2s16", "deeplabv3lite", True, (768, 384), 3.54, 68.77),
    ("cityscapes", "mobilenetv2", "unetlite", True, (768, 384), 2.20, 68.18),
    ("cityscapes", "mobilenetv2", "fpnlite", True, (768, 384), 3.84, 69.88),
    ("cityscapes", "regnetx800mf", "fpnlite", False, (768, 384), 8.84, 72.01),
    ("cityscapes", "regnetx1.6gf", "fpnlite", False, (1024, 512), 24.29, 75.84),
    ("cityscapes", "regnetx3.2gf", "fpnlite", False, (1536, 768), 111.16, 78.90),
    ("cityscapes", "regnetx400mf", "fpnlite", False, (768, 384), 6.09, 68.03),
    ("cityscapes", "regnetx400mf", "fpnlite", False, (1536, 768), 24.37, 73.96),
]


def _name(dataset, backbone, head, qat, size):
    return f"{dataset}_{backbone}_{head}{'_qat' if qat else ''}_{size[0]}x{size[1]}"


SEED_NAMES = [_name(*row[:5]) for row in SEED_TABLE]


def _on_meta(build, *args, **kwargs):
    """Build a network on the meta device: shapes and structure without allocating or initialising weights."""
    with torch.device("meta"):
        return build(*args, **kwargs)


# Our GigaMACs relative to the seed's, (ours - seed) / seed, must fall inside these bounds.
# Default: the seed prints 3-5 significant digits (2.20 stands for 2.195..2.205), so +-0.5%.
DEFAULT_BOUNDS = (-0.005, 0.005)
# Rows that cannot match, each with the reason and a bound just around what is measured (sign included).
_ADE_REASON = (
    "the ADE20K32 models come from TI's older jacinto-ai-pytorch (the model zoo's "
    "jai-pytorch/deeplabv3lite_mobilenetv2_512x512_ade20k32_20210308.onnx); their counts run 0.06-0.16 "
    "GMACs above the edgeai-torchvision architecture, which the same backbone+head rows on COCOSeg21 "
    "and Cityscapes reproduce to 0.2%, so the gap is that older code, not this architecture"
)
_FPN_768_REASON = (
    "the seed's 3.84 contradicts its own 1536x768 row of the same network (15.07 / 4 = 3.77); "
    "ours is exactly a quarter of our 1536x768 count (test_macs_scale_exactly_with_pixel_count)"
)
_REGNETX16_REASON = (
    "TI's published fpn_aspp_regnetx1p6gf config (decoder/ASPP 264 ch, grouped at the encoder's group "
    "width 24) gives 26.37; none of TI's decoder widths (256/264/288) reproduces 24.29 (only an "
    "unpublished 216-channel decoder comes near, 24.20), while the same code's 400MF/800MF/3.2GF rows "
    "match to 0.05%"
)
ROW_BOUNDS: dict[str, tuple[float, float, str]] = {
    "ade20k32_mobilenetv2s16_deeplabv3lite_512x512": (-0.025, -0.015, _ADE_REASON),
    "ade20k32_mobilenetv2_unetlite_512x512": (-0.035, -0.025, _ADE_REASON),
    "ade20k32_mobilenetv2_fpnlite_512x512": (-0.03, -0.015, _ADE_REASON),
    "ade20k32_mobilenetv2w1.4_fpnlite_512x512": (-0.025, -0.01, _ADE_REASON),
    "ade20k32_regnetx400mf_fpnlite_384x384": (-0.03, -0.015, _ADE_REASON),
    "ade20k32_regnetx800mf_fpnlite_512x512": (-0.025, -0.015, _ADE_REASON),
    "cityscapes_mobilenetv2_fpnlite_768x384": (-0.025, -0.015, _FPN_768_REASON),
    "cityscapes_mobilenetv2_fpnlite_qat_768x384": (-0.025, -0.015, _FPN_768_REASON),
    "cityscapes_regnetx1.6gf_fpnlite_1024x512": (0.08, 0.09, _REGNETX16_REASON),
}


# ---------------------------------------------------------------- registry


def test_registry_holds_every_seed_row_with_its_numbers():
    entries = {e.name: e for e in list_entries()}
    for (dataset, backbone, head, qat, size, gmacs, miou), name in zip(SEED_TABLE, SEED_NAMES, strict=True):
        entry = entries[name]
        assert (entry.dataset, entry.backbone, entry.head, entry.qat, entry.input_size) == (
            dataset,
            backbone,
            head,
            qat,
            size,
        )
        assert entry.seed_gmacs == gmacs and entry.seed_miou == miou
        assert entry.num_classes == len(DATASET_CLASSES[dataset])
        assert entry.class_names == DATASET_CLASSES[dataset]


def test_registry_has_the_seed_rows_plus_the_demo_model_and_nothing_else():
    names = [e.name for e in list_entries()]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted([*SEED_NAMES, "demo_mobilenetv2s16_deeplabv3lite_160x128"])
    assert all(name == name.lower() for name in names)


def test_demo_entry_is_a_half_width_s16_deeplab_for_the_demo_classes():
    entry = get_entry("demo_mobilenetv2s16_deeplabv3lite_160x128")
    assert entry.input_size == (160, 128) and entry.input_shape == (1, 3, 128, 160)
    assert entry.num_classes == 8 and entry.class_names == DATASET_CLASSES["demo"]
    assert entry.width_mult == 0.5 and entry.seed_gmacs is None
    params = sum(p.numel() for p in build_model(entry).parameters())
    assert params * 4 < 4_000_000  # float32 checkpoint stays a few MB


def test_get_entry_is_case_insensitive_and_suggests_close_names_for_unknown_ones():
    assert (
        get_entry("COCOSEG21_MobileNetV2_UNetLite_512x512").name == "cocoseg21_mobilenetv2_unetlite_512x512"
    )
    with pytest.raises(SegcompileError, match="cityscapes_regnetx800mf_fpnlite_768x384") as info:
        get_entry("cityscapes_regnetx800_fpnlite_768x384")
    assert "unknown zoo model 'cityscapes_regnetx800_fpnlite_768x384'" in str(info.value)


def test_entry_model_info_carries_name_classes_and_input_size():
    info = get_entry("cityscapes_regnetx400mf_fpnlite_768x384").model_info()
    assert (info.name, info.num_classes, info.input_size) == (
        "cityscapes_regnetx400mf_fpnlite_768x384",
        19,
        (768, 384),
    )
    assert info.input_shape == (1, 3, 384, 768) and info.class_names[0] == "road"


# ---------------------------------------------------------------- MAC counts


def test_whole_table_counts_fast_on_the_meta_device():
    # Runs before the other users of entry_macs' cache; CPU time, so a busy machine does not matter.
    entry_macs.cache_clear()
    start = time.process_time()
    total = sum(entry_macs(entry) for entry in list_entries())
    assert time.process_time() - start < 30
    assert total > 200e9


@pytest.mark.parametrize("name", SEED_NAMES)
def test_macs_match_the_seed_table(name):
    entry = get_entry(name)
    ours = entry_macs(entry) / 1e9
    low, high, *_reason = ROW_BOUNDS.get(name, (*DEFAULT_BOUNDS, "rounding of the seed's figure"))
    relative = (ours - entry.seed_gmacs) / entry.seed_gmacs
    assert low <= relative <= high, f"{name}: ours {ours:.4f} vs seed {entry.seed_gmacs} ({relative:+.2%})"


def test_macs_scale_exactly_with_pixel_count():
    fpn_small = entry_macs("cityscapes_mobilenetv2_fpnlite_768x384")
    assert fpn_small * 4 == entry_macs("cityscapes_mobilenetv2_fpnlite_1536x768")
    assert entry_macs("cityscapes_regnetx400mf_fpnlite_768x384") * 4 == entry_macs(
        "cityscapes_regnetx400mf_fpnlite_1536x768"
    )
    # TI's Semantic_Segmentation.md also lists RegNetX3.2GF+FPN at 1024x512: 49.40 GigaMACs.
    model = _on_meta(build_model, "cityscapes_regnetx3.2gf_fpnlite_1536x768")
    assert count_macs(model, (1, 3, 512, 1024)) / 1e9 == pytest.approx(49.40, abs=0.005)


def test_count_macs_counts_plain_grouped_dilated_convs_and_linear_layers_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x10x10 outputs x 3*3*3 = 21600
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),  # depthwise: 800 x 9 = 7200
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),  # 16x5x5 outputs x 4*3*3 = 14400
        nn.Flatten(),
        nn.Linear(400, 10),  # 4000
    )
    assert count_macs(model, (1, 3, 10, 10)) == 21600 + 7200 + 14400 + 4000
    assert count_macs(model, (2, 3, 10, 10)) == 2 * (21600 + 7200 + 14400 + 4000)


def test_count_macs_leaves_the_model_untouched():
    model = build_network("mobilenetv2", "fpnlite", 3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_macs(model, (1, 3, 64, 64))
    assert model.training
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------- architectures


FAMILIES = [
    ("mobilenetv2", "fpnlite"),
    ("mobilenetv2", "unetlite"),
    ("mobilenetv2", "deeplabv3lite"),
    ("mobilenetv2s16", "deeplabv3lite"),
    ("mobilenetv2w1.4", "fpnlite"),
    ("regnetx400mf", "fpnlite"),
    ("regnetx800mf", "fpnlite"),
    ("regnetx1.6gf", "fpnlite"),
    ("regnetx3.2gf", "fpnlite"),
    ("regnetx800mf", "unetlite"),
    ("regnetx800mf", "deeplabv3lite"),
]


@pytest.mark.parametrize(("backbone", "head"), FAMILIES)
def test_every_family_gives_logits_at_the_input_size(backbone, head):
    model = build_network(backbone, head, num_classes=5)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (2, 5, 64, 96)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0  # a real, input-dependent map, not a constant


@pytest.mark.parametrize("name", [e.name for e in list_entries()])
def test_every_entry_builds_with_its_class_count(name):
    entry = get_entry(
        name
    )  # real forwards of every architecture family are tested above; shapes suffice here
    logits = _on_meta(build_model, entry)(torch.zeros(entry.input_shape, device="meta"))
    assert logits.shape == (1, entry.num_classes, entry.input_size[1], entry.input_size[0])


def test_num_classes_override_changes_only_the_output_channels():
    model = build_model("cityscapes_mobilenetv2_fpnlite_768x384", num_classes=3)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_mobilenetv2_ends_at_320_channels_without_the_1280_conv():
    backbone = build_network("mobilenetv2", "fpnlite", 3).backbone
    assert backbone.out_channels == (16, 24, 32, 96, 320)
    assert (
        max(m.out_channels for m in backbone.modules() if isinstance(m, nn.Conv2d)) == 960
    )  # 160 x 6 expansion
    assert all(isinstance(m, nn.ReLU6) for m in backbone.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)))
    wide = build_network("mobilenetv2w1.4", "fpnlite", 3).backbone
    assert wide.out_channels == (24, 32, 48, 136, 448) and wide.stem[0].out_channels == 48


def test_s16_backbone_keeps_stride_16_with_dilation():
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        s32 = build_network("mobilenetv2", "deeplabv3lite", 3).backbone(x)
        s16 = build_network("mobilenetv2s16", "deeplabv3lite", 3).backbone(x)
    assert [f.shape[-1] for f in s32] == [32, 16, 8, 4, 2]
    assert [f.shape[-1] for f in s16] == [32, 16, 8, 4, 4]
    dilated = [
        m
        for m in build_network("mobilenetv2s16", "deeplabv3lite", 3).backbone.modules()
        if isinstance(m, nn.Conv2d) and m.dilation == (2, 2)
    ]
    assert dilated and all(m.stride == (1, 1) for m in dilated)


@pytest.mark.parametrize("name", list(REGNETX_CONFIGS))
def test_regnetx_stages_have_the_published_depths_widths_and_group_width(name):
    config = REGNETX_CONFIGS[name]
    backbone = _on_meta(build_network, name, "fpnlite", 3).backbone
    assert tuple(len(stage) for stage in backbone.stages) == config.depths
    assert backbone.out_channels == (32, *config.widths)
    for stage in backbone.stages:
        for block in stage:
            grouped = block.f[1][0]
            assert grouped.kernel_size == (3, 3)
            assert grouped.in_channels // grouped.groups == config.group_width


def test_regnetx_heads_use_the_encoder_group_width_in_their_3x3_convs():
    model = _on_meta(build_network, "regnetx1.6gf", "fpnlite", 3)
    spatial = [m for m in model.head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert spatial and all(m.in_channels // m.groups == 24 for m in spatial)
    mobilenet = build_network("mobilenetv2", "fpnlite", 3)
    spatial = [m for m in mobilenet.head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert spatial and all(m.groups == m.in_channels for m in spatial)  # depthwise throughout


def test_build_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    rng_state = torch.random.get_rng_state()
    first = build_model("demo_mobilenetv2s16_deeplabv3lite_160x128", seed=0).state_dict()
    again = build_model("demo_mobilenetv2s16_deeplabv3lite_160x128", seed=0).state_dict()
    other = build_model("demo_mobilenetv2s16_deeplabv3lite_160x128", seed=1).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_unknown_backbone_or_head_is_a_clear_error():
    with pytest.raises(SegcompileError, match="unknown backbone 'resnet50'"):
        build_network("resnet50", "fpnlite", 3)
    with pytest.raises(SegcompileError, match="unknown head 'pspnet'"):
        build_network("mobilenetv2", "pspnet", 3)


def test_demo_model_exports_with_dynamo_to_int8_friendly_ops_and_matches_onnxruntime():
    entry = get_entry("demo_mobilenetv2s16_deeplabv3lite_160x128")
    model = build_model(entry)
    x = torch.randn(entry.input_shape, generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, verbose=False)
    proto = program.model_proto
    assert proto.opset_import[0].version >= 17
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert set(ops) <= {"Conv", "Relu", "Clip", "Add", "Concat", "Resize", "AveragePool"}, ops
    assert ops["Conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        reference = model(x).numpy()
    assert ours.shape == (1, 8, 128, 160)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


# ---------------------------------------------------------------- CLI


def test_models_list_json_has_every_seed_row_with_our_gmacs():
    result = CliRunner().invoke(main, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(SEED_NAMES) <= set(rows)
    row = rows["cocoseg21_mobilenetv2_unetlite_512x512"]
    assert row["dataset"] == "cocoseg21" and row["num_classes"] == 21 and row["input_size"] == [512, 512]
    assert row["gmacs"] == pytest.approx(2.009, abs=0.001) and row["seed_gmacs"] == 2.009
    assert all(rows[name]["gmacs"] == round(entry_macs(name) / 1e9, 4) for name in SEED_NAMES)


def test_models_list_prints_a_table_with_one_line_per_entry():
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "dataset", "classes"]
    assert len(lines) == 1 + len(list_entries())
    line = next(line for line in lines if line.startswith("cityscapes_regnetx3.2gf_fpnlite_1536x768 "))
    assert line.split()[1:] == ["cityscapes", "19", "1536x768", "111.157", "111.160", "78.90"]


def test_models_show_prints_the_architecture_summary():
    result = CliRunner().invoke(main, ["models", "show", "cityscapes_regnetx800mf_fpnlite_768x384"])
    assert result.exit_code == 0, result.output
    fields = dict(
        line.split(None, 1)
        for line in result.stdout.splitlines()
        if line.split()[0] in ("backbone", "head", "params", "GMACs", "classes")
    )
    assert fields["backbone"].startswith("regnetx800mf")
    assert fields["head"].startswith("fpnlite (decoder 256 ch, group size 16)")
    params = sum(
        p.numel() for p in _on_meta(build_model, "cityscapes_regnetx800mf_fpnlite_768x384").parameters()
    )
    assert fields["params"].startswith(f"{params:,}")
    assert float(fields["GMACs"]) == pytest.approx(8.838, abs=0.001)
    assert fields["classes"].startswith("19: road, sidewalk")


def test_models_show_unknown_name_exits_non_zero_with_one_line_error():
    result = CliRunner().invoke(main, ["models", "show", "cityscapes_mobilenetv3_fpnlite_768x384"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: unknown zoo model 'cityscapes_mobilenetv3_fpnlite_768x384'")
