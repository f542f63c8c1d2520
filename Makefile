# Every target sets itself up: a .venv virtualenv, pip packages, Debian packages when missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
THREADS ?= 1
# when make started: the tests' closing stage times count the set-up from here
STARTED := $(shell date +%s)
APT_PKGS := mosquitto fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-croscore
# plate-like faces the reader's renderer may add (reader.py --more-fonts; models/train/render.py MORE_FONT_GLOBS)
TRAIN_FONTS := fonts-opendin fonts-routed-gothic fonts-roboto-unhinted fonts-bebas-neue fonts-b612 fonts-open-sans

.PHONY: setup setup-train system-packages demo test test-image image lint eval eval-crops bench models fixtures testset clean

system-packages:
	@bash deploy/host-packages.sh $(APT_PKGS)

$(BIN)/edge: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,collector]'
	@touch $@

setup: system-packages $(BIN)/edge

# training extras (PyTorch CPU build from the local disk, onnx, Pillow)
setup-train: setup
	@bash deploy/host-packages.sh $(TRAIN_FONTS)
	$(BIN)/pip install -q -e '.[test,train]'

# The main job: replay a bundled fixture through the whole pipeline, publishing over MQTT
demo: setup
	bash deploy/demo.sh $(CLIP)

test: setup-train
	@bash deploy/host-packages.sh postgresql postgresql-postgis chromium chromium-driver
	EDGE_SETUP_STARTED=$(STARTED) $(BIN)/python -m pytest -q tests

# Only the arm64 image tests (part of `make test` too): the image (deploy/image/build, cached outside
# the clone: ~14 min cold, seconds when its inputs are unchanged), the reader under qemu-user in its
# root filesystem, first boot, layout, boot under qemu-system. EDGE_IMAGE_TESTS=0 skips them.
test-image: setup-train
	EDGE_SETUP_STARTED=$(STARTED) $(BIN)/python -m pytest -q tests/test_image.py

image: setup
	bash deploy/image/build build/image

lint: setup
	$(BIN)/ruff check edge tests models/train
	$(BIN)/mypy

# Score detector+reader on the openalpr-endtoend development split (one thread, as the floors are set)
eval: setup
	$(BIN)/edge eval $(DATA)/openalpr-endtoend --out out/eval.jsonl --threads $(THREADS)

eval-crops: setup
	$(BIN)/edge eval --crops $(DATA)/openalpr-us-crops --threads $(THREADS)

bench: setup
	$(BIN)/edge bench fixtures/videos/01_gate_day.mp4 --threads $(THREADS)

# Re-render the committed fixture clips and the small test set (needs ffmpeg for H.264)
fixtures: setup-train
	bash deploy/host-packages.sh ffmpeg
	$(BIN)/python -m models.train.fixtures --out fixtures/videos

testset: setup-train
	$(BIN)/python -m models.train.make_testset --out tests/data

# Retrain both models from scratch (resumes from runs/ checkpoints), then export to models/.
models: setup-train
	bash models/train/train_all.sh

clean:
	rm -rf out build dist *.egg-info .pytest_cache
