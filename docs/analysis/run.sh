#!/bin/bash
# The commands that made docs/analysis (run from the repository root with the venv active):
#   bash docs/analysis/run.sh [MODEL_WORKDIR] [HISTORY_WORKDIR] [OTHER_RUN] [OUT]
# HISTORY_WORKDIR holds every saved step of the same run (workdirs/bert_tiny keeps only its last 3
# checkpoints; workdirs/bert_tiny_history is a copy of each as it was written).
set -euo pipefail
MODEL=${1:-workdirs/bert_tiny}
HISTORY=${2:-workdirs/bert_tiny_history}
OTHER=${3:-workdirs/sentence_bert_tiny}
OUT=${4:-docs/analysis}
run() { echo "+ python -m experiments.analyze $*"; nice python -m experiments.analyze "$@" > /dev/null; }
run attention --model "$MODEL" --out "$OUT/attention"
run hidden --model "$MODEL" --split validation --layer -1 --out "$OUT/hidden"
run probe --model "$MODEL" --num_train 800 --out "$OUT/probe"
run token_loss --model "$MODEL" --baseline "$HISTORY" --baseline_step 400 --out "$OUT/token_loss"
run health --model "$HISTORY" --baseline_step 400 --out "$OUT/health"
run health --model "$HISTORY" --step 800 --baseline "$OTHER" --baseline_step 800 --out "$OUT/health_two_runs"
run attention --text "The river flows through the capital of France and into the sea." \
    --out "$OUT/minilm_attention"
