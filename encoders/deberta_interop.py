"""DeBERTa-v2/v3 in transformers' layout: the name table `encoders/hf_interop.py` reads and writes with.

  DebertaV2Model / ForMaskedLM (legacy=True head) / ForSequenceClassification /
  ForTokenClassification / ForQuestionAnswering  <->  encoders/deberta.py's modules

Our encoder keeps BERT's layer layout; transformers' `encoder.rel_embeddings` and
`encoder.LayerNorm` are our `relative_embeddings` and `relative_layer_norm`, its
`encoder.conv` our `conv`, and its ContextPooler (outside the `deberta.` prefix) our
`encoder/pooler`. DebertaV2Model has no pooler: export an Encoder(add_pooler=False).

transformers has no Enhanced Mask Decoder: a model with `emd` exports its weights (EMD
adds none; the absolute position table it reads is kept as transformers' ignored
`embeddings.position_embeddings`), and DebertaV2ForMaskedLM then predicts from the last
layer's output, as it does for the released checkpoints. Imports set emd=False.
"""
from encoders.config import ConfigError
from encoders.configs import deberta as deberta_configs
from encoders.hf_interop import (ARCHITECTURE_FIELDS, BUFFERS, ENCODER_RULES, Table,
                                 config_fields, encoder_fields)

# config.json key -> (our field, transformers' default when the key is absent).
_FIELDS = {
    'relative_attention': ('relative_attention', False),
    'pos_att_type': ('pos_att_type', None),
    'position_buckets': ('position_buckets', -1),
    'max_relative_positions': ('max_relative_positions', -1),
    'share_att_key': ('share_att_key', False),
    'norm_rel_ebd': ('norm_rel_ebd', 'none'),
    'position_biased_input': ('position_biased_input', True),
    'conv_kernel_size': ('conv_kernel_size', 0),
    'conv_act': ('conv_act', 'tanh'),
    'conv_groups': ('conv_groups', 1),
    'pooler_hidden_act': ('pooler_hidden_act', 'gelu'),
    'pooler_dropout': ('pooler_dropout_rate', 0.0),
}


def _read_fields(hf: dict, path: str) -> dict:
  hidden = hf.get('hidden_size')
  for key, expected in (('embedding_size', hidden), ('pooler_hidden_size', hidden),
                        ('attention_head_size', hidden // max(hf.get('num_attention_heads', 1), 1))):
    if hf.get(key, expected) != expected:
      raise ConfigError(f'{path}: {key}={hf[key]} (not {expected}) is not supported.')
  fields = {ours: hf.get(key, default) for key, (ours, default) in _FIELDS.items()}
  terms = fields['pos_att_type'] or ()
  if isinstance(terms, str):  # The released config.json files: 'p2c|c2p'.
    terms = terms.lower().split('|')
  fields['pos_att_type'] = [term.strip() for term in terms if term.strip()]
  if fields['position_buckets'] <= 0:
    fields['position_buckets'] = -1
  return {**encoder_fields(hf, path), **fields, 'emd': False}


def _write_fields(config) -> dict:
  fields = {key: getattr(config, ours) for key, (ours, _) in _FIELDS.items()}
  fields['pos_att_type'] = list(config.pos_att_type)
  return {**config_fields(config), **fields, 'pooler_hidden_size': config.hidden_size,
          'legacy': True}


def _check_model(model) -> None:
  if model.config.projects_embeddings:
    raise ConfigError('model.embedding_size: DeBERTa embeds at hidden_size.')


DEBERTA = Table(
    family='deberta', model_type='deberta-v2', tensor_prefix='deberta', class_prefix='DebertaV2',
    encoder_rules=(
        (r'embeddings/(word|position|token_type)_embeddings', r'embeddings.\1_embeddings'),
        (r'embeddings/layer_norm', r'embeddings.LayerNorm'),
        (r'relative_embeddings', 'encoder.rel_embeddings'),
        (r'relative_layer_norm', 'encoder.LayerNorm'),
        (r'conv', 'encoder.conv.conv'),
        (r'conv/layer_norm', 'encoder.conv.LayerNorm'),
        (r'layers/layer_(\d+)/attention/(query|key|value)', r'encoder.layer.\1.attention.self.\2_proj'),
        (r'layers/layer_(\d+)/attention/(pos_key_proj|pos_query_proj)',
         r'encoder.layer.\1.attention.self.\2'),
        *ENCODER_RULES[3:-1],  # BERT's attention output, MLP and LayerNorms; no pooler.
    ),
    head_rules=(
        (r'mlm_head/transform', 'cls.predictions.transform.dense'),
        (r'mlm_head/layer_norm', 'cls.predictions.transform.LayerNorm'),
        (r'mlm_head', 'cls.predictions'),  # The output bias.
        (r'encoder/pooler/dense', 'pooler.dense'),
        (r'classifier/dense', 'classifier'),
        (r'span/dense', 'qa_outputs'),
    ),
    skippable=BUFFERS + (r'embeddings\.position_embeddings\.weight', r'pooler\..*', r'cls\..*',
                         r'lm_predictions\..*', r'mask_predictions\..*', r'classifier\..*',
                         r'qa_outputs\..*'),
    tied={'cls.predictions.decoder.weight': 'embeddings.word_embeddings.weight',
          'cls.predictions.decoder.bias': 'cls.predictions.bias'},
    base_config=lambda: deberta_configs.get_model_config('base'),
    pretraining_heads=None,
    read_fields=_read_fields, write_fields=_write_fields,
    architecture_fields=ARCHITECTURE_FIELDS + tuple(
        ours for ours, _ in _FIELDS.values() if ours != 'pooler_dropout_rate'),
    base_model_pooler=False,
    check_model=_check_model)
