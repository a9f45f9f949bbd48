"""What an RTD pretraining run's checkpoints do (ELECTRA, DeBERTa-v3 RTD), on the validation split.

  python -m experiments.rtd_diagnostics --workdir workdirs/electra_lr_base_5e-4 \
      --steps 100,200,300 --out docs/electra_lr/diagnostics/base_5e-4.jsonl

For each checkpoint, over `config.train.eval_steps` validation batches (replacements drawn as
validation draws them): the discriminator's ROC AUC (replaced vs original over real tokens),
recall, precision, RTD loss against the prior's entropy, each class's mean logit and the logits'
spread; the generator's accuracy and mean top probability; the gradient norm of each top-level
module from the MLM loss and from rtd_weight x RTD loss apart; and, from the previous listed
checkpoint, each module's update norm relative to its parameter norm. One JSON line per step.
"""
import json

from absl import app, flags
import jax
import numpy as np
import optax

from encoders import paths
from encoders.training import objectives, reload
from encoders.training import electra_objective

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'An RTD pretraining workdir.', required=True)
flags.DEFINE_list('steps', None, 'Checkpoint steps, ascending.', required=True)
flags.DEFINE_string('out', None, 'JSON-lines file to write, local or gs://... (also printed).')


def module_norms(tree: dict) -> dict[str, float]:
  """{top-level module: global L2 norm of its leaves}."""
  return {name: float(optax.tree.norm(subtree)) for name, subtree in tree.items()}


def binary_entropy(p: float) -> float:
  return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def diagnose(config, workdir: str, params: dict) -> dict:
  """The checkpoint's numbers over the validation batches (see the module docstring)."""
  objective = objectives.make_objective(config, sentence_head=False)
  _, batches = reload.validation_batches(config, workdir)
  outputs_and_gradients = electra_objective.gradients_by_loss(objective)
  logits, replaced, top_probability, correct, grads = [], [], [], [], []
  for batch in batches:
    outputs, mlm, weighted_rtd = outputs_and_gradients(params, batch)
    outputs = jax.device_get(outputs)
    real = np.asarray(batch['segment_ids']) > 0
    logits.append(outputs['rtd_logits'][real])
    replaced.append((outputs['corrupted'] != outputs['original'])[real])
    used = np.asarray(batch['masked_weights']) > 0
    probabilities = jax.nn.softmax(outputs['mlm_logits'][used], -1)  # [predictions, vocab]
    top_probability.append(np.max(probabilities, -1))
    correct.append(np.argmax(probabilities, -1) == np.asarray(batch['masked_ids'])[used])
    grads.append((module_norms(mlm), module_norms(weighted_rtd)))
  logits, replaced = np.concatenate(logits), np.concatenate(replaced)
  called = logits > 0
  fraction = float(replaced.mean())
  rtd_loss = float(np.mean(np.logaddexp(0, logits) - replaced * logits))
  mean_grads = lambda which: {name: float(np.mean([g[which][name] for g in grads]))
                              for name in grads[0][which]}
  return {
      'rtd_auc': electra_objective.roc_auc(logits, replaced),
      'rtd_recall': float(np.sum(called & replaced) / max(replaced.sum(), 1)),
      'rtd_precision': float(np.sum(called & replaced) / max(called.sum(), 1)),
      'rtd_loss': rtd_loss, 'prior_entropy': binary_entropy(fraction), 'replaced_fraction': fraction,
      'logit_replaced': float(logits[replaced].mean()), 'logit_original': float(logits[~replaced].mean()),
      'logit_std': float(logits.std()),
      'generator_accuracy': float(np.mean(np.concatenate(correct))),
      'generator_top_probability': float(np.mean(np.concatenate(top_probability))),
      'grad_norm_mlm': mean_grads(0), 'grad_norm_weighted_rtd': mean_grads(1),
  }


def main(argv):
  del argv
  rows, previous = [], None
  for step in [int(s) for s in FLAGS.steps]:
    config, _, params = reload.load_workdir(FLAGS.workdir, step)
    params = jax.device_get(params)
    row = {'step': step, **diagnose(config, FLAGS.workdir, params)}
    if previous is not None:
      change = module_norms(jax.tree.map(np.subtract, params, previous))
      size = module_norms(previous)
      row['relative_update'] = {name: change[name] / size[name] for name in change}
    previous = params
    print(json.dumps(row), flush=True)
    rows.append(row)
  if FLAGS.out:
    paths.write_atomic(FLAGS.out, ''.join(json.dumps(row) + '\n' for row in rows))


if __name__ == '__main__':
  app.run(main)
