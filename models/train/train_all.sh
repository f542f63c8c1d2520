#!/usr/bin/env bash
# Retrain both models from scratch (or resume from runs/ checkpoints) and export them to models/.
# Environment: DATA (default ../shared/datasets), MINUTES per model (default 85), FT_MINUTES for the
# reader's fine-tune (default 100), THREADS (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/datasets}
MINUTES=${MINUTES:-85}
THREADS=${THREADS:-1}
mkdir -p runs

# 1. pseudo-labels for real crops, from PP-OCRv4 (Apache-2.0) inside the rapidocr-onnxruntime wheel
if [ ! -s runs/pseudo.tsv ]; then
  if [ ! -f runs/peer/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx ]; then
    $PY -m pip download -q --no-deps -d runs/peer rapidocr-onnxruntime==1.4.4
    (cd runs/peer && $PY -m zipfile -e rapidocr_onnxruntime-1.4.4-*.whl .)
  fi
  $PY -m models.train.pseudolabel --data "$DATA" --rec runs/peer/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx --out runs/pseudo.tsv
fi

# 2. both models at once (one thread each), logs and checkpoints under runs/
$PY -m models.train.detector --data "$DATA" --out runs/detector --minutes "$MINUTES" --threads "$THREADS" > runs/detector.stdout 2>&1 &
det=$!
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo.tsv --out runs/reader --minutes "$MINUTES" --threads "$THREADS" > runs/reader.stdout 2>&1 &
rd=$!
wait $det $rd

# 3. the reader again, with more real crops: PP-OCRv4 readings that the base reader agrees with are
#    kept at a lower confidence; a fine-tune on them (40% real), then the weight average of base and
#    fine-tune (WiSE-FT), which is what ships
$PY -m models.train.reader --out runs/reader --export runs/reader_base.onnx
if [ ! -s runs/pseudo2.tsv ]; then
  $PY -m models.train.pseudolabel --data "$DATA" --rec runs/peer/rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx \
    --agree runs/reader_base.onnx --out runs/pseudo2.tsv
fi
if [ ! -f runs/reader_ft/ckpt.pt ]; then
  mkdir -p runs/reader_ft && cp runs/reader/ckpt.pt runs/reader_ft/ckpt.pt
fi
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_ft --finetune --lr 1e-3 \
  --minutes "${FT_MINUTES:-100}" --steps 9000 --real-frac 0.4 --threads "$THREADS"
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_avg \
  --average runs/reader/ckpt.pt runs/reader_ft/ckpt.pt --alpha 0.3,0.5,0.7

# 4. export with metadata, quantize, score
$PY -m models.train.detector --out runs/detector --export models/plate_detector.onnx
$PY -m models.train.reader --out runs/reader_avg --export models/plate_reader.onnx
$PY -m models.train.calibrate --data "$DATA" --detector models/plate_detector.onnx --reader models/plate_reader.onnx
$PY -m models.train.quantize --data "$DATA" --detector models/plate_detector.onnx --reader models/plate_reader.onnx
.venv/bin/edge eval "$DATA/openalpr-endtoend" --out runs/eval.jsonl --threads 1
.venv/bin/edge eval --crops "$DATA/openalpr-us-crops" --threads 1
