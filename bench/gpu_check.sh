#!/usr/bin/env bash
# The GPU check, ready before a GPU comes: one script, one table, one JSON (OUT/gpu_check.json).
#
#   bash bench/gpu_check.sh                # on a CUDA machine: < 8 minutes on one GPU (estimated; not yet run)
#   bash bench/gpu_check.sh --dry-run      # the same steps on the CPU at toy sizes (the test suite runs this)
#   bash bench/gpu_check.sh --out DIR      # where the outputs go (default: gpu_check_out)
#
# Steps: 1. the suite's CUDA-marked tests (tests/test_cuda.py: fp16 + GradScaler with a resume that restores
# the scaler, bf16 training, the frozen-layer cache on CUDA, Classifier on CUDA); 2. bench/train_speed.py at
# the reference's shape (random weights with roberta-base dimensions, 12 layers, freeze 9, length 512,
# batch 64, 2,000 IMDB reviews, 2 epochs, naive vs fast) with reference-equivalent TFLOP/s against the card's
# bf16 peak; 3. predict throughput on 2,000 reviews (pipeline vs Classifier fp32 and --precision auto).
# IMDB comes from $SENTUNE_IMDB (default ../shared/data/imdb: train.jsonl.gz, test_small.jsonl.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
OUT=gpu_check_out
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

if [ "$DRY" = 1 ]; then
  "$PY" bench/gpu_check.py toy-data "$OUT/data"
  TRAIN="$OUT/data/train.jsonl" TEST="$OUT/data/test.jsonl" ARCH="$OUT/data/tiny-config.json"
  N_TRAIN=48 N_EVAL=24 LENGTH=32 FREEZE=1 BATCH=8 EPOCHS=1 N_PREDICT=24 DEVICE=cpu PRECISION=fp32
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "error: no CUDA GPU visible; on a CPU use: bash bench/gpu_check.sh --dry-run" >&2; exit 2; }
  IMDB="${SENTUNE_IMDB:-../shared/data/imdb}"
  TRAIN="$IMDB/train.jsonl.gz" TEST="$IMDB/test_small.jsonl.gz" ARCH=roberta-base
  N_TRAIN=2000 N_EVAL=500 LENGTH=512 FREEZE=9 BATCH=64 EPOCHS=2 N_PREDICT=2000 DEVICE=cuda PRECISION=auto
  for f in "$TRAIN" "$TEST"; do
    [ -f "$f" ] || { echo "error: $f not found; set SENTUNE_IMDB to the folder with IMDB's JSONL" >&2; exit 2; }
  done
fi

echo "== 1/3 CUDA-marked tests" >&2
# skipped tests are fine on the CPU (dry run); a failure is not
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py --junitxml "$OUT/cuda-tests.xml" >&2

echo "== 2/3 training speed (naive vs fast)" >&2
"$PY" bench/train_speed.py --random-init "$ARCH" --train-file "$TRAIN" --test-file "$TEST" \
  --limit-train "$N_TRAIN" --limit-eval "$N_EVAL" --max-length "$LENGTH" --freeze-layers "$FREEZE" \
  --batch-size "$BATCH" --epochs "$EPOCHS" --precision "$PRECISION" --json "$OUT/train_speed.json" >&2

echo "== 3/3 predict throughput (pipeline vs Classifier)" >&2
"$PY" bench/predict_speed.py --data "$TEST" --n "$N_PREDICT" --max-length "$LENGTH" --device "$DEVICE" \
  --variants pipeline,torch,auto --json "$OUT/predict_speed.json" >&2

"$PY" bench/gpu_check.py table "$OUT"
echo "wrote $OUT/gpu_check.json" >&2
