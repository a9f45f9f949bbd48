"""Input format and next-sentence prediction (RoBERTa Table 2; BERT Table 5 "No NSP").

  python -m experiments.ablate_nsp --out /tmp/ablate_nsp          # tiny, 3 seeds
  python -m experiments.ablate_nsp --out /tmp/ablate_nsp_smoke --smoke

RoBERTa's four formats: SEGMENT-PAIR + NSP, SENTENCE-PAIR + NSP, FULL-SENTENCES and
DOC-SENTENCES (no NSP), plus BERT's "No NSP" ablation (SEGMENT-PAIR input, NSP loss weight
0). Equal tokens per step, as the paper: SENTENCE-PAIR rows are short, so its batch is scaled
by the measured ratio of real tokens per row to SEGMENT-PAIR's (rounded to a multiple of 8);
the single-segment formats pack their rows full.
"""

from encoders.adaptation import finetune_ablation
from encoders.training import findings, sweep

FORMATS = {  # name: (input_format, sentence loss weight, paper numbers)
    'SEGMENT-PAIR + NSP': ('segment_pair_nsp', 1.0, {
        'RoBERTa T2 SQuAD 1.1/2.0': '90.4/78.7', 'RoBERTa T2 MNLI-m': 84.0, 'RoBERTa T2 SST-2': 92.9,
        'BERT T5 MNLI-m': 84.4, 'BERT T5 SQuAD 1.1': 88.5}),
    'SENTENCE-PAIR + NSP': ('sentence_pair_nsp', 1.0, {
        'RoBERTa T2 SQuAD 1.1/2.0': '88.7/76.2', 'RoBERTa T2 MNLI-m': 82.9, 'RoBERTa T2 SST-2': 92.1}),
    'FULL-SENTENCES': ('full_sentences', 1.0, {
        'RoBERTa T2 SQuAD 1.1/2.0': '90.4/79.1', 'RoBERTa T2 MNLI-m': 84.7, 'RoBERTa T2 SST-2': 92.5}),
    'DOC-SENTENCES': ('doc_sentences', 1.0, {
        'RoBERTa T2 SQuAD 1.1/2.0': '90.6/79.7', 'RoBERTa T2 MNLI-m': 84.7, 'RoBERTa T2 SST-2': 92.7}),
    'SEGMENT-PAIR, No NSP (BERT)': ('segment_pair_nsp', 0.0, {
        'BERT T5 MNLI-m': 83.9, 'BERT T5 SQuAD 1.1': 87.9}),
}

FINDINGS = (
    findings.Finding('Pairs of segments beat pairs of single sentences (both with NSP)',
                     'RoBERTa Table 2', better=r'SEGMENT-PAIR \+ NSP', worse=r'SENTENCE-PAIR \+ NSP',
                     metric='probe_topic'),
    findings.Finding('Full sentences without NSP beat SEGMENT-PAIR + NSP (paper: match or beat)',
                     'RoBERTa Table 2', better='FULL-SENTENCES', worse=r'SEGMENT-PAIR \+ NSP',
                     metric='probe_topic'),
    findings.Finding('Rows from one document beat rows that cross documents',
                     'RoBERTa Table 2', better='DOC-SENTENCES', worse='FULL-SENTENCES',
                     metric='probe_topic'),
    findings.Finding('Removing NSP hurts', 'BERT Table 5', better=r'SEGMENT-PAIR \+ NSP',
                     worse=r'SEGMENT-PAIR, No NSP \(BERT\)', metric='probe_topic'),
)


def paper_config(config) -> None:
  """BERT-base, batch 256, 1M steps, 512 tokens (RoBERTa Sec. 4.2's setting)."""
  config.data.seq_length = 512
  config.train.update(batch_size=256, num_steps=1_000_000)


def cells(scale, base):
  del scale
  reference = sweep.apply_overrides(base, {'data.input_format': 'segment_pair_nsp'})
  short = sweep.apply_overrides(base, {'data.input_format': 'sentence_pair_nsp'})
  ratio = (finetune_ablation.mean_tokens_per_row(reference)
           / finetune_ablation.mean_tokens_per_row(short))
  sentence_batch = max(8, int(round(base.train.batch_size * ratio / 8)) * 8)
  result = []
  for name, (input_format, weight, paper) in FORMATS.items():
    overrides = {'data.input_format': input_format, 'train.sentence_loss_weight': weight,
                 'data.static_masking': False}
    if input_format == 'sentence_pair_nsp':
      overrides['train.batch_size'] = sentence_batch
    result.append(sweep.Cell(name, overrides, paper))
  return result


ABLATION = finetune_ablation.Ablation(
    name='nsp', title='Input format and NSP at equal tokens per step',
    paper='Liu et al. 2019, RoBERTa, Table 2 (BERT-base size, BookCorpus+Wikipedia); Devlin et '
          'al. 2019, BERT, Table 5 (BERT_BASE vs No NSP)',
    metrics=('mlm_loss', 'test_accuracy', 'test_macro_f1'), cells=cells, paper_config=paper_config,
    findings=FINDINGS)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
