# segcompile: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSROOT_STAMP := .cache/aarch64/.ready
MODELS_STAMP  := .cache/models/.ready
DEMO_MODEL := demo_mobilenetv2s16_deeplabv3lite_160x128
DEMO_OUT   := build/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-quick lint train-demo demo-data bench clean

setup: $(STAMP) $(SYSROOT_STAMP) $(MODELS_STAMP)

# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,render,distributed,tune]'
	touch $(STAMP)

# Cross compilers and an aarch64 Python under qemu-user, to build for and run on the boards' ARM cores.
$(SYSROOT_STAMP): scripts/setup-aarch64-sysroot.sh | $(STAMP)
	bash scripts/setup-aarch64-sysroot.sh

# Third-party ONNX files (e.g. PaddlePaddle's PP-OCRv4 detector) that the bring-your-own-ONNX tests compile.
$(MODELS_STAMP): scripts/fetch-third-party-models.sh | $(STAMP)
	bash scripts/fetch-third-party-models.sh

demo: setup
	$(BIN)/segcompile build --model $(DEMO_MODEL) --target tda4vm \
		--calib demo:calib --eval demo:eval --out $(DEMO_OUT)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-quick: setup
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check segcompile tests scripts bench

# Re-render the bundled demo scenes (deterministic; needs the `render` extra, pybullet).
demo-data: $(STAMP)
	$(BIN)/python -m segcompile.data.demo_scenes --out calibration/demo --seed 0

# Re-train the bundled demo checkpoint from scratch on the demo training frames, in two phases:
# 40 epochs with strong augmentation, then 30 epochs of fine-tuning with light augmentation.
DEMO_WEIGHTS := segcompile/zoo/weights/$(DEMO_MODEL).pt
train-demo: $(STAMP)
	$(BIN)/segcompile train --model $(DEMO_MODEL) --data demo:train --eval demo:eval --threads 1 \
		--epochs 40 --batch-size 16 --lr 4e-3 --augment strong --out build/train-demo/phase1.pt
	$(BIN)/segcompile train --model $(DEMO_MODEL) --data demo:train --eval demo:eval --threads 1 \
		--epochs 30 --batch-size 16 --lr 3e-3 --augment light --init build/train-demo/phase1.pt \
		--out $(DEMO_WEIGHTS)

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf build .pytest_cache .ruff_cache
