"""Batch size at an equal number of training tokens (RoBERTa, Liu et al. 2019, Table 3).

  python -m experiments.ablate_batch_size --out /tmp/ablate_batch_size     # tiny, 3 seeds
  python -m experiments.ablate_batch_size --out /tmp/abs_smoke --smoke

Batches in the paper's ratio 256 : 2K : 8K with steps 1M : 125K : 31K and peak learning rates
1e-4 : 7e-4 : 1e-3. Large batches go through gradient accumulation
(`train.grad_accum_steps`), so they fit the memory of the smallest. Quick scale: batches
8 / 64 / 256 for 512 / 64 / 16 steps (the same 4096 sequences); tiny: the same batches for
40 x those steps (tiny's base runs 40 x quick's); learning rates 2x the paper's (tiny models
train at larger rates), warm-up 1% of the steps (BERT's 10k of 1M).
Reported: validation MLM perplexity and topic accuracy.
"""

from encoders.adaptation import finetune_ablation
from encoders.training import findings, sweep

# name: (paper batch, paper steps, paper lr, perplexity, MNLI-m, SST-2) -- RoBERTa Table 3.
PAPER = {'256': (256, 1_000_000, 1e-4, 3.99, 84.7, 92.7),
         '2K': (2048, 125_000, 7e-4, 3.68, 85.2, 92.9),
         '8K': (8192, 31_000, 1e-3, 3.77, 84.6, 92.8)}
TINY_SCALE = 32  # Paper batch / tiny batch.
SMOKE_BATCHES = {'256': (8, 8), '2K': (16, 4), '8K': (32, 2)}  # batch, steps

FINDINGS = (
    findings.Finding('2K-sequence batches beat 256 at equal tokens', 'RoBERTa Table 3',
                     better='bsz=2K .*', worse='bsz=256 .*', metric='mlm_perplexity',
                     lower_is_better=True),
    findings.Finding('8K-sequence batches beat 256 at equal tokens', 'RoBERTa Table 3',
                     better='bsz=8K .*', worse='bsz=256 .*', metric='mlm_perplexity',
                     lower_is_better=True),
    findings.Finding('2K-sequence batches beat 256 at equal tokens', 'RoBERTa Table 3',
                     better='bsz=2K .*', worse='bsz=256 .*', metric='probe_topic'),
)


def paper_config(config) -> None:
  config.data.seq_length = 512


def cells(scale, base):
  result = []
  for name, (batch, steps, lr, ppl, mnli, sst2) in PAPER.items():
    if scale == 'paper':
      accum = batch // 256  # Micro-batches of the smallest batch.
    elif scale in ('quick', 'tiny'):  # 4096 sequences per 100 base steps.
      batch, lr = batch // TINY_SCALE, 2 * lr
      steps = 512 * 8 // batch * base.train.num_steps // 100
      accum = max(1, batch // 64)  # Micro-batches of at most 64 rows.
    else:
      (batch, steps), lr, accum = SMOKE_BATCHES[name], 10 * lr, 1 if name != '8K' else 2
    overrides = {'train.batch_size': batch, 'train.num_steps': steps,
                 'train.grad_accum_steps': accum, 'optimizer.learning_rate': lr,
                 'optimizer.warmup_steps': max(1, steps // 100),
                 'train.eval_every': steps, 'checkpoint.every_steps': max(1, steps // 4),
                 'train.log_every': max(1, steps // 10)}
    result.append(sweep.Cell(f'bsz={name} ({batch}x{steps}, lr={lr:g})', overrides,
                             {'perplexity': ppl, 'MNLI-m': mnli, 'SST-2': sst2}))
  return result


ABLATION = finetune_ablation.Ablation(
    name='batch_size', title='Batch size at equal training tokens',
    paper='Liu et al. 2019, RoBERTa, Table 3 (BERT-base, BookCorpus+Wikipedia, ppl on held-out data)',
    metrics=('mlm_perplexity', 'test_accuracy', 'test_macro_f1'), cells=cells,
    paper_config=paper_config, findings=FINDINGS)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
