"""DeBERTa's ablations (He et al. 2021, Table 5: -c2p, -p2c, -EMD) and DeBERTa-v3's embedding
sharing (He et al. 2023: ES, NES, GDES under RTD), against BERT at the same size and steps.

  python -m experiments.ablate_deberta --out /tmp/ablate_deberta                 # tiny, 2 seeds
  python -m experiments.ablate_deberta --out /tmp/ablate_deberta_smoke --smoke   # minutes
  python -m experiments.ablate_deberta --out DIR --scale=paper --mode=print      # DeBERTa-base

Cells: the full model (c2c + c2p + p2c, EMD; MLM as v2), each term or EMD removed, v3's RTD
with each embedding sharing (the discriminator is fine-tuned; its row's MLM numbers are
its generator's, half its depth, so they do not compare with the MLM rows), and BERT
(learned absolute positions, no EMD, LayerNorm eps 1e-12, two token types) on the same
data, tokenizer, size and steps. Scales: smoke is a 2-layer width-32 model, a few steps,
every cell (--cell runs one); tiny is configs/deberta.py:tiny (4 x 128) on the ablations' tiny
schedule (encoders/adaptation/finetune_ablation.py: 100 steps of 32 x 128; RTD's discriminator may
still sit at the all-original prior that early, docs/deberta_v3_rtd/); paper is
configs/deberta.py:base (the release's mlm.sh; rtd.sh's base rate is the same 1e-4).

The papers' downstream numbers are not entered yet (PAPER is empty: they were not
available to check offline); the cells name the tables they belong to.
"""
from encoders.adaptation import finetune_ablation
from encoders.configs import deberta as deberta_configs
from encoders.training import sweep

# The papers' dev numbers per cell, as printed: {cell name: {column: value}}. Empty until checked.
PAPER: dict[str, dict] = {}
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
  """Table 5's rows, v3's sharing rows and BERT, all at the scale's one learning rate."""
  del scale
  rows = [('DeBERTa: c2c+c2p+p2c, EMD (T5)', {}),
          ('-c2p (T5)', {'model.pos_att_type': ('p2c',)}),
          ('-p2c (T5)', {'model.pos_att_type': ('c2p',)}),
          ('-EMD (T5)', {'model.emd': False})]
  rows += [(f'v3 RTD, {name} (v3)', {'model.objective': 'rtd', 'model.embedding_sharing': sharing})
           for sharing, name in RTD_SHARING.items()]
  rows.append(('BERT, same size and steps', BERT))
  for _, overrides in rows:  # Every cell is a valid config (a typo raises here, not mid-sweep).
    sweep.apply_overrides(base, overrides)
  return [sweep.Cell(name, overrides, PAPER.get(name, {})) for name, overrides in rows]


ABLATION = finetune_ablation.Ablation(
    name='deberta', title='DeBERTa: disentangled attention terms and EMD (T5), v3 embedding '
                          'sharing under RTD, BERT at the same size and steps',
    paper='He et al. 2021, DeBERTa (arXiv 2006.03654), Table 5 (ablations of DeBERTa-base) and '
          'He et al. 2023, DeBERTaV3 (arXiv 2111.09543), ES/NES/GDES; papers\' numbers not '
          'entered yet. Ours: validation MLM loss/accuracy (RTD rows: the generator\'s), '
          'test_accuracy/test_macro_f1 from the topic task',
    metrics=('mlm_loss', 'mlm_accuracy', 'rtd_recall', 'test_accuracy', 'test_macro_f1'),
    cells=cells, base_config=base_config,
    smoke_cells=len(RTD_SHARING) + 5)  # Every cell: --cell picks one.


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
