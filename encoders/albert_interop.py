"""ALBERT in transformers' layout: the name table `encoders/hf_interop.py` reads and writes with.

  AlbertModel / ForPreTraining (MLM + SOP) / ForMaskedLM / ForSequenceClassification /
  ForTokenClassification / ForQuestionAnswering  <->  encoders/albert.py's modules

Group g's inner layer j (`albert_layer_groups.{g}.albert_layers.{j}`) is our
`layers/layer_{g}/attention_{j}` + `layers/layer_{g}/ffn_{j}`. transformers shares both
halves of a layer alike, so only sharing 'all' and 'none' (exported as L groups) have
its layout; the Table 4 ablation modes 'attention' and 'ffn' are refused with a reason.
"""
from encoders.config import ConfigError
from encoders.configs import albert as albert_configs
from encoders.hf_interop import (ARCHITECTURE_FIELDS, BUFFERS, Table, config_fields,
                                 encoder_fields)

_GROUP = r'layers/layer_(\d+)/(attention|ffn)_(\d+)'
_HF_LAYER = r'encoder.albert_layer_groups.\1.albert_layers.\3'
# The ALBERT-only fields of config.json: (HF key, our field).
_FIELDS = (('embedding_size', 'embedding_size'), ('num_hidden_groups', 'num_hidden_groups'),
           ('inner_group_num', 'inner_group_num'))


def _read_fields(hf: dict, path: str) -> dict:
  missing = [key for key, _ in _FIELDS if key not in hf]
  if missing:
    raise ConfigError(f'{path} lacks {missing}.')
  return {**encoder_fields(hf, path), **{ours: hf[key] for key, ours in _FIELDS}, 'sharing': 'all'}


def _write_fields(config) -> dict:
  return {**config_fields(config), 'embedding_size': config.embedding.hidden_size,
          'num_hidden_groups': config.attention_groups, 'inner_group_num': config.inner_group_num}


def _check_model(model) -> None:
  c = model.config
  if not c.hf_compatible:
    raise ConfigError(f"model.sharing={c.sharing!r}: transformers' ALBERT shares attention and "
                      "FFN alike; only sharing 'all' or 'none' can be exported.")


ALBERT = Table(
    family='albert', model_type='albert', class_prefix='Albert',
    encoder_rules=(
        (r'embeddings/(word|position|token_type)_embeddings', r'embeddings.\1_embeddings'),
        (r'embeddings/layer_norm', r'embeddings.LayerNorm'),
        (r'embeddings_project', r'encoder.embedding_hidden_mapping_in'),
        (_GROUP + r'/attention/(query|key|value)', _HF_LAYER + r'.attention.\4'),
        (_GROUP + r'/attention/output', _HF_LAYER + r'.attention.dense'),
        (_GROUP.replace('(attention|ffn)', '(attention)') + '/layer_norm',
         _HF_LAYER + '.attention.LayerNorm'),
        (_GROUP + r'/mlp/intermediate', _HF_LAYER + '.ffn'),
        (_GROUP + r'/mlp/output', _HF_LAYER + '.ffn_output'),
        (_GROUP.replace('(attention|ffn)', '(ffn)') + '/layer_norm',
         _HF_LAYER + '.full_layer_layer_norm'),
        (r'pooler/dense', r'pooler'),
    ),
    head_rules=(
        (r'mlm_head/transform', 'predictions.dense'),
        (r'mlm_head/layer_norm', 'predictions.LayerNorm'),
        (r'mlm_head', 'predictions'),  # The output bias.
        (r'sentence_order_head/dense', 'sop_classifier.classifier'),
        (r'classifier/dense', 'classifier'),
        (r'span/dense', 'qa_outputs'),
    ),
    skippable=BUFFERS + (r'pooler\..*', r'predictions\..*', r'sop_classifier\..*',
                         r'classifier\..*', r'qa_outputs\..*'),
    tied={'predictions.decoder.weight': 'embeddings.word_embeddings.weight',
          'predictions.decoder.bias': 'predictions.bias'},
    base_config=lambda: albert_configs.get_model_config('base'),
    pretraining_heads='ForPreTraining',
    read_fields=_read_fields, write_fields=_write_fields,
    architecture_fields=ARCHITECTURE_FIELDS + ('embedding_size', 'inner_group_num',
                                               'attention_groups', 'ffn_groups'),
    check_model=_check_model)
