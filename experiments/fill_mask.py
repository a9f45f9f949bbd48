"""Fill-mask demo from a trained workdir: the model's top guesses for each [MASK].

  python -m experiments.fill_mask --workdir DIR --text "paris is the [MASK] of france."
"""
from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from encoders.data import tokenizer as tokenizer_lib
from encoders.training import reload

flags.DEFINE_string('workdir', None, 'A pretraining workdir (checkpoints + tokenizer).')
flags.DEFINE_multi_string('text', [
    'the [MASK] is the largest city in the united states.',
    'water is made of hydrogen and [MASK].',
    'he was a famous american [MASK] and songwriter.',
], 'Sentences with [MASK] (the tokenizer\'s mask token) to fill.')
flags.DEFINE_integer('top_k', 5, 'Guesses shown per mask.')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.mark_flag_as_required('workdir')


def fill_mask(model, params, tokenizer, text: str, top_k: int) -> list[list[tuple[str, float]]]:
  """For each mask token in `text`: the top_k (token, probability) guesses."""
  mask = tokenizer.id_to_token(tokenizer.mask_id)
  pieces = text.replace('[MASK]', mask).split(mask)
  ids = [tokenizer.cls_id]
  for i, (piece_ids, _) in enumerate(tokenizer.encode_batch(pieces)):
    ids += ([tokenizer.mask_id] if i else []) + piece_ids.tolist()
  ids.append(tokenizer.sep_id)
  input_ids = jnp.asarray([ids], jnp.int32)  # [1, length]
  positions = jnp.asarray([[i for i, t in enumerate(ids) if t == tokenizer.mask_id]], jnp.int32)
  logits = model.apply({'params': params}, input_ids, masked_positions=positions)['mlm_logits']
  probs = np.asarray(jax.nn.softmax(logits[0], axis=-1))  # [masks, vocab]
  return [[(tokenizer.id_to_token(t), float(p[t])) for t in np.argsort(-p)[:top_k]] for p in probs]


def main(argv):
  if not flags.FLAGS['verbosity'].present:  # Quiet by default; -v 0 shows all logs.
    logging.set_verbosity(logging.ERROR)
  del argv
  config, model, params = reload.load_workdir(flags.FLAGS.workdir, flags.FLAGS.step)
  tokenizer = tokenizer_lib.get_tokenizer(config.data, flags.FLAGS.workdir)
  for text in flags.FLAGS.text:
    print(text)
    for i, guesses in enumerate(fill_mask(model, params, tokenizer, text, flags.FLAGS.top_k)):
      print(f'  mask {i + 1}: ' + ', '.join(f'{token} ({p:.2f})' for token, p in guesses))


if __name__ == '__main__':
  app.run(main)
