"""Head statistics of an ELECTRA workdir's generator, as `experiments.analyze attention` gives
them for its discriminator (the same texts: the two default sentences and 64 validation
articles; head_statistics.json with the uniform-attention baseline):

  PYTHONPATH=. python docs/electra_lr/generator_attention.py WORKDIR STEP OUT
"""
import sys

import jax
import numpy as np
from etils import epath

from encoders import bert, electra
from encoders.analysis import attention, subject, texts
from encoders.data import tokenizer as tokenizer_lib
from encoders.layers import unroll_layers
from encoders.training import reload
from experiments.analyze import DEFAULT_SENTENCES


def generator_subject(workdir: str, step: int) -> subject.Subject:
  """The pair's generator as a BERT encoder: the shared embeddings, its projection, its stack."""
  config, _, params = reload.load_workdir(workdir, step)
  params = jax.tree.map(np.asarray, params)
  stack = params['generator_encoder']
  encoder_params = {'embeddings': params['embeddings'],
                    **{name: stack[name] for name in ('embeddings_project', 'layers') if name in stack}}
  model = bert.Encoder(electra.ElectraConfig.from_config(config.model).generator)
  return subject.Subject(f'{epath.Path(workdir).name} generator@{step}', 'bert',
                         subject.analysable(model), unroll_layers(encoder_params),
                         tokenizer_lib.get_tokenizer(config.data, workdir))


if __name__ == '__main__':
  workdir, step, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  statistics_texts = texts.articles('validation', 64).texts
  attention.write(generator_subject(workdir, step), list(DEFAULT_SENTENCES), out, 128,
                  statistics_texts)
