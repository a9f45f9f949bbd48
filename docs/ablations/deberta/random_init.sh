#!/bin/bash
# Random-init references for docs/ablations/deberta: the ablations' topic recipe (first 2,000
# records, length 64, mean pooling, batch 32, 2 epochs, lr 1e-3) from config.reinit=True on the
# architecture and tokenizer of the full DeBERTa cell and of the BERT cell (4 x 128 both), seed s
# from run <cell>__seed<s>; writes random_init.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
ABL=${ABL:-workdirs/ablate_deberta}
OUT=${OUT:-workdirs/ablate_deberta_random_init}
for run in DeBERTa_c2c+c2p+p2c_EMD_T4_ BERT_same_size_and_steps; do
  for S in 0 1; do
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m experiments.finetune --config configs/finetune.py:topic \
      --workdir "$OUT/${run}__seed$S" --config.init_from="$ABL/runs/${run}__seed$S/pretrain" --config.reinit=True \
      --config.data.max_length=64 --config.data.max_windows=1 --config.data.max_examples=2000 \
      --config.train.batch_size=32 --config.train.num_epochs=2 --config.head.pooling=mean \
      --config.optimizer.learning_rate=1e-3 --config.seed=$S --config.train.progress_bar=False -v 0 > /dev/null 2>&1
  done
done
python - "$OUT" > docs/ablations/deberta/random_init.md <<'PY'
import json, sys
import numpy as np
out = sys.argv[1]
print('### Random-init references for the DeBERTa ablation (scale=quick)\n')
print('The topic recipe of the ablation from `config.reinit=True` on each cell\'s architecture and '
      'tokenizer (`docs/ablations/deberta/random_init.sh`).\n')
print('| architecture | seed 0 test acc | seed 1 test acc | mean ± std | macro-F1 mean ± std |')
print('|---|---|---|---|---|')
for run, name in (('DeBERTa_c2c+c2p+p2c_EMD_T4_', 'DeBERTa-tiny (4 x 128), full cell'),
                  ('BERT_same_size_and_steps', 'BERT (4 x 128), BERT cell')):
  tests = [json.load(open(f'{out}/{run}__seed{s}/results.json'))['test'] for s in (0, 1)]
  acc = np.array([t['accuracy'] for t in tests]); f1 = np.array([t['macro_f1'] for t in tests])
  print(f'| {name} | {acc[0]:.4f} | {acc[1]:.4f} | {acc.mean():.4f} ± {acc.std(ddof=1):.4f} | '
        f'{f1.mean():.4f} ± {f1.std(ddof=1):.4f} |')
PY
cat docs/ablations/deberta/random_init.md
