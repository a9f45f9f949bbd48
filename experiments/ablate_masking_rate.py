"""Masking-rate ablation (Wettig et al. 2022, "Should You Mask 15% in Masked Language Modeling?").

  python -m experiments.ablate_masking_rate --out /tmp/ablate_masking_rate            # tiny, 2 seeds
  python -m experiments.ablate_masking_rate --out /tmp/ablate_mr_smoke --smoke         # minutes
  python -m experiments.ablate_masking_rate --out gs://... --scale=paper --mode=print  # one job per run

Rates 0.15 / 0.30 / 0.40 / 0.60 / 0.80, each with BERT's 80/10/10 corruption and with every
predicted token replaced by [MASK]; dynamic masking over FULL-SENTENCES rows (no NSP), as the
paper. Reported: MLM validation loss at a fixed 15% (config.eval_data; the paper evaluates
all rates at 15%), the training MLM loss at each run's own rate, and topic-task accuracy /
macro-F1 after fine-tuning.
Anchor (paper, BERT-large): 40% >= 15% on GLUE and SQuAD; 80% keeps ~95% of the fine-tuning
performance. At tiny scale smaller models favour lower rates (the paper's Section 4 trend).
"""

from training import finetune_ablation, sweep

RATES = (0.15, 0.30, 0.40, 0.60, 0.80)
PAPER = {0.15: '100% (reference)', 0.40: '> 15% (best)', 0.80: '~95% of 15%'}


def paper_config(config) -> None:
  """BERT-large with the efficient recipe the paper trains with (Izsak et al. 2021), as we read
  the paper: check batch / steps / lr against its appendix before a paper-scale run."""
  config.model.update(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096)
  config.data.seq_length = 128
  config.train.update(batch_size=4096, num_steps=23_000)
  config.optimizer.update(learning_rate=2e-3, warmup_steps=1_380, b2=0.98)


def cells(scale, base):
  del scale, base
  result = []
  for corruption, probs in (('80/10/10', (0.8, 0.1)), ('[MASK] only', (1.0, 0.0))):
    for rate in RATES:
      paper = {'downstream vs 15% (BERT-large, GLUE/SQuAD)': PAPER.get(rate, '—')} \
          if corruption == '80/10/10' else {}
      result.append(sweep.Cell(
          f'rate={rate:.2f} {corruption}',
          {'data.mask_rate': rate, 'data.mask_token_prob': probs[0],
           'data.random_token_prob': probs[1], 'data.input_format': 'full_sentences',
           'data.static_masking': False}, paper))
  return result


ABLATION = finetune_ablation.Ablation(
    name='masking_rate', title='Masking rate: MLM loss at 15% and topic accuracy',
    paper='Wettig et al. 2022, "Should You Mask 15% in Masked Language Modeling?" (abstract, '
          'Sec. 3 / Table 1: BERT-large, efficient recipe); relative fine-tuning performance',
    metrics=('mlm_loss_at_15', 'train_mlm_loss', 'test_accuracy', 'test_macro_f1'), cells=cells,
    paper_config=paper_config, eval_mask_rate=0.15)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
