"""The analysis toolkit (analysis/) against transformers, numpy and first principles."""

import jax
import numpy as np
import pytest
import torch
import transformers

from encoders.analysis import (attention, forward, health, hidden_states, probing, subject,
                               texts, token_loss, word_order)
from encoders import bert, deberta, families, hf_interop
from encoders.config import EncoderConfig
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import metrics, objectives, reload, trainer
from tests import training_util

SENTENCES = ['The river flows through the capital of France.', 'Hello!',
             'He was a famous American singer, songwriter and actor in the 1950s.']


@pytest.fixture(scope='module')
def minilm(minilm_dir):
  return subject.load(minilm_dir)


@pytest.fixture(scope='module')
def small_tokenizer():
  """A WordPiece tokenizer of the test sentences (~100 tokens): small MLM heads, fast tests."""
  return tokenizer_lib.train('wordpiece', SENTENCES * 4, 200, lowercase=True)


def tiny_subject(tokenizer, seed: int = 0, **fields) -> subject.Subject:
  """A random 2-layer BERT (hidden 32) with an MLM head over `tokenizer`'s vocabulary."""
  config = EncoderConfig(**{**dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                                   num_heads=2, intermediate_size=64, max_position_embeddings=128),
                            **fields})
  model = subject.analysable(bert.EncoderForPreTraining(config))
  blank = subject.Subject('tiny', 'bert', model, {}, tokenizer)
  return subject.reinitialized(blank, seed)


def test_attention_weights_equal_transformers_output_attentions(minilm, minilm_dir, record_figure):
  encoded = subject.encode(minilm.tokenizer, SENTENCES, 128)  # Rows of 11, 4 and 16 tokens.
  outputs = forward.run(minilm, encoded)
  hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation='eager').eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(encoded.input_ids, dtype=torch.long),
                attention_mask=torch.tensor(encoded.segment_ids > 0, dtype=torch.long),
                output_attentions=True, output_hidden_states=True)
  assert outputs.attention.shape == (6, 3, 12, 16, 16)
  assert list((encoded.segment_ids > 0).sum(1)) == [11, 4, 16]
  worst, worst_hidden = 0.0, 0.0
  for row, length in enumerate((encoded.segment_ids > 0).sum(1)):
    for layer in range(6):
      ours = outputs.attention[layer, row, :, :length]  # Real query rows, every key.
      expected = theirs.attentions[layer][row, :, :length].numpy()
      worst = max(worst, np.abs(ours - expected).max())
    for layer in range(7):
      ours = outputs.hidden_states[layer, row, :length]
      expected = theirs.hidden_states[layer][row, :length].numpy()
      worst_hidden = max(worst_hidden, np.abs(ours - expected).max())
  record_figure('attention', worst, '1e-5')
  record_figure('hidden states', worst_hidden, '1e-4')
  assert worst <= 1e-5
  assert worst_hidden <= 1e-4


def test_recording_changes_no_output_and_plain_apply_sows_nothing(minilm):
  encoded = subject.encode(minilm.tokenizer, SENTENCES, 128)
  model, params = minilm.model, minilm.params
  plain = model.apply({'params': params}, encoded.input_ids, encoded.segment_ids)
  recorded, inputs, weights = forward.apply_recording(model, params, encoded.input_ids,
                                                      encoded.segment_ids)
  np.testing.assert_allclose(recorded[0], plain[0], atol=2e-5)
  assert len(inputs) == len(weights) == 6
  assert isinstance(plain, tuple) and len(plain) == 2  # (hidden, pooled): no collections back.
  _, state = model.apply({'params': params}, encoded.input_ids, mutable=['intermediates'])
  assert [w.shape for w in jax.tree.leaves(state)] == [(3, 12, 16, 16)] * 6


@pytest.mark.parametrize('family,fields', [
    ('albert', dict(num_hidden_groups=2, num_layers=3, embedding_size=16)),
    ('distilbert', dict(num_layers=2)),
])
def test_shared_and_distilled_families_equal_transformers(small_tokenizer, tmp_path, family,
                                                         fields):
  """ALBERT's shared groups are called once per layer (2 groups over 3 layers: group 0 runs
  layers 0 and 1); DistilBERT has its own embeddings. (transformers' ALBERT cannot return
  attentions with inner_group_num > 1: its head_mask indexing fails.)"""
  tokenizer = small_tokenizer
  entry = families.get(family)
  config = entry.config_class(**{**dict(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                        num_heads=2, intermediate_size=64,
                                        max_position_embeddings=64), **fields})
  model = subject.analysable(entry.models.EncoderForPreTraining(config))
  one = subject.reinitialized(subject.Subject(family, family, model, {}, tokenizer))
  encoded = subject.encode(tokenizer, SENTENCES, 32)
  outputs = forward.run(one, encoded)
  hf_interop.save_checkpoint(str(tmp_path), model, one.params, family=family)
  hf = transformers.AutoModel.from_pretrained(str(tmp_path), attn_implementation='eager').eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(encoded.input_ids, dtype=torch.long),
                attention_mask=torch.tensor(encoded.segment_ids > 0, dtype=torch.long),
                output_attentions=True).attentions
  assert outputs.attention.shape[0] == len(theirs) == config.num_layers
  for row, length in enumerate((encoded.segment_ids > 0).sum(1)):
    for layer, expected in enumerate(theirs):
      np.testing.assert_allclose(outputs.attention[layer, row, :, :length],
                                 expected[row, :, :length].numpy(), atol=1e-5)


def test_deberta_is_refused_with_a_clear_error(small_tokenizer):
  config = deberta.DebertaConfig(vocab_size=small_tokenizer.vocab_size, hidden_size=32,
                                 num_layers=1, num_heads=2, intermediate_size=64,
                                 max_position_embeddings=64)
  model = subject.analysable(deberta.EncoderForPreTraining(config))
  one = subject.reinitialized(subject.Subject('d', 'deberta', model, {}, small_tokenizer))
  with pytest.raises(ValueError, match='DeBERTa has its own attention'):
    forward.run(one, subject.encode(small_tokenizer, SENTENCES, 32))


def test_head_statistics_from_first_principles():
  # One text [CLS] a b [SEP] pad; head 0 attends uniformly to the 4 real tokens, head 1 to
  # the previous token (the first token to itself).
  input_ids = np.array([[101, 7, 8, 102, 0]])
  segment_ids = np.array([[1, 1, 1, 1, 0]])
  weights = np.zeros((1, 1, 2, 5, 5))
  weights[0, 0, 0, :, :4] = 0.25
  weights[0, 0, 1, 0, 0] = 1.0
  for q in range(1, 5):
    weights[0, 0, 1, q, q - 1] = 1.0
  stats = attention.head_statistics(weights, input_ids, segment_ids, 101, 102)
  np.testing.assert_allclose(stats['entropy'][0], [np.log(4), 0.0], atol=1e-12)
  np.testing.assert_allclose(stats['cls'][0], [0.25, 0.5])  # Head 1: queries 0 and 1 -> [CLS].
  np.testing.assert_allclose(stats['sep'][0], [0.25, 0.0])
  np.testing.assert_allclose(stats['previous'][0], [0.1875, 0.75])  # (0 + 3 x 0.25) / 4
  np.testing.assert_allclose(stats['next'][0], [0.1875, 0.0])


def test_uniform_attention_baseline_from_first_principles():
  # Two texts of 4 and 2 real tokens: uniform weights over the real keys give entropy ln(n) and
  # 1/n on the previous token for every query but the first, averaged over the 6 real queries.
  input_ids = np.array([[101, 7, 8, 102], [101, 102, 0, 0]])
  segment_ids = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
  weights = attention.uniform_weights(segment_ids)
  assert weights.shape == (1, 2, 1, 4, 4)
  np.testing.assert_allclose(weights[0, 1, 0, 0], [0.5, 0.5, 0.0, 0.0])
  stats = attention.head_statistics(weights, input_ids, segment_ids, 101, 102)
  np.testing.assert_allclose(stats['entropy'], [[(4 * np.log(4) + 2 * np.log(2)) / 6]], rtol=1e-6)
  np.testing.assert_allclose(stats['previous'], [[(3 * 0.25 + 1 * 0.5) / 6]], rtol=1e-6)
  np.testing.assert_allclose(stats['cls'], [[(4 * 0.25 + 2 * 0.5) / 6]], rtol=1e-6)


def test_title_mentions_mark_the_tokens_that_overlap_them(minilm):
  text = 'Albert Einstein was born in Ulm. Einstein developed relativity.'
  spans = texts.title_spans('Albert Einstein (physicist)', text)
  marked = {text[s:e] for s, e in spans}
  assert marked == {'Albert Einstein', 'Albert', 'Einstein'}
  encoded = subject.encode(minilm.tokenizer, [text], 32)
  inside = texts.in_spans(encoded.offsets[0], spans)
  # Tokens: [CLS] albert einstein was born in ul ##m . einstein developed relativity . [SEP]
  assert list(np.flatnonzero(inside)) == [1, 2, 9]


def test_probes_stay_at_chance_on_random_labels_and_learn_a_planted_one():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(600, 24)), rng.normal(size=(600, 24))
  random_accuracy = probing.probe_accuracy(train_x, rng.integers(0, 4, 600), test_x,
                                           rng.integers(0, 4, 600), 4)
  assert abs(random_accuracy - 0.25) < 0.06
  planted = lambda x: (x[:, 3] - 0.5 * x[:, 7] > 0).astype(np.int32)
  assert probing.probe_accuracy(train_x, planted(train_x), test_x, planted(test_x), 2) > 0.95


def test_per_token_loss_is_the_cross_entropy_of_the_logits_where_masked(small_tokenizer):
  one = tiny_subject(small_tokenizer)
  losses = token_loss.token_losses(one, SENTENCES, max_length=32, passes=3, seed=1, batch_size=2)
  groups = token_loss.mask_groups(losses.scored, 3, 1)
  assert (groups[losses.scored] >= 0).all() and (groups[~losses.scored] == -1).all()
  for group in range(3):
    inputs = token_loss.masked_inputs(losses.encoded, groups, group, small_tokenizer.mask_id)
    assert (inputs[groups == group] == small_tokenizer.mask_id).all()
    logits = np.asarray(one.model.apply({'params': one.params}, inputs,
                                        losses.encoded.segment_ids)['mlm_logits'], np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    expected = log_z - np.take_along_axis(logits, losses.encoded.input_ids[..., None], -1)[..., 0]
    chosen = groups == group
    np.testing.assert_allclose(losses.loss[chosen], expected[chosen], rtol=1e-5, atol=1e-5)
  assert (losses.loss[~losses.scored] == 0).all()


def test_a_checkpoint_against_itself_differs_by_exactly_zero(small_tokenizer):
  one = tiny_subject(small_tokenizer)
  assert all(row['distance'] == 0.0 and row['relative'] == 0.0
             for row in health.compare(one, one).values())
  assert set(health.group_norms(health.difference(one.params, one.params)).values()) == {0.0}
  norms = health.group_norms(one.params)
  flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(one.params)])
  assert norms['total'] == pytest.approx(np.linalg.norm(flat.astype(np.float64)), rel=1e-12)
  assert {'encoder/embeddings', 'encoder/layers/layer_0', 'encoder/layers/layer_1'} <= set(norms)
  other = tiny_subject(small_tokenizer, seed=1)
  assert health.compare(one, other)['total']['distance'] > 0


def test_interpolation_ends_reproduce_each_checkpoints_own_loss(small_tokenizer):
  a, b = tiny_subject(small_tokenizer), tiny_subject(small_tokenizer, seed=1)
  kwargs = dict(max_length=32, passes=3)
  losses = health.interpolation_losses(a, b, SENTENCES, [0.0, 0.5, 1.0], **kwargs)
  direct = [token_loss.mean_loss(token_loss.token_losses(s, SENTENCES, **kwargs)) for s in (a, b)]
  assert losses[0] == direct[0] and losses[2] == direct[1]
  assert losses[1] not in direct


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory, small_tokenizer):
  """A BERT-tiny workdir trained 4 steps on synthetic data, checkpoints at steps 2 and 4, three
  validation batches."""
  workdir = tmp_path_factory.mktemp('trained')
  small_tokenizer.save(str(workdir / 'tokenizer_source'))
  config = training_util.tiny_config(train__num_steps=4, checkpoint__every_steps=2,
                                     train__eval_steps=3,
                                     model__vocab_size=small_tokenizer.vocab_size,
                                     model__num_layers=2)
  config.data.tokenizer_path = str(workdir / 'tokenizer_source')
  trainer.train_and_evaluate(config, str(workdir))
  return str(workdir)


def test_a_trained_workdir_loads_at_every_step_and_its_run_norms(trained_workdir):
  rows = health.run_norms(trained_workdir)
  assert [row['step'] for row in rows] == [2, 4] and rows[0]['update_norms'] is None
  first, last = subject.load(trained_workdir, 2), subject.load(trained_workdir)
  assert last.name.endswith('@4') and first.has_mlm_head
  expected = health.group_norms(health.difference(first.params, last.params))
  assert rows[1]['update_norms'] == expected and expected['total'] > 0
  weights, _ = attention.attention_maps(last, SENTENCES[:2])
  assert weights.shape[:3] == (2, 2, 2)


def test_word_shuffle_keeps_each_segments_tokens_and_moves_masks_with_them():
  cls, sep, pad = 2, 3, 0
  # Row 0: two packed texts (segments 1 and 2), the first a pair (token types 0 and 1); row 1 one text.
  input_ids = np.array([[cls, 10, 11, 12, 13, sep, 14, 15, sep, cls, 16, 17, 18, sep, pad, pad],
                        [cls, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, sep, pad, pad, pad, pad]])
  segment_ids = np.array([[1] * 9 + [2] * 5 + [0] * 2, [1] * 12 + [0] * 4])
  token_type_ids = np.array([[0] * 6 + [1] * 3 + [0] * 7, [0] * 16])
  masked_positions = np.array([[1, 7, 11], [2, 5, 10]])
  batch = dict(input_ids=input_ids, segment_ids=segment_ids, token_type_ids=token_type_ids,
               position_ids=np.tile(np.arange(16), (2, 1)), masked_positions=masked_positions)
  shuffled = word_order.shuffle_words(batch, (cls, sep), np.random.default_rng(0))
  moved = shuffled['input_ids']
  for name in ('segment_ids', 'token_type_ids', 'position_ids'):
    assert shuffled[name] is batch[name]
  fixed = np.isin(input_ids, (cls, sep)) | (segment_ids == 0)
  assert (moved[fixed] == input_ids[fixed]).all()
  groups = segment_ids * 10 + token_type_ids
  for row in range(2):
    for group in np.unique(groups[row][~fixed[row]]):
      places = (groups[row] == group) & ~fixed[row]
      assert sorted(moved[row][places]) == sorted(input_ids[row][places])
  rows = np.arange(2)[:, None]
  np.testing.assert_array_equal(moved[rows, shuffled['masked_positions']],
                                input_ids[rows, masked_positions])
  assert (moved[1] != input_ids[1]).sum() >= 6  # 10 movable tokens: a permutation moved most.
  assert (batch['input_ids'] == input_ids).all() and batch['masked_positions'] is masked_positions


def test_word_order_is_blind_without_positions_and_as_is_equals_the_runs_validation(
    trained_workdir):
  result = word_order.measure(trained_workdir)
  logged = [row for row in metrics.read_jsonl(trained_workdir) if 'eval/mlm_loss' in row]
  assert result['step'] == 4 and logged[-1]['step'] == 4
  np.testing.assert_allclose(result['as_is']['mlm_loss'], logged[-1]['eval/mlm_loss'], rtol=1e-5)

  config, _, params = reload.load_workdir(trained_workdir)
  objective = objectives.make_objective(config, sentence_head=False)
  tokenizer, batches = reload.validation_batches(config, trained_workdir)
  assert tokenizer is None and len(batches) == 3  # Synthetic rows: no [CLS] or [SEP] to keep.
  shuffled = [word_order.shuffle_words(b, (), np.random.default_rng(1)) for b in batches]
  table = params['encoder']['embeddings']['position_embeddings']['embedding']
  def losses(scale):  # (as is, shuffled) MLM loss with the position table times `scale`.
    scaled = jax.tree.map(lambda x: x, params)
    scaled['encoder']['embeddings']['position_embeddings']['embedding'] = table * scale
    return [word_order.objective_losses(objective, scaled, b)['mlm_loss'] for b in (batches, shuffled)]
  blind = losses(0.0)  # Without positions, self-attention and the MLM head are permutation-equivariant.
  np.testing.assert_allclose(blind[0], blind[1], rtol=1e-5)
  reading = losses(50.0)  # A position table that matters: the shuffle changes the loss.
  assert abs(reading[1] - reading[0]) > 100 * abs(blind[1] - blind[0]) + 1e-3
  with pytest.raises(ValueError, match='Distillation run is not supported'):
    word_order.objective_losses(type('Distillation', (), {})(), params, batches)


def test_pca_and_pooling_against_sklearn_and_numpy():
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 0.5, 0.1])
  points, explained = hidden_states.pca_2d(x)
  reference = PCA(2).fit(x)
  expected = reference.transform(x)
  np.testing.assert_allclose(np.abs(points), np.abs(expected), atol=1e-10)  # Axes up to sign.
  np.testing.assert_allclose(explained, reference.explained_variance_ratio_, rtol=1e-10)
  hidden = rng.normal(size=(2, 3, 4))  # [batch, length, hidden]
  segment_ids = np.array([[1, 1, 0], [1, 1, 1]])
  np.testing.assert_allclose(hidden_states.pool(hidden, segment_ids, 'mean'),
                             [hidden[0, :2].mean(0), hidden[1].mean(0)])
  np.testing.assert_array_equal(hidden_states.pool(hidden, segment_ids, 'cls'), hidden[:, 0])
