"""encoders/adaptation/sentence_objective.py against sentence-transformers (torch) on real MiniLM
embeddings of corpus pairs: the loss (plain, hard negatives, symmetric), and the gradient with and
without GradCache chunks against torch's full-batch gradient."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from encoders import bert, hf_interop, st_export
from encoders.adaptation import sentence_objective
from encoders.config import EncoderConfig
from encoders.data import pairs
from encoders.sentence import SentenceEncoder
from encoders.training import state as state_lib
from encoders.training import trainer
from experiments import embed

ROWS = 8
LENGTH = 32  # Tokens per text: short, so that torch's backward over MiniLM stays quick.


@pytest.fixture(scope='module')
def real_pairs():
  """ROWS test-split description -> extract pairs, each with two same-topic hard negatives."""
  held_out = pairs.make_pairs('description', 'test', hard_negatives='topic', num_negatives=2)
  return dataclasses.replace(held_out, **{f.name: getattr(held_out, f.name)[:ROWS]
                                          for f in dataclasses.fields(held_out)})


@pytest.fixture(scope='module')
def st_model(minilm_dir):
  model = SentenceTransformer(minilm_dir, device='cpu')
  model.max_seq_length = LENGTH
  return model.eval()  # No dropout: both sides compute the same function.


@pytest.fixture(scope='module')
def st_embeddings(st_model, real_pairs):
  """[queries, documents, negatives column 1, column 2]: ROWS x 384 each, from sentence-transformers."""
  columns = [real_pairs.queries, real_pairs.documents] + [
      [n[i] for n in real_pairs.negatives] for i in range(2)]
  return [torch.from_numpy(st_model.encode(c, convert_to_numpy=True)) for c in columns]


@pytest.mark.parametrize('negatives', [0, 1, 2])
@pytest.mark.parametrize('symmetric', [False, True])
def test_loss_matches_sentence_transformers(st_model, st_embeddings, negatives, symmetric):
  directions = ('query_to_doc', 'doc_to_query') if symmetric else ('query_to_doc',)
  reference = MultipleNegativesRankingLoss(st_model, directions=directions,
                                           partition_mode='per_direction')
  expected = float(reference.compute_loss_from_embeddings(st_embeddings[:2 + negatives], None))
  queries, documents, *columns = (e.numpy() for e in st_embeddings)
  hard = np.stack(columns[:negatives], axis=1).reshape(-1, 384) if negatives else None  # Row-major.
  loss, correct = sentence_objective.ranking_loss(queries, documents, hard, 20.0, symmetric)
  assert abs(float(loss) - expected) <= 1e-5, (float(loss), expected)
  scores = queries @ np.concatenate([documents] + columns[:negatives]).T
  assert int(correct) == int(np.sum(np.argmax(scores, axis=1) == np.arange(ROWS)))


def test_hard_negatives_raise_the_loss(st_embeddings):
  """Same-topic negatives are harder than none: the loss can only grow with more candidates."""
  queries, documents, first, _ = (e.numpy() for e in st_embeddings)
  plain, _ = sentence_objective.ranking_loss(queries, documents, None)
  with_negatives, _ = sentence_objective.ranking_loss(queries, documents, first)
  assert float(with_negatives) > float(plain) + 1e-3


def batch_of(real_pairs, minilm_dir) -> dict[str, np.ndarray]:
  return pairs.pair_arrays(real_pairs, embed.load_tokenizer(minilm_dir, LENGTH), LENGTH, LENGTH, 0)


@pytest.fixture(scope='module')
def torch_gradients(st_model, real_pairs):
  """(loss, {HF tensor name: gradient}) of MNRL with one hard negative, full batch, in torch."""
  st_model.zero_grad()
  columns = [real_pairs.queries, real_pairs.documents, [n[0] for n in real_pairs.negatives]]
  features = [st_model.tokenize(c) for c in columns]
  loss = MultipleNegativesRankingLoss(st_model)(features, None)
  loss.backward()
  return float(loss.detach()), {name: p.grad.numpy().copy()
                       for name, p in st_model[0].auto_model.named_parameters() if p.grad is not None}


def hf_named(grads: dict, config: EncoderConfig, tmp_path) -> dict[str, np.ndarray]:
  """Our encoder gradients in transformers' names and layouts (written as a checkpoint, read back)."""
  zeros = {'kernel': np.zeros((384, 384), np.float32), 'bias': np.zeros(384, np.float32)}
  hf_interop.save_checkpoint(str(tmp_path), bert.Encoder(config, add_pooler=True),
                             dict(grads['encoder'], pooler={'dense': zeros}), family='bert')
  return {k: v for k, v in load_file(str(tmp_path / 'model.safetensors')).items() if 'pooler' not in k}


@pytest.mark.parametrize('chunk_size', [0, 2])
def test_gradient_equals_torch_full_batch(chunk_size, minilm_dir, real_pairs, torch_gradients,
                                          tmp_path, record_figure):
  model, params = st_export.load(minilm_dir)
  batch = batch_of(dataclasses.replace(real_pairs, negatives=[n[:1] for n in real_pairs.negatives]),
                   minilm_dir)
  objective = sentence_objective.MultipleNegativesRanking(model, chunk_size=chunk_size)
  loss_fn = lambda p: objective.loss(p, batch, None, {}, deterministic=True)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  expected_loss, expected = torch_gradients
  assert abs(float(loss) - expected_loss) <= 1e-5
  ours = hf_named(jax.device_get(grads), model.config, tmp_path)
  assert set(ours) == set(expected)
  # Relative to the largest gradient: the key biases' gradients are exactly 0 in exact arithmetic
  # (softmax ignores a constant per row), so each side holds only its own ~1e-9 rounding there.
  scale = max(np.max(np.abs(g)) for g in expected.values())
  worst = max(np.max(np.abs(ours[k] - expected[k])) for k in expected) / scale
  record_figure(f'grad, chunk {chunk_size}', worst, '1e-4 of max |grad|')
  assert worst <= 1e-4, worst


def test_chunks_keep_every_negative_and_save_memory(minilm_dir, real_pairs):
  """Chunked embedding gives the full batch's loss, not the mean of per-chunk losses (what gradient
  accumulation over micro-batches would train on), at a fraction of the activation memory."""
  config = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
  model = SentenceEncoder(config)
  batch = batch_of(dataclasses.replace(real_pairs, negatives=[[] for _ in real_pairs.negatives]),
                   minilm_dir)
  params = nn.unbox(model.init(jax.random.key(0), batch['query_input_ids']))['params']
  loss_of = lambda objective, b: float(objective.loss(params, b, None, {}, deterministic=True)[0])
  full = loss_of(sentence_objective.MultipleNegativesRanking(model), batch)
  chunked = loss_of(sentence_objective.MultipleNegativesRanking(model, chunk_size=2), batch)
  per_chunk = np.mean([loss_of(sentence_objective.MultipleNegativesRanking(model),
                               {k: v[i::4] for k, v in batch.items()}) for i in range(4)])
  assert abs(chunked - full) <= 1e-5
  assert full - per_chunk > 0.3  # 7 negatives per query instead of 1: a higher loss.

  big = {k: np.tile(v, (8, 2)) for k, v in batch.items()}  # 64 rows of 64 tokens.
  def temp_bytes(chunk_size):
    objective = sentence_objective.MultipleNegativesRanking(model, chunk_size=chunk_size)
    grad = jax.jit(jax.grad(lambda p: objective.loss(p, big, None, {}, deterministic=True)[0]))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  assert temp_bytes(8) < temp_bytes(0) / 4


def test_trainer_step_takes_the_objective_with_or_without_chunks(minilm_dir, real_pairs):
  """trainer.train_step (the pretraining step) runs the objective as it is; without dropout the
  chunked step's loss and update equal the whole batch's."""
  config = EncoderConfig(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_rate=0.0,
                         attention_dropout_rate=0.0)
  model = SentenceEncoder(config)
  batch = batch_of(real_pairs, minilm_dir)
  tx = optax.sgd(1.0)  # Linear in the gradient (Adam's first step is sign(g) where g ~ 0).
  params = nn.unbox(model.init(jax.random.key(0), batch['query_input_ids']))['params']
  mesh = jax.make_mesh((1, 1, 1), ('data', 'fsdp', 'tensor'))

  def step(chunk_size):
    objective = sentence_objective.MultipleNegativesRanking(model, chunk_size=chunk_size)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 opt_state=tx.init(params), rng=jax.random.key(1))
    run = jax.jit(functools.partial(trainer.train_step, objective=objective, tx=tx,
                                    schedule=lambda s: 1.0, grad_accum_steps=1,
                                    skip_nonfinite=False, mesh=mesh))
    return run(state, batch)

  (whole, whole_metrics), (chunked, chunked_metrics) = step(0), step(4)
  assert bool(chunked_metrics['finite'])
  np.testing.assert_allclose(chunked_metrics['ranking_loss'][0], whole_metrics['ranking_loss'][0],
                             rtol=1e-5)
  assert chunked_metrics['in_batch_accuracy'][1] == ROWS
  updates = [jax.tree.leaves(jax.tree.map(jnp.subtract, new.params, params))
             for new in (whole, chunked)]
  scale = max(float(jnp.max(jnp.abs(u))) for u in updates[0])
  for a, b in zip(*updates):
    np.testing.assert_allclose(a, b, atol=1e-4 * scale)  # f32 sums in another order.
