"""Why does a tiny RTD discriminator fall back to the all-original prior? For checkpoints of a
workdir: the generator's replacements on 8 validation batches, the discriminator's recall on
them, and the recall of the best token-identity-only detector (fit on the same batches: an
upper bound of what 'this token id is rare, so it was replaced' can give).

  PYTHONPATH=. python docs/deberta_v3_rtd/replacement_cues.py WORKDIR 100,200,300
"""
import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np

from encoders.data import pipeline, tokenizer as tokenizer_lib
from encoders.training import reload
from encoders.training.electra_objective import corrupt

workdir = sys.argv[1]
for step in [int(s) for s in sys.argv[2].split(',')]:
  config, model, params = reload.load_workdir(workdir, step)
  tokenizer = tokenizer_lib.get_tokenizer(config.data, workdir)
  batches = pipeline.make_pretraining_iterator(config, tokenizer, config.data.eval_split, num_epochs=1)
  replaced_by_id, original_by_id = collections.Counter(), collections.Counter()
  hits = total_replaced = 0
  gen_top = []
  for i, batch in zip(range(8), batches):
    inputs = [batch[k] for k in ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')]
    logits = model.apply({'params': params}, *inputs, batch['masked_positions'], method='generator')
    sampled = jax.random.categorical(jax.random.key(i), logits)
    original, corrupted = corrupt(batch['input_ids'], batch['masked_positions'], batch['masked_ids'],
                                  batch['masked_weights'], sampled)
    rtd = model.apply({'params': params}, corrupted, *inputs[1:], method='discriminator')
    real = np.asarray(batch['segment_ids']) > 0
    replaced = np.asarray(corrupted != original) & real
    hits += int(np.sum((np.asarray(rtd) > 0) & replaced))
    total_replaced += int(replaced.sum())
    corrupted = np.asarray(corrupted)
    replaced_by_id.update(corrupted[replaced].tolist())
    original_by_id.update(corrupted[real & ~replaced].tolist())
    probs = jax.nn.softmax(logits, -1)
    gen_top.append(float(jnp.mean(jnp.max(probs, -1))))
  # Token-identity detector: call id v replaced iff it was replaced more often than not.
  unigram_hits = sum(n for v, n in replaced_by_id.items() if n > original_by_id[v])
  distinct = len(replaced_by_id)
  print(f'step {step}: replaced {total_replaced}, discriminator recall {hits / total_replaced:.3f}, '
        f'token-id-only recall {unigram_hits / total_replaced:.3f}, distinct replacement ids {distinct}, '
        f'share of replacements that are among the 100 most frequent originals '
        f'{sum(replaced_by_id[v] for v, _ in original_by_id.most_common(100)) / total_replaced:.3f}, '
        f'generator mean max prob {np.mean(gen_top):.3f}', flush=True)
