#!/bin/bash
# Issue 18, item 3: the changes section 3 of results.md had not tried, one at a time, on section
# 2's command (ELECTRA-tiny at lr 5e-4, 600-step schedule, validation every 50 steps), one seed
# each, one run at a time on the 2-core VM; each run's metrics.jsonl is copied to runs/<name>.
# As run: docs/electra_lr/run_untried.sh gdes gen_half lambda_10 warmup_400 deberta_shape_gdes
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
run() {  # name, overrides...
  local name=$1; shift
  python -m experiments.pretrain --config configs/electra.py:tiny --workdir "workdirs/electra_lr_$name" \
      --config.optimizer.learning_rate=5e-4 --config.train.num_steps=600 --config.train.eval_every=50 \
      --config.train.log_every=10 --config.checkpoint.every_steps=100 --config.train.progress_bar=False \
      "$@" 2>&1 | grep -E '^step|^Plan' > "workdirs/electra_lr_$name.log"
  mkdir -p "docs/electra_lr/runs/$name"
  cp "workdirs/electra_lr_$name/metrics.jsonl" "docs/electra_lr/runs/$name/"
}
for spec in "${@:-gen_half lambda_10 warmup_400}"; do
  for name in $spec; do
    case $name in
      gen_half) run gen_half --config.model.generator_size_fraction=0.5 ;;  # width 64 (1/2 of 128)
      lambda_10) run lambda_10 --config.model.rtd_weight=10.0 ;;
      warmup_400) run warmup_400 --config.optimizer.warmup_steps=400 ;;
      gdes) run gdes --config.model.embedding_gradients=gdes ;;
      # DeBERTa-v3 tiny's shape, where its GDES recovered (docs/deberta_v3_rtd): a 4-layer
      # discriminator, a generator of its width at half its depth, GDES.
      deberta_shape_gdes) run deberta_shape_gdes --config.model.num_layers=4 \
          --config.model.generator_size_fraction=1.0 --config.model.generator_num_layers=2 \
          --config.model.embedding_gradients=gdes ;;
    esac
  done
done
