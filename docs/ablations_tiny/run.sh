#!/bin/bash
# Issue 18, item 2: the five ablations at the tiny scale (encoders/adaptation/finetune_ablation.py:
# BERT-tiny, 4,000 steps of 32 x 128 tokens, probed by the suite and fine-tuned on topic), 3 seeds.
# Seed-major: every cell's seed 0 first (--seeds=1), then seed 1 (--seeds=2), then seed 2; a
# sweep skips the runs whose result exists, so rerunning a line resumes it (a killed run resumes
# from its last checkpoint). Run as two queues at a time on the 2-core VM, niced. The last lines
# copy each finished run's result and the sweep's table to docs/ablations_tiny/<ablation>/ and
# rewrite the verdicts on the papers' findings from them (experiments/ablation_verdicts.py).
#   docs/ablations_tiny/run.sh A 1 & docs/ablations_tiny/run.sh B 1    # then 2, then 3
# Queue C is electra_vs_mlm on relative positions at 5e-4 (experiments/electra_vs_mlm_relative.py).
# Its stored runs are the 4,000-step budget's, one process per (cell, seed), seeds 0-2, each cell
# run as: python -m experiments.electra_vs_mlm_relative --out=$WORK/electra_vs_mlm_relative \
#   --seeds=3 "--cell=ELECTRA, 4000 steps, 7e+13 FLOPs" --seed=0   # then the BERT (MLM) cell
# The discriminators' ROC AUC through training, both ELECTRA sweeps' 4,000-step cell, seeds 0-2:
#   python -m experiments.rtd_diagnostics --steps 2000,3000,4000 \
#     --workdir $WORK/<sweep>/runs/<ELECTRA run>/pretrain \
#     --out docs/ablations_tiny/<sweep>/diagnostics/ELECTRA_4000_steps__seed<s>.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
WORK=workdirs/ablations_tiny
queue=$1 seeds=$2
case $queue in
  A) ablations="masking_strategy nsp masking_rate" ;;
  B) ablations="batch_size electra_vs_mlm" ;;
  C) ablations="electra_vs_mlm_relative" ;;
esac
for name in $ablations; do
  module=experiments.ablate_$name
  [[ "$name" = electra_vs_mlm* ]] && module=experiments.$name
  nice -n 5 python -m $module --out=$WORK/$name --seeds=$seeds >> $WORK/$name.log 2>&1
  mkdir -p docs/ablations_tiny/$name/results
  cp $WORK/$name/results/*.json docs/ablations_tiny/$name/results/
  cp $WORK/$name/results.{csv,md} $WORK/$name/*.png docs/ablations_tiny/$name/  # by_rate.png too
  python -m experiments.ablation_verdicts --results docs/ablations_tiny > /dev/null
done
