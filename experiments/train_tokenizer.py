"""Trains the tokenizer a config asks for into <workdir>/tokenizer (or reuses it).

  python -m experiments.train_tokenizer --config configs/bert.py:tiny --workdir /tmp/bert_tiny
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from encoders.data import tokenizer as tokenizer_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Family config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the tokenizer and the run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  data_config = _CONFIG.value.data
  tok = tokenizer_lib.get_tokenizer(data_config, _WORKDIR.value)
  logging.info('%s tokenizer: vocab %d, fingerprint %s, special ids pad=%d unk=%d cls=%d sep=%d '
               'mask=%d.', tok.kind, tok.vocab_size, tok.fingerprint, tok.pad_id, tok.unk_id,
               tok.cls_id, tok.sep_id, tok.mask_id)
  model = _CONFIG.value.get('model')
  if model is not None and model.get('vocab_size', tok.vocab_size) < tok.vocab_size:
    raise ValueError(f'config.model.vocab_size={model.vocab_size} is smaller than the '
                     f'tokenizer vocabulary ({tok.vocab_size}): set them equal.')


if __name__ == '__main__':
  app.run(main)
