"""Does a checkpoint read word order? Its validation losses on the held-out batches as they are
and with each row's words shuffled (every token but [CLS], [SEP] and padding moves to a random
place within its own segment, masks and all, so masking and replacements happen on the
shuffled text). A model that reads a bag of words scores the same on both; one that reads
order loses on the shuffled rows. ELECTRA checkpoints also get the discriminator's ROC AUC.
A markdown table, one row per WORKDIR:STEP:

  PYTHONPATH=. python docs/electra_lr/word_order.py WORKDIR:STEP ... > OUT.md
"""
import sys

import jax
import numpy as np

from encoders.training import electra_objective, objectives, reload
from experiments.rtd_diagnostics import validation_batches

SHUFFLE_SEED = 0


def shuffle_words(batch: dict, tokenizer, rng: np.random.Generator) -> dict:
  """`batch` with the movable tokens of each row permuted within their segment; masked_positions
  follow their tokens. position_ids stay: the tokens change places, not the places' ids."""
  input_ids = np.array(batch['input_ids'])
  masked_positions = np.array(batch['masked_positions'])
  fixed = np.isin(input_ids, [tokenizer.cls_id, tokenizer.sep_id]) | (batch['segment_ids'] == 0)
  group = np.asarray(batch['segment_ids']) * 1000 + np.asarray(batch['token_type_ids'])
  for row in range(input_ids.shape[0]):
    destination = np.arange(input_ids.shape[1])  # destination[old position] = new position
    for value in np.unique(group[row][~fixed[row]]):
      places = np.flatnonzero((group[row] == value) & ~fixed[row])
      destination[places] = rng.permutation(places)
    shuffled = input_ids[row].copy()
    shuffled[destination] = input_ids[row]
    input_ids[row] = shuffled
    masked_positions[row] = destination[masked_positions[row]]
  return dict(batch, input_ids=input_ids, masked_positions=masked_positions)


def evaluate(objective, params, batches) -> dict[str, float]:
  """Mean MLM loss (and RTD loss and ROC AUC for an RTD objective) over `batches`."""
  is_rtd = isinstance(objective, electra_objective.ReplacedTokenDetection)
  forward = jax.jit(objective.forward if is_rtd else objective.apply, static_argnums=3)
  mlm, rtd, logits, replaced = [], [], [], []
  for batch in batches:
    outputs = forward(params, batch, None, True)
    denominators = objective.denominators(batch)
    if is_rtd:
      mlm_loss, rtd_loss, _ = objective.loss_terms(outputs, batch, denominators)
      rtd.append(float(rtd_loss))
      real = np.asarray(batch['segment_ids']) > 0
      logits.append(np.asarray(outputs['rtd_logits'])[real])
      replaced.append(np.asarray(outputs['corrupted'] != outputs['original'])[real])
    else:
      mlm_loss, _ = objectives.mlm_terms(outputs['mlm_logits'], batch['masked_ids'],
                                         batch['masked_weights'], denominators['mlm'])
    mlm.append(float(mlm_loss))
  result = {'mlm_loss': float(np.mean(mlm))}
  if is_rtd:
    result['rtd_loss'] = float(np.mean(rtd))
    result['rtd_auc'] = electra_objective.roc_auc(np.concatenate(logits), np.concatenate(replaced))
  return result


def main(specs: list[str]) -> None:
  print('| workdir | step | MLM loss: as is / shuffled | RTD loss: as is / shuffled | ROC AUC: as is / shuffled |')
  print('|---|---:|---|---|---|')
  for spec in specs:
    workdir, step = spec.rsplit(':', 1)
    config, _, params = reload.load_workdir(workdir, int(step))
    objective = objectives.make_objective(config, sentence_head=False)
    tokenizer, batches = validation_batches(config, workdir)
    rng = np.random.default_rng(SHUFFLE_SEED)
    plain = evaluate(objective, params, batches)
    shuffled = evaluate(objective, params, [shuffle_words(b, tokenizer, rng) for b in batches])
    pair = lambda key, digits: (f'{plain[key]:.{digits}f} / {shuffled[key]:.{digits}f}'
                                if key in plain else '')
    print(f'| {workdir} | {step} | {pair("mlm_loss", 3)} | {pair("rtd_loss", 4)} | '
          f'{pair("rtd_auc", 3)} |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
