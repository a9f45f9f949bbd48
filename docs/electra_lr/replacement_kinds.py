"""What can an RTD discriminator tell from the original? Its ROC AUC (replaced against original,
over the real tokens of its run's validation batches) when the masked positions are filled not
by its generator but by tokens drawn in other ways:

- generator: its own generator's samples (the run's validation, as is);
- uniform: uniformly over the vocabulary's non-special tokens (mostly rare: the rare-token cue);
- unigram: by corpus frequency (frequent words, but from any article: a topic cue remains);
- same row: a token of the same row's text (fits the row's bag of words: only order is left).

A discriminator that knows only which tokens are rare detects uniform draws and little else;
one that reads the bag of words also detects unigram draws; only one that reads order detects
same-row draws. The unigram counts are those of the validation batches' real tokens. A
markdown table, one row per WORKDIR:STEP:

  PYTHONPATH=. python docs/electra_lr/replacement_kinds.py WORKDIR:STEP ... > OUT.md
"""
import sys

import jax
import numpy as np

from encoders.training import electra_objective, objectives, reload

SEED = 0
KINDS = ('generator', 'uniform', 'unigram', 'same row')


def draws(kind: str, batch: dict, original: np.ndarray, movable: np.ndarray, counts: np.ndarray,
          words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Replacement ids [rows, predictions] of `kind` (not 'generator') for `batch`'s masked slots."""
  shape = np.shape(batch['masked_positions'])
  if kind == 'uniform':
    return rng.choice(words, shape)
  if kind == 'unigram':
    return rng.choice(len(counts), shape, p=counts / counts.sum())
  result = np.zeros(shape, np.int64)
  for row in range(shape[0]):  # 'same row': any movable token of this row's original text.
    result[row] = rng.choice(original[row][movable[row]], shape[1])
  return result


def aucs(objective, params, batches, tokenizer) -> dict[str, float]:
  """{kind: ROC AUC of the discriminator} over `batches`."""
  special = tokenizer.special_ids
  words = np.setdiff1d(np.arange(tokenizer.vocab_size), special)
  originals = [np.asarray(electra_objective.corrupt(b['input_ids'], b['masked_positions'],
                                                    b['masked_ids'], b['masked_weights'],
                                                    b['masked_ids'])[0]) for b in batches]
  movables = [np.isin(o, special, invert=True) & (np.asarray(b['segment_ids']) > 0)
              for o, b in zip(originals, batches)]
  counts = np.bincount(np.concatenate([o[m] for o, m in zip(originals, movables)]),
                       minlength=tokenizer.vocab_size).astype(np.float64)

  @jax.jit
  def forward(params, batch, injected):  # Traced once with and once without `injected`.
    if injected is not None:
      objective.sample = lambda mlm_logits, rng: injected.astype(np.int32)
    outputs = objective.forward(params, batch, None, True)
    vars(objective).pop('sample', None)  # Back to the class's generator sampling.
    return outputs

  rng = np.random.default_rng(SEED)
  result = {}
  for kind in KINDS:
    logits, replaced = [], []
    for batch, original, movable in zip(batches, originals, movables):
      injected = None if kind == 'generator' else draws(kind, batch, original, movable, counts,
                                                        words, rng)
      outputs = forward(params, batch, injected)
      real = np.asarray(batch['segment_ids']) > 0
      logits.append(np.asarray(outputs['rtd_logits'])[real])
      replaced.append(np.asarray(outputs['corrupted'] != outputs['original'])[real])
    result[kind] = electra_objective.roc_auc(np.concatenate(logits), np.concatenate(replaced))
  return result


def main(specs: list[str]) -> None:
  print('| workdir | step | ' + ' | '.join(f'ROC AUC: {kind}' for kind in KINDS) + ' |')
  print('|---|---:|' + '---:|' * len(KINDS))
  for spec in specs:
    workdir, step = spec.rsplit(':', 1)
    config, _, params = reload.load_workdir(workdir, int(step))
    objective = objectives.make_objective(config, sentence_head=False)
    tokenizer, batches = reload.validation_batches(config, workdir)
    result = aucs(objective, params, batches, tokenizer)
    print(f'| {workdir} | {step} | ' + ' | '.join(f'{result[k]:.3f}' for k in KINDS) + ' |',
          flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
