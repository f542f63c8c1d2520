#!/usr/bin/env bash
# Stage what install-edge.sh needs into DIR: the project's wheel and its aarch64 dependency wheels
# (from PyPI), the models, the systemd units and the first-boot script. Used by deploy/image/build
# and by the pi-gen stage (deploy/pi-gen).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${1:?usage: stage.sh DIR}
PY=${PY:-.venv/bin/python}
rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/models" "$STAGE/units"
$PY -m pip wheel -q --no-deps -w "$STAGE/wheels" .
$PY -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --platform any \
  -d "$STAGE/wheels" "numpy>=1.26" "opencv-python-headless>=4.8" "onnxruntime>=1.17" "paho-mqtt>=2.0" "pydantic>=2.5" "cryptography>=42" "prometheus-client>=0.20"
# every shipped model: the float32 pair, its int8 variants ([pipeline] int8) and the box refiner
cp models/*.onnx "$STAGE/models/"
cp deploy/image/units/*.service "$STAGE/units/"
cp deploy/image/edge-firstboot.sh deploy/image/install-edge.sh "$STAGE/"
