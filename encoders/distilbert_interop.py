"""DistilBERT in transformers' layout: the name table `encoders/hf_interop.py` reads and writes with.

  DistilBertModel / ForMaskedLM / ForSequenceClassification / ForTokenClassification /
  ForQuestionAnswering  <->  encoders/distilbert.py's modules

Our layers carry BERT's names (`layers/layer_{i}/attention/query`, ...), which map to
`transformer.layer.{i}.attention.q_lin`, .... DistilBERT's `config.json` has its own keys
(`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`, `dropout`, ...) and no LayerNorm
epsilon: transformers fixes it at 1e-12.
"""
from encoders.config import ConfigError
from encoders.configs import distilbert as distilbert_configs
from encoders.hf_interop import BUFFERS, HF_ACTIVATIONS, Table

# config.json key -> our config.model field (pad_token_id may be absent: 0).
_FIELDS = (
    ('vocab_size', 'vocab_size'), ('dim', 'hidden_size'), ('n_layers', 'num_layers'),
    ('n_heads', 'num_heads'), ('hidden_dim', 'intermediate_size'), ('activation', 'hidden_act'),
    ('max_position_embeddings', 'max_position_embeddings'), ('dropout', 'hidden_dropout_rate'),
    ('attention_dropout', 'attention_dropout_rate'), ('initializer_range', 'initializer_range'),
    ('sinusoidal_pos_embds', 'sinusoidal_pos_embds'),
    ('seq_classif_dropout', 'seq_classif_dropout_rate'), ('qa_dropout', 'qa_dropout_rate'),
    ('pad_token_id', 'pad_token_id'))
LAYER_NORM_EPS = 1e-12  # transformers' DistilBERT LayerNorms, not configurable.


def _read_fields(hf: dict, path: str) -> dict:
  missing = [key for key, _ in _FIELDS if key not in hf and key != 'pad_token_id']
  if missing:
    raise ConfigError(f'{path} lacks {missing}: not a DistilBERT config.json '
                      f'(model_type={hf.get("model_type")!r}).')
  if hf['activation'] not in HF_ACTIVATIONS:
    raise ConfigError(f'{path}: activation={hf["activation"]!r} is not supported; '
                      f'known: {tuple(HF_ACTIVATIONS)}.')
  fields = {ours: hf[key] for key, ours in _FIELDS if key in hf}
  fields['hidden_act'] = HF_ACTIVATIONS[hf['activation']]
  return {**fields, 'layer_norm_eps': LAYER_NORM_EPS, 'type_vocab_size': 1}


def _write_fields(config) -> dict:
  return {key: getattr(config, ours) for key, ours in _FIELDS}


def _check_model(model) -> None:
  eps = model.config.layer_norm_eps
  if eps != LAYER_NORM_EPS:
    raise ConfigError(f'model.layer_norm_eps={eps!r}: transformers\' DistilBERT fixes it at '
                      f'{LAYER_NORM_EPS}.')


_LAYER = r'layers/layer_(\d+)/'
_HF_LAYER = r'transformer.layer.\1.'

DISTILBERT = Table(
    family='distilbert', model_type='distilbert', class_prefix='DistilBert',
    encoder_rules=(
        (r'embeddings/(word|position)_embeddings', r'embeddings.\1_embeddings'),
        (r'embeddings/layer_norm', r'embeddings.LayerNorm'),
        *((_LAYER + f'attention/{ours}', _HF_LAYER + f'attention.{theirs}')
          for ours, theirs in (('query', 'q_lin'), ('key', 'k_lin'), ('value', 'v_lin'),
                               ('output', 'out_lin'))),
        (_LAYER + 'attention_layer_norm', _HF_LAYER + 'sa_layer_norm'),
        (_LAYER + 'mlp/intermediate', _HF_LAYER + 'ffn.lin1'),
        (_LAYER + 'mlp/output', _HF_LAYER + 'ffn.lin2'),
        (_LAYER + 'output_layer_norm', _HF_LAYER + 'output_layer_norm'),
    ),
    head_rules=(
        (r'mlm_head/transform', 'vocab_transform'),
        (r'mlm_head/layer_norm', 'vocab_layer_norm'),
        (r'mlm_head', 'vocab_projector'),  # The output bias.
        (r'classifier/pre_classifier', 'pre_classifier'),
        (r'classifier/dense', 'classifier'),
        (r'span/dense', 'qa_outputs'),
    ),
    skippable=BUFFERS + (r'vocab_(transform|layer_norm|projector)\..*', r'pre_classifier\..*',
                         r'classifier\..*', r'qa_outputs\..*'),
    tied={'vocab_projector.weight': 'embeddings.word_embeddings.weight'},
    base_config=lambda: distilbert_configs.get_model_config('base'),
    pretraining_heads=None,  # No NSP/SOP head.
    read_fields=_read_fields, write_fields=_write_fields,
    base_model_pooler=False, check_model=_check_model)
