"""HF transformers' PyTorch BertForMaskedLM or DebertaV2ForMaskedLM: eager or `torch.compile`,
f32 or bf16 autocast.

Logits at every position, HF's loss (labels -100 ignored), torch AdamW with the usual
no-decay groups (biases, LayerNorm weights). The deberta family is DebertaV2ForMaskedLM
with the legacy MLM head and configs/deberta.py's v3 architecture fields (no EMD: transformers
has none).
"""
import contextlib
import os

os.environ.setdefault('USE_FLAX', '0')  # Keep JAX (and its threads) out of this process.
os.environ.setdefault('USE_JAX', '0')

import numpy as np

from benchmarks.measure import Spec, model_fields
from encoders.configs import deberta as deberta_configs

INPUTS = ('input_ids', 'attention_mask', 'token_type_ids', 'labels')


def bert_model(spec: Spec):
  from transformers import BertConfig, BertForMaskedLM  # pylint: disable=g-import-not-at-top

  fields = model_fields(spec)
  return BertForMaskedLM(BertConfig(
      vocab_size=fields['vocab_size'], hidden_size=fields['hidden_size'],
      num_hidden_layers=fields['num_layers'], num_attention_heads=fields['num_heads'],
      intermediate_size=fields['intermediate_size'], max_position_embeddings=512))


def deberta_model(spec: Spec):
  """DebertaV2ForMaskedLM (legacy head) with the fields ours_step's deberta config has."""
  from transformers import DebertaV2Config, DebertaV2ForMaskedLM  # pylint: disable=g-import-not-at-top

  fields = model_fields(spec)
  v3 = deberta_configs.get_model_config('base')  # The architecture fields beside the widths.
  return DebertaV2ForMaskedLM(DebertaV2Config(
      vocab_size=fields['vocab_size'], hidden_size=fields['hidden_size'],
      num_hidden_layers=fields['num_layers'], num_attention_heads=fields['num_heads'],
      intermediate_size=fields['intermediate_size'], hidden_act=v3.hidden_act,
      max_position_embeddings=v3.max_position_embeddings, type_vocab_size=v3.type_vocab_size,
      layer_norm_eps=v3.layer_norm_eps, relative_attention=v3.relative_attention,
      pos_att_type=list(v3.pos_att_type), position_buckets=v3.position_buckets,
      max_relative_positions=v3.max_relative_positions, share_att_key=v3.share_att_key,
      norm_rel_ebd=v3.norm_rel_ebd, position_biased_input=v3.position_biased_input,
      hidden_dropout_prob=v3.hidden_dropout_rate,
      attention_probs_dropout_prob=v3.attention_dropout_rate, legacy=True))


MODELS = {'bert': bert_model, 'deberta': deberta_model}


def build(spec: Spec, batch: dict[str, np.ndarray]):
  """-> (step: () -> the step's loss, compile_s (None: counted in the first step), info)."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(spec.seed)
  model = MODELS[spec.family](spec).train()
  decay = [p for n, p in model.named_parameters() if not n.endswith('bias') and 'LayerNorm' not in n]
  no_decay = [p for n, p in model.named_parameters() if n.endswith('bias') or 'LayerNorm' in n]
  optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01},
                                 {'params': no_decay, 'weight_decay': 0.0}], lr=1e-4, eps=1e-6)
  forward = torch.compile(model) if spec.system == 'torch_compile' else model
  autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if spec.precision == 'bf16'
              else contextlib.nullcontext())
  inputs = {k: torch.from_numpy(batch[k].astype(np.int64)) for k in INPUTS}

  def step():
    with autocast:
      loss = forward(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  num_params = sum(p.numel() for p in model.parameters())
  info = dict(num_params=int(num_params), head_positions=spec.seq,
              attn_implementation=model.config._attn_implementation,  # pylint: disable=protected-access
              torch_threads=torch.get_num_threads(),
              parameter_sizes=sorted(p.numel() for p in model.parameters()))
  return step, None, info
