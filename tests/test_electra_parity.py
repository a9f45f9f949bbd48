"""ELECTRA's training step against an independent reference: HF PyTorch `ElectraForMaskedLM`
(generator) + `ElectraForPreTraining` (discriminator) wired as ELECTRA shares them (one embeddings
module: word, position and type tables and their LayerNorm; the generator's decoder is the word
table), built from our random parameters through our export, fed the same masked batch and the
same replacements. Losses and every parameter's gradient (the shared tables: the sum from both
networks) agree to 1e-4; so do the parameters after AdamW steps against torch.optim.AdamW with
the same schedule, clipping and weight-decay groups.
"""
import flax
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from encoders import electra_interop
from encoders.electra import ElectraConfig
from encoders.training import optimizer as optimizer_lib
from encoders.training.electra_objective import ReplacedTokenDetection

BOUND = 1e-4
RTD_WEIGHT = 50.0
VOCAB, BATCH, LENGTH, PREDICTIONS = 50, 3, 12, 4
MASK_ID = 3
# Hidden 32, 2 layers; the generator half as wide; the shared embeddings narrower than both
# (16), so each network has its own embeddings_project.
CONFIG = ElectraConfig.from_config(dict(
    vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
    max_position_embeddings=16, embedding_size=16, generator_size_fraction=0.5,
    generator_num_heads=2, hidden_dropout_rate=0.0, attention_dropout_rate=0.0))


class GivenReplacements(ReplacedTokenDetection):
  """Our objective with the generator's samples replaced by given ids [batch, predictions]."""

  def __init__(self, replacements):
    super().__init__(CONFIG, rtd_weight=RTD_WEIGHT)
    self.replacements = replacements

  def sample(self, mlm_logits, rng):
    del mlm_logits, rng
    return self.replacements


def masked_batch(seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """(our batch, original ids, replacements): one segment per row, row 1 padded after 8 tokens,
  PREDICTIONS - 1 masked positions per row (the last slot unused); one replacement per row
  equals the original token (then it counts as original)."""
  rng = np.random.default_rng(seed)
  original = rng.integers(5, VOCAB, (BATCH, LENGTH)).astype(np.int32)
  lengths = np.array([LENGTH, 8, LENGTH - 1])
  segment_ids = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
  original *= segment_ids
  masked_positions = np.zeros((BATCH, PREDICTIONS), np.int32)
  masked_weights = np.zeros((BATCH, PREDICTIONS), np.float32)
  for row, length in enumerate(lengths):
    masked_positions[row, :-1] = np.sort(rng.choice(np.arange(1, length), PREDICTIONS - 1, False))
    masked_weights[row, :-1] = 1.0
  rows = np.arange(BATCH)[:, None]
  masked_ids = original[rows, masked_positions] * (masked_weights > 0)
  input_ids = original.copy()
  input_ids[rows, masked_positions[:, :-1]] = MASK_ID
  replacements = rng.integers(5, VOCAB, (BATCH, PREDICTIONS)).astype(np.int32)
  replacements[:, 0] = masked_ids[:, 0]
  batch = dict(input_ids=input_ids, segment_ids=segment_ids,
               position_ids=np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (BATCH, LENGTH)),
               token_type_ids=np.zeros((BATCH, LENGTH), np.int32),
               masked_positions=masked_positions, masked_ids=masked_ids.astype(np.int32),
               masked_weights=masked_weights)
  return batch, original, replacements


def random_params(seed: int) -> dict:
  """Every parameter random (LayerNorm scales around 1), so no wrong gradient can hide at 0."""
  objective = ReplacedTokenDetection(CONFIG)
  batch, _, _ = masked_batch(0)
  shapes = flax.linen.unbox(jax.eval_shape(objective.init, jax.random.key(0), batch))
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    noise = rng.normal(0, 0.2, shape.shape).astype(np.float32)
    return noise + 1.0 if path[-1].key == 'scale' else noise
  return jax.tree_util.tree_map_with_path(draw, shapes)


def network_name(network: str, name: str) -> str:
  """One name space for both networks: the shared embeddings as 'embeddings.*', the rest
  '<network>/<HF name>'."""
  name = name.removeprefix('electra.')
  return name if name.startswith('embeddings.') else f'{network}/{name}'


def export(params: dict, directory) -> dict[str, np.ndarray]:
  """{network_name: array} of both networks, written by our interop (`params` may be grads)."""
  directories = electra_interop.save_pair(str(directory), MODEL, params)
  tensors = {}
  for network, path in directories.items():
    for name, array in load_file(f'{path}/model.safetensors').items():
      previous = tensors.setdefault(network_name(network, name), array)
      np.testing.assert_array_equal(previous, array, err_msg=f'{name} differs between networks')
  return tensors


MODEL = ReplacedTokenDetection(CONFIG).model


def torch_pair(params: dict, directory) -> tuple[torch.nn.Module, torch.nn.Module]:
  """HF discriminator and generator from our params, sharing ELECTRA's embeddings module."""
  directories = electra_interop.save_pair(str(directory), MODEL, params)
  discriminator = transformers.ElectraForPreTraining.from_pretrained(
      directories['discriminator'], attn_implementation='eager').eval()
  generator = transformers.ElectraForMaskedLM.from_pretrained(
      directories['generator'], attn_implementation='eager').eval()
  generator.electra.embeddings = discriminator.electra.embeddings
  generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
  return discriminator, generator


def torch_loss(discriminator, generator, batch, original, replacements) -> dict:
  """ELECTRA's losses from the HF models: the generator's MLM loss at the masked positions, the
  discriminator's on the sequence with the replacements written in, MLM + 50 x RTD."""
  tensor = lambda array: torch.from_numpy(np.asarray(array, np.int64))
  used = batch['masked_weights'] > 0
  rows, slots = np.nonzero(used)
  positions = batch['masked_positions'][rows, slots]
  labels = np.full((BATCH, LENGTH), -100)
  labels[rows, positions] = batch['masked_ids'][rows, slots]
  corrupted = original.copy()
  corrupted[rows, positions] = replacements[rows, slots]
  attention_mask = tensor(batch['segment_ids'])
  mlm = generator(input_ids=tensor(batch['input_ids']), attention_mask=attention_mask,
                  labels=tensor(labels)).loss
  rtd = discriminator(input_ids=tensor(corrupted), attention_mask=attention_mask,
                      labels=tensor(corrupted != original)).loss
  return {'mlm': mlm, 'rtd': rtd, 'total': mlm + RTD_WEIGHT * rtd}


@jax.jit
def _loss_and_grads(params, batch, replacements):
  objective = GivenReplacements(replacements)
  return jax.value_and_grad(objective.loss, has_aux=True)(
      params, batch, jax.random.key(0), objective.denominators(batch), deterministic=True)


def our_loss_and_grads(params, batch, replacements) -> tuple[dict[str, float], dict]:
  """Our objective's ({'mlm', 'rtd', 'total'} losses, gradients) with the given replacements."""
  (total, metrics), grads = _loss_and_grads(params, batch, replacements)
  ratio = lambda name: float(metrics[name][0] / metrics[name][1])
  return {'mlm': ratio('mlm_loss'), 'rtd': ratio('rtd_loss'), 'total': float(total)}, grads


def unique_parameters(discriminator, generator) -> dict[str, torch.nn.Parameter]:
  """{network_name: parameter} of the pair, each shared tensor once (the generator's decoder
  weight is the word table)."""
  named = {}
  for network, model in (('discriminator', discriminator), ('generator', generator)):
    for name, param in model.named_parameters():
      if all(param is not seen for seen in named.values()):
        named[network_name(network, name)] = param
  return named


def test_one_step_losses_and_every_gradient_match_hf(tmp_path):
  params = random_params(1)
  batch, original, replacements = masked_batch(2)
  assert np.any(replacements[:, 1:] != batch['masked_ids'][:, 1:])  # Some tokens are replaced.
  ours, grads = our_loss_and_grads(params, batch, replacements)

  discriminator, generator = torch_pair(params, tmp_path / 'params')
  losses = torch_loss(discriminator, generator, batch, original, replacements)
  losses['total'].backward()
  theirs = {term: float(loss.detach()) for term, loss in losses.items()}
  for term in ('mlm', 'rtd', 'total'):
    assert abs(ours[term] - theirs[term]) <= BOUND, (term, ours[term], theirs[term])

  torch_grads = {name: param.grad.numpy() for name, param in
                 unique_parameters(discriminator, generator).items()}
  our_grads = export(grads, tmp_path / 'grads')
  # Every HF parameter has a gradient of ours (the tied decoder weight is the word table).
  assert set(our_grads) == set(torch_grads)
  assert np.abs(torch_grads['embeddings.word_embeddings.weight']).max() > 100 * BOUND
  for name, expected in torch_grads.items():
    np.testing.assert_allclose(our_grads[name], expected, atol=BOUND, rtol=0, err_msg=name)


def torch_adamw(parameters: dict, opt) -> torch.optim.AdamW:
  """AdamW with ELECTRA's groups: no weight decay on biases and LayerNorm (the released code's
  exclude_from_weight_decay)."""
  no_decay = [p for n, p in parameters.items() if n.endswith(('bias', 'LayerNorm.weight'))]
  decay = [p for n, p in parameters.items() if not n.endswith(('bias', 'LayerNorm.weight'))]
  return torch.optim.AdamW([{'params': decay, 'weight_decay': opt.weight_decay},
                            {'params': no_decay, 'weight_decay': 0.0}],
                           lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)


def warmup_then_linear(step: int, opt, num_steps: int) -> float:
  """The learning rate at `step` (0-based) from first principles: 0 -> peak over warm-up, then
  linearly to 0 at num_steps."""
  if step < opt.warmup_steps:
    return opt.learning_rate * step / opt.warmup_steps
  return opt.learning_rate * (1 - (step - opt.warmup_steps) / (num_steps - opt.warmup_steps))


@pytest.mark.parametrize('clip', [1.0, 0.0])
def test_adamw_steps_match_torch(tmp_path, clip):
  """ELECTRA's optimizer (configs/electra.py) for a few steps, with the global-norm clip (the
  gradient's norm is ~10x the clip) and without, against torch."""
  from encoders.configs import electra as electra_configs
  opt = electra_configs.get_config('small').optimizer
  opt.update(learning_rate=1e-2, warmup_steps=2, grad_clip_norm=clip)
  num_steps = 5
  params = random_params(3)
  initial = export(params, tmp_path / 'start')
  discriminator, generator = torch_pair(params, tmp_path / 'start')
  parameters = unique_parameters(discriminator, generator)
  torch_optimizer = torch_adamw(parameters, opt)
  tx, _ = optimizer_lib.make_optimizer(opt, num_steps)
  state = tx.init(params)

  for step in range(num_steps):
    batch, original, replacements = masked_batch(10 + step)
    _, grads = our_loss_and_grads(params, batch, replacements)
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)

    torch_optimizer.zero_grad()
    torch_loss(discriminator, generator, batch, original, replacements)['total'].backward()
    if clip:
      norm = torch.nn.utils.clip_grad_norm_(list(parameters.values()), clip)
      assert norm > 5 * clip
    for group in torch_optimizer.param_groups:
      group['lr'] = warmup_then_linear(step, opt, num_steps)
    torch_optimizer.step()

  ours = export(params, tmp_path / 'ours')
  for name, param in parameters.items():
    if name.endswith('attention.self.key.bias'):
      # Its gradient is 0 up to rounding (a softmax ignores a shift shared by all keys), and
      # Adam scales that rounding noise up to steps of size lr: the two sides' noise differs.
      continue
    np.testing.assert_allclose(ours[name], param.detach().numpy(), atol=BOUND, rtol=0, err_msg=name)
  moved = max(float(np.abs(ours[name] - start).max()) for name, start in initial.items())
  assert moved > 100 * BOUND  # The steps moved the parameters far beyond the bound.
