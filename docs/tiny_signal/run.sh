#!/bin/bash
# Issue 18, item 2: the smallest BERT-tiny pretraining with signal on the suite's linear probes.
# The main command's recipe (configs/bert.py:tiny, 2 x 128) at 500, 1,000 and 2,000 steps (each
# its own schedule: 80 warm-up steps, linear decay to 0 at the last step), each probed with 3
# seeds, beside random init of the same shape and tokenizer; the 4,000-step row is the main
# command's (docs/evaluate/probe_tiny). Run on the 2-core VM, niced, beside another job.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
OUT=docs/tiny_signal
WORK=${WORK:-workdirs/tiny_signal}
probe() {  # name, flags...
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall" nice python -m experiments.evaluate "$@" --seeds=3 \
      --out=$OUT/$name 2>&1 | grep -E 'suite.py|wall|^[^IW]' | tee $OUT/$name.log
}
for steps in 500 1000 2000; do
  /usr/bin/time -f "pretrain $steps: %e s wall" nice python -m experiments.pretrain \
      --config configs/bert.py:tiny --workdir $WORK/steps_$steps --config.train.progress_bar=False \
      --config.train.num_steps=$steps --config.train.eval_every=500 2>&1 | grep -E 'wall|^step' \
      | tee $OUT/pretrain_$steps.log
  cp $WORK/steps_$steps/metrics.jsonl $OUT/pretrain_$steps.jsonl
  probe probe_$steps --init_from=$WORK/steps_$steps
done
probe probe_random --init_from=none --shape_from=$WORK/steps_500
python -m experiments.evaluate --compare=$OUT/probe_random --compare=$OUT/probe_500 \
    --compare=$OUT/probe_1000 --compare=$OUT/probe_2000 --compare=docs/evaluate/probe_tiny --out=$OUT
