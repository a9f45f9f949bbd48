"""Does a pretraining checkpoint read word order? Its objective's validation losses on the
run's own held-out batches as they are and with each row's tokens shuffled.

The shuffle moves every token but [CLS], [SEP] and padding to a random place within its own
segment (packed text and token type), masks and replacements included: `masked_positions`
follow their tokens, and position ids stay with the places. The tokens are subword pieces,
so a word's pieces are scattered too; pair formats are shuffled within each of the two
texts, rows of packed documents within each document. A model that reads a bag of words
scores the same on both (a BERT without position embeddings does, to rounding: the test says
so); one that reads order loses on the shuffled rows. For an RTD objective (ELECTRA,
DeBERTa-v3) the discriminator's RTD loss and ROC AUC are measured too.

  python -m experiments.analyze word_order --model workdirs/bert_tiny --out OUT/word_order
"""
import jax
import numpy as np

from encoders.analysis import files
from encoders.training import electra_objective, metrics, objectives, reload


def shuffle_words(batch: dict, fixed_ids: tuple[int, ...], rng: np.random.Generator) -> dict:
  """`batch` with the movable tokens of each row permuted within their (segment, token type)
  group; tokens in `fixed_ids` and padding (segment 0) stay, masked_positions follow their tokens."""
  input_ids = np.array(batch['input_ids'])  # [rows, length]
  masked_positions = np.array(batch['masked_positions'])  # [rows, predictions]
  segment_ids = np.asarray(batch['segment_ids'])
  fixed = np.isin(input_ids, fixed_ids) | (segment_ids == 0)
  group = segment_ids * 1000 + np.asarray(batch['token_type_ids'])
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


def objective_losses(objective, params, batches: list[dict]) -> dict[str, float]:
  """MLM loss over `batches` (and RTD loss and ROC AUC for an RTD objective), pooled over the
  batches' predictions and tokens as the trainer's validation pools them (no dropout, no
  sentence head)."""
  is_rtd = isinstance(objective, electra_objective.ReplacedTokenDetection)
  if not is_rtd and not isinstance(objective, objectives.MaskedLanguageModeling):
    raise ValueError(f'word order: a {type(objective).__name__} run is not supported; MLM and '
                     'RTD (ELECTRA, DeBERTa-v3) runs are.')
  forward = jax.jit(objective.forward if is_rtd else objective.apply, static_argnums=3)
  total, logits, replaced = None, [], []
  for batch in batches:
    outputs = forward(params, batch, None, True)
    denominators = objective.denominators(batch)
    if is_rtd:
      _, _, sums = objective.loss_terms(outputs, batch, denominators)
      real = np.asarray(batch['segment_ids']) > 0
      logits.append(np.asarray(outputs['rtd_logits'])[real])
      replaced.append(np.asarray(outputs['corrupted'] != outputs['original'])[real])
    else:
      _, sums = objectives.mlm_terms(outputs['mlm_logits'], batch['masked_ids'],
                                     batch['masked_weights'], denominators['mlm'])
    total = metrics.add_sums(total, jax.device_get(sums))
  pooled = metrics.summarize(total)
  result = {'mlm_loss': pooled['mlm_loss']}
  if is_rtd:
    result['rtd_loss'] = pooled['rtd_loss']
    result['rtd_auc'] = electra_objective.roc_auc(np.concatenate(logits), np.concatenate(replaced))
  return result


def measure(workdir: str, step: int | None = None, seed: int = 0) -> dict:
  """{'as_is': losses, 'shuffled': losses, ...} of checkpoint `step` (default: the latest) over
  its run's first `train.eval_steps` validation batches."""
  step = reload.latest_step(workdir) if step is None else step
  config, _, params = reload.load_workdir(workdir, step)
  objective = objectives.make_objective(config, sentence_head=False)
  tokenizer, batches = reload.validation_batches(config, workdir)
  fixed_ids = (tokenizer.cls_id, tokenizer.sep_id) if tokenizer else ()  # None: synthetic rows.
  return dict(workdir=workdir, step=step, shuffle_seed=seed, num_batches=len(batches),
              **compare(objective, params, batches, fixed_ids, seed))


def compare(objective, params, batches: list[dict], fixed_ids: tuple[int, ...],
            seed: int = 0) -> dict:
  """{'as_is': losses, 'shuffled': losses} of `params` on `batches` and on their copies with
  the words shuffled (`shuffle_words`, tokens in `fixed_ids` staying)."""
  rng = np.random.default_rng(seed)
  shuffled = [shuffle_words(b, fixed_ids, rng) for b in batches]
  return dict(as_is=objective_losses(objective, params, batches),
              shuffled=objective_losses(objective, params, shuffled))


def write(workdir: str, out: str, step: int | None = None, seed: int = 0) -> dict:
  """word_order.json and word_order.md (as is / shuffled, and the difference) into `out`."""
  folder = files.folder(out)
  result = measure(workdir, step, seed)
  files.save_json(folder / 'word_order.json', result)
  rows = [[name, result['as_is'][name], result['shuffled'][name],
           result['shuffled'][name] - result['as_is'][name]] for name in result['as_is']]
  (folder / 'word_order.md').write_text(
      files.markdown_table(['metric', 'as is', 'words shuffled', 'shuffled - as is'], rows))
  return result
