"""HF transformers' PyTorch BertForMaskedLM: eager or `torch.compile`, f32 or bf16 autocast.

Logits at every position, HF's loss (labels -100 ignored), torch AdamW with the usual
no-decay groups (biases, LayerNorm weights).
"""
import contextlib
import os

os.environ.setdefault('USE_FLAX', '0')  # Keep JAX (and its threads) out of this process.
os.environ.setdefault('USE_JAX', '0')

import numpy as np

from benchmarks.measure import Spec, model_fields

INPUTS = ('input_ids', 'attention_mask', 'token_type_ids', 'labels')


def build(spec: Spec, batch: dict[str, np.ndarray]):
  """-> (step: () -> None that runs one step, compile_s (None: counted in the first step), info)."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import BertConfig, BertForMaskedLM  # pylint: disable=g-import-not-at-top

  torch.manual_seed(spec.seed)
  fields = model_fields(spec)
  config = BertConfig(
      vocab_size=fields['vocab_size'], hidden_size=fields['hidden_size'],
      num_hidden_layers=fields['num_layers'], num_attention_heads=fields['num_heads'],
      intermediate_size=fields['intermediate_size'], max_position_embeddings=512)
  model = BertForMaskedLM(config).train()
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

  num_params = sum(p.numel() for p in model.parameters())
  info = dict(num_params=int(num_params), head_positions=spec.seq,
              attn_implementation=config._attn_implementation,  # pylint: disable=protected-access
              torch_threads=torch.get_num_threads())
  return step, None, info
