"""DeBERTa's ablations (He et al. 2021, Table 4: -c2p, -p2c, -EMD) and DeBERTa-v3's embedding
sharing (He et al. 2023: ES, NES, GDES under RTD), against BERT at the same size and steps.

  python -m experiments.ablate_deberta --out /tmp/ablate_deberta                 # tiny, 3 seeds
  python -m experiments.ablate_deberta --out DIR --scale=quick --seeds=2         # docs/ablations/deberta
  python -m experiments.ablate_deberta --out /tmp/ablate_deberta_smoke --smoke   # minutes
  python -m experiments.ablate_deberta --out DIR --scale=paper --mode=print      # DeBERTa-base

Cells: the full model (c2c + c2p + p2c, EMD; MLM as v2), each term or EMD removed, v3's RTD
with each embedding sharing (the discriminator is fine-tuned; its row's MLM numbers are
its generator's, half its depth, so they do not compare with the MLM rows), and BERT
(learned absolute positions, no EMD, LayerNorm eps 1e-12, two token types) on the same
data, tokenizer, size and steps. Scales: smoke is a 2-layer width-32 model, a few steps,
every cell (--cell runs one); quick and tiny are configs/deberta.py:tiny (4 x 128) on the
ablations' schedules (encoders/adaptation/finetune_ablation.py: 100 or TINY_STEPS steps of
32 x 128; at quick's 100, RTD's discriminator may still sit at the all-original prior,
docs/deberta_v3_rtd/; the stored table, docs/ablations/deberta, is quick's); paper is
configs/deberta.py:base (the release's mlm.sh; rtd.sh's base rate is the same 1e-4).

The papers' dev numbers stand beside ours (PAPER). DeBERTa's Table 4 pretrains base models on
Wikipedia + BookCorpus for 1M steps of 256; DeBERTaV3's sharing comparison (its base models with
RTD) on the same data for 125k steps of 2,048, as many sequences in larger batches, and it
compares with Table 4's DeBERTa-base row as its MLM reference.
"""
from encoders.adaptation import finetune_ablation
from encoders.configs import deberta as deberta_configs
from encoders.training import sweep

FULL = 'DeBERTa: c2c+c2p+p2c, EMD (T4)'
# The papers' dev numbers per cell, as printed: He et al. 2021 (arXiv 2006.03654v6), Table 4
# (MNLI-m/mm accuracy, SQuAD F1/EM, RACE accuracy; BERT's row is RoBERTa-ReImp-base, RoBERTa
# re-pretrained on the ablation's data and steps), and He et al. 2023 (arXiv 2111.09543), the
# embedding-sharing comparison of DeBERTa-base with RTD (MNLI-m/mm, SQuAD 2.0 F1/EM).
PAPER = {
    FULL: {'MNLI-m/mm': '86.3/86.2', 'SQuAD1.1': '92.1/86.1', 'SQuAD2.0': '82.5/79.3', 'RACE': 71.7},
    '-c2p (T4)': {'MNLI-m/mm': '85.9/85.7', 'SQuAD1.1': '91.6/85.8', 'SQuAD2.0': '81.3/78.3',
                  'RACE': 69.3},
    '-p2c (T4)': {'MNLI-m/mm': '86.0/85.8', 'SQuAD1.1': '91.7/85.7', 'SQuAD2.0': '80.8/77.6',
                  'RACE': 69.6},
    '-EMD (T4)': {'MNLI-m/mm': '86.1/86.1', 'SQuAD1.1': '91.8/85.8', 'SQuAD2.0': '81.3/78.0',
                  'RACE': 70.3},
    'v3 RTD, ES (v3)': {'MNLI-m/mm': '88.8/88.4', 'SQuAD2.0': '86.3/83.5'},
    'v3 RTD, NES (v3)': {'MNLI-m/mm': '88.3/87.9', 'SQuAD2.0': '85.3/82.7'},
    'v3 RTD, GDES (v3)': {'MNLI-m/mm': '89.3/89.0', 'SQuAD2.0': '87.2/84.5'},
    'BERT, same size and steps': {'MNLI-m/mm': '84.9/85.1', 'SQuAD1.1': '91.1/84.8',
                                  'SQuAD2.0': '79.5/76.0', 'RACE': 66.8},
}
RTD_SHARING = {'es': 'ES', 'nes': 'NES', 'gdes': 'GDES'}
# BERT on DeBERTa's config: the fields in which BERT differs (EncoderConfig ignores the rest).
BERT = {'model.family': 'bert', 'model.type_vocab_size': 2, 'model.layer_norm_eps': 1e-12}


def base_config(scale: str):
  """configs/deberta.py (tiny; base at paper scale) on the ablations' schedule of the scale."""
  if scale == 'paper':
    return deberta_configs.get_config('base')
  config = finetune_ablation.on_schedule(deberta_configs.get_config('tiny'), scale)
  if scale == 'smoke':
    config.model.update(finetune_ablation.SMOKE_MODEL, num_layers=2, position_buckets=16)
  return config


def cells(scale, base):
  """Table 4's rows, v3's sharing rows and BERT, all at the scale's one learning rate."""
  del scale
  rows = [(FULL, {}),
          ('-c2p (T4)', {'model.pos_att_type': ('p2c',)}),
          ('-p2c (T4)', {'model.pos_att_type': ('c2p',)}),
          ('-EMD (T4)', {'model.emd': False})]
  rows += [(f'v3 RTD, {name} (v3)', {'model.objective': 'rtd', 'model.embedding_sharing': sharing})
           for sharing, name in RTD_SHARING.items()]
  rows.append(('BERT, same size and steps', BERT))
  for _, overrides in rows:  # Every cell is a valid config (a typo raises here, not mid-sweep).
    sweep.apply_overrides(base, overrides)
  return [sweep.Cell(name, overrides, PAPER[name]) for name, overrides in rows]


ABLATION = finetune_ablation.Ablation(
    name='deberta', title='DeBERTa: disentangled attention terms and EMD (T4), v3 embedding '
                          'sharing under RTD, BERT at the same size and steps',
    paper='He et al. 2021, DeBERTa (arXiv 2006.03654v6), Table 4 (ablations of DeBERTa-base, '
          '1M steps of 256; the BERT row\'s numbers are its RoBERTa-ReImp-base) and He et al. '
          '2023, DeBERTaV3 (arXiv 2111.09543), ES/NES/GDES with RTD (base, 125k steps of 2,048); '
          'dev scores. Ours: validation MLM loss/accuracy (RTD rows: the generator\'s, half the '
          'depth), the discriminator\'s rtd_recall, test_accuracy/test_macro_f1 from the topic task',
    metrics=('mlm_loss', 'mlm_accuracy', 'rtd_recall', 'test_accuracy', 'test_macro_f1'),
    cells=cells, base_config=base_config,
    smoke_cells=len(RTD_SHARING) + 5)  # Every cell: --cell picks one.


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
