#!/bin/bash
# The commands behind docs/ablations/ (README, "The four ablations at the quick scale"), as they
# were run on the 2-core machine (then called the tiny scale; --scale=quick is that 100-step
# schedule now): each ablation pretrains its cells (2 seeds), fine-tunes them on the
# topic task, and writes results.{csv,md,png} into --out; a rerun skips finished cells. The
# random-init references fine-tune the same recipe from config.reinit=True on the first cell's
# architecture and tokenizer (their commands are in random_init/results.md and
# albert/random_init.md).
set -euo pipefail
OUT=${OUT:-workdirs/ablations}
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
for name in masking_strategy batch_size nsp masking_rate albert deberta; do
  python -m "experiments.ablate_$name" --scale=quick --seeds=2 --out="$OUT/$name"
  mkdir -p "docs/ablations/$name"
  cp "$OUT/$name"/results.{csv,md,png} "docs/ablations/$name/"
done
cp "$OUT/masking_rate/by_rate.png" docs/ablations/masking_rate/
