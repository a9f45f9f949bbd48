"""sentence-transformers directories: export a SentenceEncoder, and read one (or a plain HF encoder).

`save` writes what `sentence_transformers.SentenceTransformer(directory)` loads:
  modules.json                 Transformer (path ''), Pooling ('1_Pooling'), Normalize ('2_Normalize')
  config.json, model.safetensors   the encoder as transformers' <Family>Model (hf_interop)
  tokenizer.json, tokenizer_config.json, special_tokens_map.json   the tokenizer, for AutoTokenizer
  sentence_bert_config.json    max_seq_length (tokens per text, specials included)
  1_Pooling/config.json        the pooling mode (sentence-transformers' legacy keys, read by all versions)
  config_sentence_transformers.json   cosine similarity
The model encodes to our vectors, L2-normalised. <Family>Model has BERT's pooler, which a
sentence-transformers model never runs: it is written as zeros. Attention pooling has no
sentence-transformers module and is refused.

`load` reads such a directory, or an HF checkpoint directory without modules.json (mean
pooling, as all-MiniLM-L6-v2 and most sentence encoders use), into a SentenceEncoder.
"""
import os

import flax
import jax
import numpy as np
from etils import epath

from encoders import families, hf_interop, paths
from encoders.config import ConfigError
from encoders.data import tokenizer as tokenizer_lib
from encoders.sentence import POOLINGS, ST_POOLING_KEYS, SentenceEncoder

MODULES = (('sentence_transformers.models.Transformer', ''),
           ('sentence_transformers.models.Pooling', '1_Pooling'),
           ('sentence_transformers.models.Normalize', '2_Normalize'))
_ST_MODES = {'cls': 'cls', 'mean': 'mean', 'max': 'max', 'mean_sqrt_len_tokens': 'mean_sqrt_len',
             'weightedmean': 'weighted_mean'}  # sentence-transformers >= 5 `pooling_mode` -> ours.


def _write_json(path: str, value) -> None:
  paths.write_json(path, value, indent=2)


def save(out_dir: str, model: SentenceEncoder, params, tokenizer: tokenizer_lib.Tokenizer,
         family: str, max_seq_length: int) -> None:
  """Writes `model` at `params` (the 'encoder' subtree is read) as a sentence-transformers directory."""
  if model.pooling not in ST_POOLING_KEYS:
    raise ConfigError(f'pooling={model.pooling!r} has no sentence-transformers Pooling mode '
                      f'(exportable: {tuple(ST_POOLING_KEYS)}).')
  encoder = families.get(family).models.Encoder(model.config, add_pooler=True)
  hidden = model.config.hidden_size
  pooler = {'dense': {'kernel': np.zeros((hidden, hidden), np.float32),
                      'bias': np.zeros((hidden,), np.float32)}}
  encoder_params = dict(jax.device_get(flax.core.unfreeze(params['encoder'])), pooler=pooler)
  hf_interop.save_checkpoint(out_dir, encoder, encoder_params, family=family)

  tokenizer.save(out_dir)
  special = {f'{role}_token': tokenizer.id_to_token(getattr(tokenizer, f'{role}_id'))
             for role in ('cls', 'sep', 'pad', 'unk', 'mask')}
  _write_json(os.path.join(out_dir, 'special_tokens_map.json'), special)
  _write_json(os.path.join(out_dir, 'tokenizer_config.json'),
              dict(special, tokenizer_class='PreTrainedTokenizerFast', model_max_length=max_seq_length))
  _write_json(os.path.join(out_dir, 'sentence_bert_config.json'),
              {'max_seq_length': max_seq_length, 'do_lower_case': False})
  _write_json(os.path.join(out_dir, 'modules.json'),
              [{'idx': i, 'name': str(i), 'path': path, 'type': kind}
               for i, (kind, path) in enumerate(MODULES)])
  _write_json(os.path.join(out_dir, 'config_sentence_transformers.json'),
              {'similarity_fn_name': 'cosine'})
  for _, path in MODULES[1:]:
    epath.Path(out_dir, path).mkdir(parents=True, exist_ok=True)
  _write_json(os.path.join(out_dir, MODULES[1][1], 'config.json'),
              {'word_embedding_dimension': hidden,
               **{key: pooling == model.pooling for pooling, key in ST_POOLING_KEYS.items()}})


def pooling_of(directory: str) -> str:
  """The pooling of a sentence-transformers directory; 'mean' for an HF directory without modules.json.

  Modules are known by class name (sentence-transformers 5 saves them under new module paths).
  """
  modules_path = os.path.join(directory, 'modules.json')
  if not epath.Path(modules_path).exists():
    return 'mean'
  modules = {m['type'].rsplit('.', 1)[-1]: m['path'] for m in paths.read_json(modules_path)}
  if set(modules) - {'Transformer', 'Pooling', 'Normalize'} or modules.get('Transformer') != '':
    raise ConfigError(f'{modules_path}: modules {modules} are not supported (a Transformer at the '
                      'top, then Pooling and Normalize).')
  if 'Pooling' not in modules:
    raise ConfigError(f'{modules_path} has no Pooling module.')
  config = paths.read_json(os.path.join(directory, modules['Pooling'], 'config.json'))
  modes = [ours for ours, key in ST_POOLING_KEYS.items() if config.get(key)]
  if 'pooling_mode' in config:  # sentence-transformers >= 5 writes one key.
    mode = config['pooling_mode']
    modes = [_ST_MODES.get(m, m) for m in ([mode] if isinstance(mode, str) else mode)]
  if len(modes) != 1 or modes[0] not in POOLINGS:
    raise ConfigError(f'{directory}: pooling {modes or config} is not one mode of {POOLINGS}.')
  return modes[0]


def load(directory: str) -> tuple[SentenceEncoder, dict]:
  """(SentenceEncoder, its params) of a sentence-transformers or HF encoder directory."""
  model_config = hf_interop.read_model_config(directory)
  family = families.get(model_config.family)
  config = family.model_config(model_config)
  encoder_params = hf_interop.load_params(directory, family.models.Encoder(config))
  return (SentenceEncoder(config, pooling_of(directory), family.models.Encoder),
          {'encoder': encoder_params})
