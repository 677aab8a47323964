"""int8 (onnxruntime QDQ) versus float mIoU per scheme and calibration method (issue 3 evidence).

Quantizes one float ONNX with every calibration method under each scheme, runs float and int8 models
with onnxruntime over an evaluation set and compares mIoU from confusion matrices (segcompile.verify).

    python bench/quantize_accuracy.py                 # the trained demo checkpoint (must exist)
    python bench/quantize_accuracy.py --onnx build/demo/float.onnx --schemes tda4vm per-channel
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run from a checkout without installing: the package sits one level up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_MODEL = "demo_mobilenetv2s16_deeplabv3lite_160x128"
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "segcompile" / "zoo" / "weights" / f"{DEMO_MODEL}.pt"
METHODS = ("minmax", "percentile", "entropy", "mse")


def evaluate(onnx_path: Path, dataset_spec: str, reference: list[np.ndarray] | None = None):
    """(mIoU in percent, predicted label maps, pixel agreement with ``reference`` maps or None)."""
    import onnx

    from segcompile.data.preprocess import preprocess
    from segcompile.data.spec import open_dataset
    from segcompile.modelinfo import read_model_info
    from segcompile.quantize.calibrate import make_session
    from segcompile.verify.metrics import confusion_matrix, miou_from_confusion, predict_labels, resize_labels

    model = onnx.load(str(onnx_path))
    info = read_model_info(model, str(onnx_path))
    session = make_session(model)
    input_name = session.get_inputs()[0].name
    dataset = open_dataset(dataset_spec, role="eval")
    confusion = np.zeros((info.num_classes, info.num_classes), np.int64)
    predictions = []
    for index in range(len(dataset)):
        frame = dataset[index]
        output = session.run(None, {input_name: preprocess(frame.image, info)})[0]
        labels = resize_labels(predict_labels(output, info), (frame.mask.shape[1], frame.mask.shape[0]))
        confusion += confusion_matrix(frame.mask, labels, info.num_classes, frame.name)
        predictions.append(labels)
    agreement = None
    if reference is not None:
        same = sum(int((a == b).sum()) for a, b in zip(reference, predictions, strict=True))
        agreement = same / sum(a.size for a in reference)
    return 100.0 * miou_from_confusion(confusion), predictions, agreement


def evaluate_miou(onnx_path: Path, dataset_spec: str) -> float:
    """mIoU (percent) of an ONNX model over a dataset, from one confusion matrix."""
    return evaluate(onnx_path, dataset_spec)[0]


def quantized_miou(
    float_onnx: Path,
    scheme_name: str,
    method: str,
    calib: str,
    frames: int,
    eval_spec: str,
    out: Path,
    reference: list[np.ndarray] | None = None,
) -> dict:
    """Quantize with one scheme/method and evaluate the int8 model."""
    import onnx

    from segcompile.modelinfo import read_model_info
    from segcompile.quantize import QuantizeConfig, get_scheme, run_quantize
    from segcompile.quantize.inputs import calibration_inputs

    info = read_model_info(onnx.load(str(float_onnx)), str(float_onnx))
    _, inputs = calibration_inputs(calib, info, frames)
    config = QuantizeConfig(scheme=get_scheme(scheme_name), method=method, frames=frames, progress=False)
    start = time.perf_counter()
    result = run_quantize(config, float_onnx, inputs, out / scheme_name / method)
    seconds = time.perf_counter() - start
    miou, _, agreement = evaluate(result.qdq_onnx, eval_spec, reference)
    params = json.loads(result.quant_params.read_text())
    logits_sqnr = next((t["sqnr_db"] for t in params["tensors"] if t["name"] == "logits"), None)
    return {
        "miou": round(miou, 3),
        "pixel_agreement": None if agreement is None else round(agreement, 5),
        "logits_sqnr_db": logits_sqnr,
        "quantize_seconds": round(seconds, 1),
    }


def measure(float_onnx: Path, schemes: list[str], calib: str, frames: int, eval_spec: str) -> dict:
    """Float mIoU plus int8 mIoU, drop and float/int8 pixel agreement for every scheme x method."""
    float_miou, reference, _ = evaluate(float_onnx, eval_spec)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in schemes:
            results[scheme] = {}
            for method in METHODS:
                run = quantized_miou(
                    float_onnx, scheme, method, calib, frames, eval_spec, Path(tmp), reference
                )
                run["drop"] = round(float_miou - run["miou"], 3)
                results[scheme][method] = run
                print(
                    f"{scheme:18s} {method:10s} int8 {run['miou']:.2f}  drop {run['drop']:+.2f}  "
                    f"agreement {run['pixel_agreement']:.4f}  logits SQNR {run['logits_sqnr_db']} dB",
                    flush=True,
                )
    best = {s: min(r, key=lambda m: r[m]["drop"]) for s, r in results.items()}
    return {
        "float_miou": round(float_miou, 3),
        "calib": calib,
        "calib_frames": frames,
        "eval": eval_spec,
        "int8": results,
        "best_method": best,
    }


def _export_demo(out: Path) -> Path:
    from segcompile.export.config import ExportConfig
    from segcompile.export.stage import run_export

    if not DEMO_CHECKPOINT.is_file():
        raise SystemExit(f"{DEMO_CHECKPOINT} does not exist yet (make train-demo); or pass --onnx")
    return run_export(ExportConfig(model=DEMO_MODEL, checkpoint=str(DEMO_CHECKPOINT)), out).onnx_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--onnx", type=Path, help="float ONNX with segcompile metadata (default: the demo model)"
    )
    parser.add_argument("--description", help="what the model is, recorded in the results")
    parser.add_argument("--schemes", nargs="+", default=["tda4vm", "per-channel", "per-channel-asym"])
    parser.add_argument("--calib", default="demo:calib")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--eval", dest="eval_spec", default="demo:eval")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "quantize_accuracy.json"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or _export_demo(Path(tmp))
        report = measure(onnx_path, args.schemes, args.calib, args.frames, args.eval_spec)
    report["model"] = args.description or (
        str(args.onnx) if args.onnx else f"{DEMO_MODEL} ({DEMO_CHECKPOINT.name})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: report[k] for k in ("model", "float_miou", "best_method")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
