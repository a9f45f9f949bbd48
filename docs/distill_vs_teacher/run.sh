#!/bin/bash
# How docs/distill_vs_teacher/ was made (2026-12-04, this 2-core machine, one job at a time).
# The sweep runs every row (pretraining once per row, then fine-tuning with seeds 0 and 1);
# a rerun skips finished (row, seed) results. The teacher rows, and the 'no pretraining' seed 0,
# were carried over from the 2026-12-03 run's results.csv as result files (fine-tuning only;
# the code they ran is unchanged); every pretrained row was run on 2026-12-04.
set -euo pipefail
OUT=${OUT:-workdirs/distill_vs_teacher}
python -m experiments.distill_vs_teacher --out "$OUT" --seeds=2
for run in "$OUT"/runs/*/pretrain; do
  name=$(basename "$(dirname "$run")")
  cp "$run/metrics.jsonl" "docs/distill_vs_teacher/pretrain_${name}.jsonl"
done
cp "$OUT"/results.{csv,md,png} "$OUT"/accuracy_vs_speed.png docs/distill_vs_teacher/
