"""The validation MLM loss split by what each predicted position shows, for runs of the
masking-rate sweep (and shorter runs of its recipe). On each run's first `train.eval_steps`
validation batches (15% masking, 80/10/10, as the sweep validates):
- the MLM loss split by what the predicted position shows: [MASK] (80% of the predictions),
  its own token (kept, 10%) or another token (random, 10%). A model trained with kept tokens
  learns to copy at the kept positions, which lowers the pooled loss whether or not it reads
  the context; the loss at the [MASK] positions is the context-only part;
- the pooled MLM loss as is and with each row's words shuffled (encoders/analysis/word_order.py);
- in-text mass: the probability the model puts, at a masked position, on the tokens that
  occur in the visible rest of its text (same segment; predicted positions, [CLS] and [SEP]
  left out), averaged over the predictions: a bag-of-words predictor puts much there, a
  unigram one only what frequent words bring; and in-text share: how often the masked token
  itself occurs there.
Writes OUT.jsonl (one line per run) and OUT.md.

  PYTHONPATH=. python docs/ablations_tiny/masking_rate/loss_by_kind.py OUT LABEL=WORKDIR:STEP ...
"""
import json
import sys

import jax
import numpy as np

from encoders.analysis import word_order
from encoders.training import objectives, reload


def in_text(logits: np.ndarray, batch: dict, special_ids: tuple[int, ...]) -> tuple[list, list]:
  """(in-text masses, in-text hits) of the weighted predictions of one batch.
  logits: [rows, predictions, vocab]."""
  input_ids, segment_ids = np.asarray(batch['input_ids']), np.asarray(batch['segment_ids'])
  positions, labels = np.asarray(batch['masked_positions']), np.asarray(batch['masked_ids'])
  weights = np.asarray(batch['masked_weights'])
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  masses, hits = [], []
  for row in range(input_ids.shape[0]):
    visible = np.ones(input_ids.shape[1], bool)
    visible[positions[row][weights[row] > 0]] = False
    visible &= ~np.isin(input_ids[row], special_ids) & (segment_ids[row] > 0)
    for slot in np.flatnonzero(weights[row] > 0):
      segment = segment_ids[row, positions[row, slot]]
      context = np.unique(input_ids[row][visible & (segment_ids[row] == segment)])
      masses.append(probs[row, slot, context].sum())
      hits.append(labels[row, slot] in context)
  return masses, hits


def measure(workdir: str, step: int) -> dict:
  config, _, params = reload.load_workdir(workdir, step)
  objective = objectives.make_objective(config, sentence_head=False)
  tokenizer, batches = reload.validation_batches(config, workdir)
  forward = jax.jit(objective.apply, static_argnums=3)
  masses, hits, losses = [], [], {'mask': [], 'kept': [], 'random': []}
  for batch in batches:
    logits = np.asarray(forward(params, batch, None, True)['mlm_logits'], np.float32)
    batch_masses, batch_hits = in_text(logits, batch, (tokenizer.cls_id, tokenizer.sep_id))
    masses += batch_masses
    hits += batch_hits
    rows, slots = np.nonzero(np.asarray(batch['masked_weights']))
    labels = np.asarray(batch['masked_ids'])[rows, slots]
    shown = np.asarray(batch['input_ids'])[rows, np.asarray(batch['masked_positions'])[rows, slots]]
    loss = -np.asarray(jax.nn.log_softmax(logits, axis=-1))[rows, slots, labels]
    kinds = np.where(shown == tokenizer.mask_id, 'mask', np.where(shown == labels, 'kept', 'random'))
    for kind in losses:
      losses[kind] += list(loss[kinds == kind])
  order = word_order.compare(objective, params, batches, (tokenizer.cls_id, tokenizer.sep_id))
  return dict(workdir=workdir, step=step, mlm_loss=order['as_is']['mlm_loss'],
              shuffled_mlm_loss=order['shuffled']['mlm_loss'], in_text_mass=float(np.mean(masses)),
              in_text_share=float(np.mean(hits)), predictions=len(masses),
              **{f'mlm_loss_{kind}': float(np.mean(v)) for kind, v in losses.items()},
              **{f'predictions_{kind}': len(v) for kind, v in losses.items()})


def main(out: str, specs: list[str]) -> None:
  rows = []
  for spec in specs:
    label, run = spec.split('=', 1)
    workdir, step = run.rsplit(':', 1)
    rows.append(dict(label=label, **measure(workdir, int(step))))
    print(json.dumps(rows[-1]), flush=True)
  with open(f'{out}.jsonl', 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  lines = ['| run | step | MLM loss | at [MASK] | at kept | at random | shuffled - as is | in-text mass |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  lines += [f'| {r["label"]} | {r["step"]} | {r["mlm_loss"]:.3f} | {r["mlm_loss_mask"]:.3f} | '
            f'{r["mlm_loss_kept"]:.3f} | {r["mlm_loss_random"]:.3f} | '
            f'{r["shuffled_mlm_loss"] - r["mlm_loss"]:+.3f} | {r["in_text_mass"]:.3f} |' for r in rows]
  first = rows[0]  # Every run is validated on the same rows.
  counts = ', '.join(f'{first[f"predictions_{kind}"]} {kind}' for kind in ('mask', 'kept', 'random'))
  lines += ['', f'Predictions per run: {counts} ({first["predictions"]}); the masked token occurs '
            f'in the visible rest of its text in {first["in_text_share"]:.1%} of them.']
  with open(f'{out}.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2:])
