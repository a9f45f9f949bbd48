#!/bin/bash
# Fine-tuning mode for random init and BERT-tiny (1 seed each, as time allowed: 3 probe runs first,
# docs/evaluate/run.sh), then the table and plot of all five runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
OUT=docs/evaluate
run() {  # name, flags...
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall" nice python -m experiments.evaluate "$@" --mode=finetune \
      --seeds=1 --learning_rate=1e-3 --out=$OUT/$name --workdir=workdirs/evaluate_$name 2>&1 \
      | grep --line-buffered -E 'suite.py|wall|^[^IW]' | tee $OUT/$name.log
}
run finetune_random --init_from=none --shape_from=workdirs/bert_tiny
run finetune_tiny --init_from=workdirs/bert_tiny
python -m experiments.evaluate --compare=$OUT/probe_random --compare=$OUT/probe_tiny \
    --compare=$OUT/probe_minilm --compare=$OUT/finetune_random --compare=$OUT/finetune_tiny \
    --out=$OUT
