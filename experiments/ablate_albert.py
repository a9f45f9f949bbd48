"""ALBERT's cross-layer sharing and sentence-level loss (Lan et al. 2020, Tables 4 and 5).

  python -m experiments.ablate_albert --out /tmp/ablate_albert                 # tiny, 3 seeds
  python -m experiments.ablate_albert --out /tmp/ablate_albert_smoke --smoke   # minutes
  python -m experiments.ablate_albert --out DIR --scale=paper --mode=print     # ALBERT-base

Table 4 (sharing, at the small embedding width: the paper's E=128, tiny's E=64): all-shared,
shared-attention, shared-FFN and not-shared (`model.sharing` all/attention/ffn/none), all
with SOP. Table 5 (sentence-level loss, all-shared): None, NSP and SOP. Table 4's all-shared
row and Table 5's SOP row are the same model (the paper prints the same downstream numbers
in both), so they are one cell here, run once.

"None" is the XLNet/RoBERTa style without a sentence head: 'full_sentences', RoBERTa's
chosen format (its Sec. 4.2: FULL-SENTENCES without NSP for the rest of the paper), rows
packed full of contiguous text. 'doc_sentences' was a hair better in RoBERTa Table 2 but
needs a variable batch for equal tokens, which is why RoBERTa itself kept FULL-SENTENCES.

Each cell shows its encoder's exact parameter count (embeddings, the E -> H mapping, the
layers and the pooler, as transformers' AlbertModel counts them; pretraining heads excluded),
from the shapes of the family's Encoder (jax.eval_shape, nothing allocated). Scales: smoke is
a 2-layer width-32 model (two layers, or the sharing modes would all be one model), all six
cells, one seed; quick and tiny are configs/albert.py:tiny on the ablations' schedules
(encoders/adaptation/finetune_ablation.py: 100 or TINY_STEPS steps of 32 x 128; the stored
table is quick's); paper is configs/albert.py:base
(batch 4096, 125k steps, LAMB), as the paper's ALBERT-base.
"""
import flax.linen as nn
import jax
import numpy as np

from encoders import families
from encoders.adaptation import finetune_ablation
from encoders.configs import albert as albert_configs
from encoders.training import sweep

SHARING = {'all': 'all-shared', 'attention': 'shared-attention', 'ffn': 'shared-FFN',
           'none': 'not-shared'}
SOP_CELL = 'all-shared + SOP (T4 all-shared = T5 SOP)'
# Lan et al. 2020 (arXiv 1909.11942v6) as printed: Table 4, ALBERT-base E=128 (params,
# downstream dev); Table 5, ALBERT-base (intrinsic MLM/NSP/SOP accuracy, downstream dev).
# Table 5 gives no parameter counts; its model is ALBERT-base, 12M in Table 1.
DOWNSTREAM = ('SQuAD1.1', 'SQuAD2.0', 'MNLI', 'SST-2', 'RACE', 'Avg')
TABLE4 = {  # sharing: (params, SQuAD1.1, SQuAD2.0, MNLI, SST-2, RACE, Avg)
    'all': ('12M', '89.3/82.3', '80.0/77.1', 82.0, 90.3, 64.0, 80.1),
    'attention': ('64M', '89.9/82.8', '80.7/77.9', 83.4, 91.9, 67.6, 81.7),
    'ffn': ('38M', '88.9/81.6', '78.6/75.6', 82.3, 91.7, 64.4, 80.2),
    'none': ('89M', '89.9/82.8', '80.3/77.3', 83.2, 91.5, 67.9, 81.6),
}
TABLE5 = {  # loss: (MLM, NSP, SOP accuracy, SQuAD1.1, SQuAD2.0, MNLI, SST-2, RACE, Avg)
    'None': (54.9, 52.4, 53.3, '88.6/81.5', '78.1/75.3', 81.5, 89.9, 61.7, 79.0),
    'NSP': (54.5, 90.5, 52.0, '88.4/81.5', '77.2/74.6', 81.6, 91.1, 62.3, 79.2),
    'SOP': (54.0, 78.9, 86.5, '89.3/82.3', '80.0/77.1', 82.0, 90.3, 64.0, 80.1),
}
INPUT_FORMATS = {'None': 'full_sentences', 'NSP': 'segment_pair_nsp', 'SOP': 'sop'}


def base_config(scale: str):
  """configs/albert.py (tiny; base at paper scale) on the ablations' schedule of the scale."""
  if scale == 'paper':
    return albert_configs.get_config('base')
  config = finetune_ablation.on_schedule(albert_configs.get_config('tiny'), scale)
  if scale == 'smoke':
    # Two layers (one would make every sharing mode the same model), ALBERT's FFN of 4H.
    config.model.update(finetune_ablation.SMOKE_MODEL, num_layers=2, embedding_size=16,
                        intermediate_size=4 * finetune_ablation.SMOKE_MODEL['hidden_size'])
  return config


def encoder_parameters(config) -> int:
  """Exact parameter count of the family's Encoder (with pooler) for `config.model`."""
  family = families.of_config(config)
  encoder = family.models.Encoder(family.model_config(config.model), add_pooler=True)
  shapes = jax.eval_shape(encoder.init, jax.random.key(0), np.zeros((1, 8), np.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


def _paper(params, downstream, intrinsic=()) -> dict:
  columns = dict(zip(('MLM acc (T5)', 'NSP acc (T5)', 'SOP acc (T5)'), intrinsic))
  return {'params': params, **columns, **dict(zip(DOWNSTREAM, downstream))}


def cells(scale, base):
  del scale
  counts = {}  # Sharing mode -> parameters (the sentence-loss cells share the all-shared model).
  for sharing in SHARING:
    config = sweep.apply_overrides(base, {'model.sharing': sharing})
    counts[sharing] = f'{encoder_parameters(config):,}'
  result = [sweep.Cell(SOP_CELL, {'model.sharing': 'all', 'data.input_format': 'sop'},
                       _paper(TABLE4['all'][0], TABLE4['all'][1:], TABLE5['SOP'][:3]),
                       {'encoder params': counts['all']})]
  for sharing in ('attention', 'ffn', 'none'):
    result.append(sweep.Cell(f'{SHARING[sharing]} + SOP (T4)',
                             {'model.sharing': sharing, 'data.input_format': 'sop'},
                             _paper(TABLE4[sharing][0], TABLE4[sharing][1:]),
                             {'encoder params': counts[sharing]}))
  for loss in ('NSP', 'None'):
    result.append(sweep.Cell(f'all-shared + {loss} (T5)',
                             {'model.sharing': 'all', 'data.input_format': INPUT_FORMATS[loss]},
                             _paper('12M (T1)', TABLE5[loss][3:], TABLE5[loss][:3]),
                             {'encoder params': counts['all']}))
  return result


ABLATION = finetune_ablation.Ablation(
    name='albert', title='ALBERT: cross-layer sharing (T4) and sentence-level loss (T5)',
    paper='Lan et al. 2020, ALBERT (arXiv 1909.11942v6), Table 4 (ALBERT-base, E=128, SOP) and '
          'Table 5 (ALBERT-base, all-shared; intrinsic MLM/NSP/SOP accuracy of each model on '
          'each task); downstream columns are dev scores, params the paper\'s rounded counts. '
          'Ours: encoder params exact (embeddings, E->H mapping, layers, pooler); nsp_accuracy '
          'is the sentence head\'s validation accuracy on its own task (SOP or NSP; none for '
          '"None"); test_accuracy/test_macro_f1 from the topic task',
    metrics=('mlm_loss', 'mlm_accuracy', 'nsp_accuracy', 'test_accuracy', 'test_macro_f1'),
    cells=cells, base_config=base_config, smoke_cells=len(SHARING) + 2)


if __name__ == '__main__':
  finetune_ablation.run_script(ABLATION)
