#!/usr/bin/env bash
# Third-party ONNX models the "bring your own ONNX" tests compile, taken from package registries at
# set-up time (never at run time) and checked against pinned sha256 sums.
#
#   ch_PP-OCRv4_det_infer.onnx  PaddlePaddle PP-OCRv4 text detection (DBNet; paddle2onnx, opset 12,
#                               dynamic axes, one-channel probability output), Apache-2.0, shipped in
#                               the rapidocr-onnxruntime 1.4.4 wheel (https://github.com/RapidAI/RapidOCR).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.cache/models"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
WHEEL_SHA256=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
MODEL_SHA256=d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
MODEL=ch_PP-OCRv4_det_infer.onnx

mkdir -p "$DEST"
if [ -f "$DEST/$MODEL" ] && echo "$MODEL_SHA256  $DEST/$MODEL" | sha256sum --check --status; then
    touch "$DEST/.ready"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PIP" download --quiet --no-deps --only-binary=:all: rapidocr-onnxruntime==1.4.4 -d "$WORK"
WHEEL=$(ls "$WORK"/rapidocr_onnxruntime-1.4.4-*.whl)
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --status || { echo "error: $WHEEL: sha256 differs" >&2; exit 1; }
"$ROOT/.venv/bin/python" - "$WHEEL" "$WORK/$MODEL" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    data = wheel.read("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
open(sys.argv[2], "wb").write(data)
PY
echo "$MODEL_SHA256  $WORK/$MODEL" | sha256sum --check --status || { echo "error: $MODEL: sha256 differs" >&2; exit 1; }
mv "$WORK/$MODEL" "$DEST/$MODEL"
touch "$DEST/.ready"
echo "fetched $DEST/$MODEL"
