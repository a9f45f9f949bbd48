#!/bin/bash
# The masking-rate sweep's 15% recipe (configs/bert.py:tiny, 4,000-step schedule, validation at
# 15% with 80/10/10 every 250 steps), stopped after the step-1000 validation, once per
# corruption split: NAME:MASK_PROB:RANDOM_PROB:SEED (the rest of the predictions keep their token).
#   docs/ablations_tiny/masking_rate/early/run.sh mask_only:1.0:0.0:0 mask_only_s1:1.0:0.0:1 \
#       keep20:0.8:0.0:0 random20:0.8:0.2:0 bert801010:0.8:0.1:0
# Each run's metrics.jsonl is copied here; its checkpoint (step 1000) stays in workdirs/early.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
here=docs/ablations_tiny/masking_rate/early
tokenizer=workdirs/ablations_tiny/masking_rate/tokenizer  # The sweep's own.
mkdir -p workdirs/early
for spec in "$@"; do
  IFS=: read -r name mask random seed <<< "$spec"
  workdir=workdirs/early/$name
  [ ! -e "$workdir" ] || { echo "$workdir exists: a resumed run would pass step 1000 unseen"; exit 1; }
  python -m experiments.pretrain --config configs/bert.py:tiny --workdir "$workdir" \
    --config.data.tokenizer_path=$tokenizer --config.seed="$seed" --config.data.shuffle_seed="$seed" \
    --config.data.mask_rate=0.15 --config.data.mask_token_prob="$mask" --config.data.random_token_prob="$random" \
    --config.data.input_format=full_sentences --config.data.static_masking=False \
    --config.eval_data.mask_rate=0.15 --config.eval_data.mask_token_prob=0.8 \
    --config.eval_data.random_token_prob=0.1 --config.eval_data.static_masking=False \
    --config.train.num_steps=4000 --config.train.eval_every=250 --config.train.eval_steps=8 \
    --config.train.log_every=50 --config.checkpoint.every_steps=1000 --config.train.progress_bar=False \
    > "$workdir.log" 2>&1 &
  pid=$!
  until grep -q '"step": 1000, "eval/' "$workdir/metrics.jsonl" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { echo "$name failed: see $workdir.log"; exit 1; }
    sleep 10
  done
  kill -TERM $pid; wait $pid || true  # SIGTERM: the trainer saves a checkpoint and stops.
  mkdir -p "$here/$name" && cp "$workdir/metrics.jsonl" "$here/$name/"
done
