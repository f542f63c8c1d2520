#!/usr/bin/env bash
# Retrain both models from scratch (or resume from runs/ checkpoints) and export them to models/.
# Environment: DATA (default ../shared/datasets), MINUTES per model (default 85), FT_MINUTES,
# FT3_MINUTES, FT4_MINUTES for the reader's fine-tunes (default 100, 85, 55), THREADS (default 1).
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

# 4. the reader's third round: a fine-tune of the averaged reader on the renderer's US habits
#    (O/0 as 0, edge-to-edge registrations, badges, bolts; Mercosur fifth A-J), averaged again
if [ ! -f runs/reader_ft3/ckpt.pt ]; then
  mkdir -p runs/reader_ft3 && cp runs/reader_avg/ckpt.pt runs/reader_ft3/ckpt.pt
fi
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_ft3 --finetune --lr 1e-3 \
  --minutes "${FT3_MINUTES:-85}" --steps 8000 --real-frac 0.35 --threads "$THREADS"
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_avg3 \
  --average runs/reader_avg/ckpt.pt runs/reader_ft3/ckpt.pt --alpha 0.3,0.5,0.7
#    fourth round: a shorter, gentler fine-tune of that (the renderer now also draws EU seals and
#    arms between the letter groups), averaged again
if [ ! -f runs/reader_ft4/ckpt.pt ]; then
  mkdir -p runs/reader_ft4 && cp runs/reader_avg3/ckpt.pt runs/reader_ft4/ckpt.pt
fi
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_ft4 --finetune --lr 5e-4 \
  --minutes "${FT4_MINUTES:-55}" --steps 6000 --real-frac 0.35 --threads "$THREADS"
$PY -m models.train.reader --data "$DATA" --pseudo runs/pseudo2.tsv --out runs/reader_avg4 \
  --average runs/reader_avg3/ckpt.pt runs/reader_ft4/ckpt.pt --alpha 0.3,0.5,0.7

# 5. the detector's fine-tunes, each a stage starting from the last one's checkpoint (a rerun
#    resumes a stage): hard negatives (signs, boards, vehicle lettering pasted where no plate is),
#    more of them, then drawn vehicles carrying rendered plates as extra positives beside them
$PY -m models.train.detector --data "$DATA" --out runs/detector_neg --init runs/detector/ckpt.pt --finetune \
  --lr 1e-3 --negatives 0.3 --minutes 28 --steps 3000 --threads "$THREADS"
$PY -m models.train.detector --data "$DATA" --out runs/detector_neg2 --init runs/detector_neg/ckpt.pt --finetune \
  --lr 1e-3 --negatives 0.5 --minutes 22 --steps 4000 --threads "$THREADS"
$PY -m models.train.detector --data "$DATA" --out runs/detector_syn --init runs/detector_neg2/ckpt.pt --finetune \
  --lr 5e-4 --negatives 0.5 --synthetic 0.3 --minutes 35 --steps 4000 --threads "$THREADS"

# 6. export with metadata, quantize, score
$PY -m models.train.detector --out runs/detector_syn --export models/plate_detector.onnx
$PY -m models.train.reader --out runs/reader_avg4 --export models/plate_reader.onnx
$PY -m models.train.calibrate --data "$DATA" --detector models/plate_detector.onnx --reader models/plate_reader.onnx
$PY -m models.train.quantize --data "$DATA" --detector models/plate_detector.onnx --reader models/plate_reader.onnx
# the int8 pair's own threshold and verify band (the int8 detector scores a little differently)
mkdir -p runs/int8 && cp models/plate_detector.int8.onnx runs/int8/plate_detector.onnx && cp models/plate_reader.int8.onnx runs/int8/plate_reader.onnx
$PY -m models.train.calibrate --data "$DATA" --detector runs/int8/plate_detector.onnx --reader runs/int8/plate_reader.onnx
cp runs/int8/plate_detector.onnx models/plate_detector.int8.onnx
.venv/bin/edge eval "$DATA/openalpr-endtoend" --out runs/eval.jsonl --threads 1
.venv/bin/edge eval --crops "$DATA/openalpr-us-crops" --threads 1
