"""Inputs longer than the checkpoint's positions (encoders/adaptation/long_inputs.py) and the long
documents that compare the ways to read them (encoders/data/long_documents.py), on the real
all-MiniLM-L6-v2 and the embedded corpus."""
import dataclasses

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath

from encoders import families
from encoders.adaptation import finetune, finetune_init, long_inputs
from encoders.config import ConfigError
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data, long_documents
from encoders.training import checkpointing

TEXT = 'The Amazon is the largest river in South America by discharge of water.'


@pytest.mark.parametrize('offset', [0, 2])
def test_interpolation_doubles_the_table_between_its_rows(offset):
  """Position Interpolation at 2x: position 2p reads row p, 2p + 1 the mean of rows p and p + 1
  (the last one clamps to row n - 1); RoBERTa's padding rows stay first."""
  table = np.random.default_rng(0).normal(size=(offset + 6, 4)).astype(np.float32)
  resized = long_inputs.resize_table(table, offset + 12, 'interpolate', offset)
  positions = table[offset:]
  assert resized.shape == (offset + 12, 4) and resized.dtype == np.float32
  np.testing.assert_array_equal(resized[:offset], table[:offset])
  np.testing.assert_allclose(resized[offset::2][:6], positions, rtol=1e-6)
  np.testing.assert_allclose(resized[offset + 1::2][:5], (positions[:-1] + positions[1:]) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(resized[-1], positions[-1], rtol=1e-6)


def test_copy_repeats_the_table():
  table = np.arange(2 + 5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  resized = long_inputs.resize_table(table, 2 + 12, 'copy', offset=2)
  np.testing.assert_array_equal(resized[:2], table[:2])
  np.testing.assert_array_equal(resized[2:, 0], 2 + np.arange(12) % 5)


def _minilm_source(minilm_dir):
  config = finetune_configs.get_config('topic_minilm')
  config.init_from = minilm_dir
  source = finetune_init.resolve(config, '/unused')
  return source, families.finetuning(families.get(source.model_config.family))


def _hidden(family, source, input_ids, position_ids):
  """Last hidden states of the source's encoder, its params as `source` holds or reads them."""
  model_config = family.model_config(source.model_config)
  pooler = 'pooler' in (source.pretrained or {}).get('encoder', {})
  encoder = family.models.Encoder(model_config, add_pooler=pooler)
  params = (source.pretrained['encoder'] if source.pretrained is not None
            else long_inputs._encoder_params(source, family)['encoder'])  # pylint: disable=protected-access
  hidden, _ = encoder.apply({'params': params}, input_ids, position_ids=position_ids)
  return np.asarray(hidden)


@pytest.mark.parametrize('method', long_inputs.METHODS)
def test_extended_minilm_reads_old_positions_where_the_method_put_them(minilm_dir, method):
  """On real text through the real MiniLM: extended to 1024 positions, position 2p (interpolate)
  or p + 512 (copy) gives the hidden states the original model gives at position p."""
  source, family = _minilm_source(minilm_dir)
  input_ids = jnp.asarray([source.tokenizer.backend.encode(TEXT).ids])
  positions = jnp.arange(input_ids.shape[1])[None]
  original = _hidden(family, source, input_ids, positions)
  extended = long_inputs.extend(source, family, ml_collections.ConfigDict(
      dict(max_positions=1024, method=method)))
  assert extended.model_config.max_position_embeddings == 1024
  assert source.model_config.max_position_embeddings == 512  # The source is not modified.
  moved = positions * 2 if method == 'interpolate' else positions + 512
  np.testing.assert_allclose(_hidden(family, extended, input_ids, moved), original, atol=2e-5)
  assert not np.allclose(_hidden(family, extended, input_ids, positions + 1), original, atol=1e-3)


def test_bad_extensions_are_config_errors(minilm_dir):
  source, family = _minilm_source(minilm_dir)
  with pytest.raises(ConfigError, match=r'max_positions=512: the encoder already has 512'):
    long_inputs.extend(source, family, ml_collections.ConfigDict(
        dict(max_positions=512, method='interpolate')))
  with pytest.raises(ConfigError, match=r"method='rope'"):
    long_inputs.extend(source, family, ml_collections.ConfigDict(
        dict(max_positions=1024, method='rope')))
  unchanged = long_inputs.extend(source, family, ml_collections.ConfigDict(
      dict(max_positions=0, method='interpolate')))
  assert unchanged is source
  relative_config = ml_collections.ConfigDict(source.model_config.to_dict())
  relative_config.position_embedding_type = 'relative_key'
  with pytest.raises(ConfigError, match=r"position_embedding_type='relative_key'"):
    long_inputs.extend(dataclasses.replace(source, model_config=relative_config), family,
                       ml_collections.ConfigDict(dict(max_positions=1024, method='interpolate')))


def _documents(tokenizer, split_records, count, seed):
  return long_documents.build(split_records, tokenizer, count, lead_tokens=520, evidence=1,
                              max_tokens=638, seed=seed)


def test_long_documents_put_the_label_after_the_first_512_tokens(minilm_dir):
  source, _ = _minilm_source(minilm_dir)
  config = finetune_configs.get_config('topic_minilm')
  records, names = finetune_data.topic_records(config.data, config.data.dev_fraction)
  documents = _documents(source.tokenizer, records['test'], 20, seed=0)
  by_text = {r['text']: r['topic'] for r in records['test']}
  for text, label, lead, total in zip(documents.texts, documents.labels, documents.lead_tokens,
                                      documents.num_tokens):
    ids = source.tokenizer.backend.encode(text, add_special_tokens=False).ids
    assert len(ids) == total <= 638 and lead >= 520
    evidence = [t for t in by_text if text.endswith(' ' + t)]
    assert evidence and all(by_text[t] == label for t in evidence), names[label]
    evidence_ids = source.tokenizer.backend.encode(evidence[0], add_special_tokens=False).ids
    assert ids[-len(evidence_ids):] == evidence_ids
    assert len(ids) - len(evidence_ids) == lead  # After [CLS] + 510 tokens: truncation misses it.


@pytest.mark.slow
def test_finetuning_reads_documents_longer_than_the_checkpoint(minilm_dir, tmp_path):
  """MiniLM fine-tuned on whole 640-token documents: refused without long_inputs; with it the
  saved model has 640 positions, the pretrained ones moved by training and the new ones too."""
  source, _ = _minilm_source(minilm_dir)
  config = finetune_configs.get_config('topic_minilm')
  config.init_from = minilm_dir
  config.data.max_length, config.data.max_windows = 640, 1
  config.train.batch_size, config.train.eval_batch_size, config.train.num_epochs = 4, 4, 1.0
  config.train.progress_bar = False
  records, names = finetune_data.topic_records(config.data, config.data.dev_fraction)
  task = finetune_data.Task('classification', names, {
      s: finetune_data.classification_split(
          d.texts, d.labels, source.tokenizer, 640, 256, max_windows=1)
      for s, d in (('train', _documents(source.tokenizer, records['train'], 12, 1)),
                   ('dev', _documents(source.tokenizer, records['dev'], 4, 2)),
                   ('test', _documents(source.tokenizer, records['test'], 4, 3)))})
  assert task.splits['train'].rows['input_ids'].shape[1] == 640
  with pytest.raises(ConfigError, match='exceeds the model'):
    finetune.finetune(config, str(tmp_path / 'refused'), task)
  config.long_inputs.max_positions, config.long_inputs.method = 640, 'interpolate'
  result = finetune.finetune(config, str(tmp_path / 'run'), task)
  assert result['steps_run'] == 3 and 0 <= result['test']['accuracy'] <= 1
  manager = checkpointing.make_manager(str(tmp_path / 'run'), read_only=True)
  saved, _ = checkpointing.restore(manager, manager.latest_step(), None, with_data=False)
  table = np.asarray(saved['params']['encoder']['embeddings']['position_embeddings']['embedding'])
  start = long_inputs.resize_table(
      np.asarray(long_inputs._encoder_params(source, families.get('bert'))  # pylint: disable=protected-access
                 ['encoder']['embeddings']['position_embeddings']['embedding']), 640, 'interpolate')
  assert table.shape == start.shape == (640, 384)
  assert not np.allclose(table[:512], start[:512]) and not np.allclose(table[512:], start[512:])
  assert epath.Path(tmp_path / 'run' / 'results.json').exists()
