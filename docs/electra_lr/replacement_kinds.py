"""What can an RTD discriminator tell from the original? Its ROC AUC (replaced against original,
over the real tokens of its run's validation batches) when the masked positions are filled not
by its generator but by tokens drawn in other ways:

- generator: its own generator's samples (the run's validation, as is);
- uniform: uniformly over the vocabulary's non-special tokens (mostly rare: the rare-token cue);
- unigram: by corpus frequency (frequent words, but from any article: a topic cue remains);
- same text: a token of the same text (the masked position's packed document, or its half of
  a pair), so one that fits the text's bag of words; what is left to tell it by is order (and
  that the token now occurs once more in the text).

A discriminator that knows only which tokens are rare detects uniform draws and little else;
one that reads the bag of words also detects unigram draws; same-text draws need more. For
each kind, the share of its replacements whose token already occurs in the same text says how
well that kind fits the bag of words. The unigram counts are those of the validation batches'
real tokens. A markdown table, one row per WORKDIR:STEP:

  PYTHONPATH=. python docs/electra_lr/replacement_kinds.py WORKDIR:STEP ... > OUT.md
"""
import sys

import jax
import numpy as np

from encoders.training import electra_objective, objectives, reload

SEED = 0
KINDS = ('generator', 'uniform', 'unigram', 'same text')


def with_injected_replacements(objective):
  """`objective.forward` with the replacements taken from batch['injected'] [rows, predictions]
  instead of sampled from its generator (the generator still runs, for its MLM logits)."""
  def forward(params, batch, rng, deterministic):
    objective.sample = lambda mlm_logits, sampling_rng: batch['injected']  # Shadows the method.
    try:
      return objective.forward(params, batch, rng, deterministic)
    finally:
      del objective.sample
  return forward


def texts(batch: dict, movable: np.ndarray) -> np.ndarray:
  """int [rows, length]: the text each movable token belongs to (segment and token type), -1
  for the others."""
  return np.where(movable, np.asarray(batch['segment_ids']) * 1000 + batch['token_type_ids'], -1)


def draws(kind: str, batch: dict, original: np.ndarray, text: np.ndarray, counts: np.ndarray,
          words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Replacement ids [rows, predictions] of `kind` (not 'generator') for `batch`'s masked slots."""
  positions = np.asarray(batch['masked_positions'])
  if kind == 'uniform':
    return rng.choice(words, positions.shape)
  if kind == 'unigram':
    return rng.choice(len(counts), positions.shape, p=counts / counts.sum())
  result = np.asarray(batch['masked_ids']).copy()  # 'same text'; unused slots keep their id.
  for row, slot in zip(*np.nonzero(np.asarray(batch['masked_weights']) > 0)):
    same = text[row] == text[row, positions[row, slot]]
    result[row, slot] = rng.choice(original[row][same])
  return result


def in_text_share(original: np.ndarray, corrupted: np.ndarray, text: np.ndarray) -> tuple[int, int]:
  """(replaced tokens whose id occurs elsewhere in their original text, replaced tokens)."""
  found = total = 0
  for row, position in zip(*np.nonzero((corrupted != original) & (text >= 0))):
    same = text[row] == text[row, position]
    found += corrupted[row, position] in original[row][same]
    total += 1
  return found, total


def aucs(objective, params, batches, tokenizer) -> dict[str, tuple[float, float]]:
  """{kind: (ROC AUC of the discriminator, share of the replacements found in their text)}."""
  special = tokenizer.special_ids
  words = np.setdiff1d(np.arange(tokenizer.vocab_size), special)
  originals = [np.asarray(electra_objective.corrupt(b['input_ids'], b['masked_positions'],
                                                    b['masked_ids'], b['masked_weights'],
                                                    b['masked_ids'])[0]) for b in batches]
  text_ids = [texts(b, np.isin(o, special, invert=True) & (np.asarray(b['segment_ids']) > 0))
              for o, b in zip(originals, batches)]
  counts = np.bincount(np.concatenate([o[t >= 0] for o, t in zip(originals, text_ids)]),
                       minlength=tokenizer.vocab_size).astype(np.float64)
  own = jax.jit(objective.forward, static_argnums=3)
  injected = jax.jit(with_injected_replacements(objective), static_argnums=3)
  rng = np.random.default_rng(SEED)
  result = {}
  for kind in KINDS:
    logits, replaced, found, total = [], [], 0, 0
    for batch, original, text in zip(batches, originals, text_ids):
      if kind == 'generator':
        outputs = own(params, batch, None, True)
      else:
        ids = draws(kind, batch, original, text, counts, words, rng).astype(np.int32)
        outputs = injected(params, dict(batch, injected=ids), None, True)
      real = np.asarray(batch['segment_ids']) > 0
      logits.append(np.asarray(outputs['rtd_logits'])[real])
      replaced.append(np.asarray(outputs['corrupted'] != outputs['original'])[real])
      counted = in_text_share(original, np.asarray(outputs['corrupted']), text)
      found, total = found + counted[0], total + counted[1]
    auc = electra_objective.roc_auc(np.concatenate(logits), np.concatenate(replaced))
    result[kind] = (auc, found / total)
  return result


def main(specs: list[str]) -> None:
  print('| workdir | step | ' + ' | '.join(f'{kind}: ROC AUC (in text)' for kind in KINDS) + ' |')
  print('|---|---:|' + '---:|' * len(KINDS))
  for spec in specs:
    workdir, step = spec.rsplit(':', 1)
    config, _, params = reload.load_workdir(workdir, int(step))
    objective = objectives.make_objective(config, sentence_head=False)
    tokenizer, batches = reload.validation_batches(config, workdir)
    result = aucs(objective, params, batches, tokenizer)
    cells = [f'{auc:.3f} ({share:.0%})' for auc, share in (result[k] for k in KINDS)]
    print(f'| {workdir} | {step} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
