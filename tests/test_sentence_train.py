"""Sentence training end to end on the corpus pairs: experiments.train_sentence improves held-out
retrieval and exports a model sentence-transformers encodes to our vectors; the options train
together; a 2-device data-parallel run computes the losses of a 1-device run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from encoders.adaptation import sentence_train
from encoders.config import ConfigError
from encoders.configs import sentence
from encoders.training import checkpointing, metrics
from experiments import embed
from tests import training_util

# A 2-layer, width-32 model from random init over MiniLM's vocabulary (no tokenizer to train).
TINY = {'init_from': 'none', 'model.num_layers': 2, 'model.hidden_size': 32, 'model.num_heads': 4,
        'model.intermediate_size': 64, 'model.vocab_size': 30522,
        'model.max_position_embeddings': 128, 'data.document_length': 64,
        'optimizer.learning_rate': 1e-3, 'train.progress_bar': False,
        'eval.max_articles': 200}  # Evaluation indexes 200 of each split's ~500 articles.


def tiny(minilm_dir, **overrides):
  config = sentence.get_config('tiny')
  for key, value in {**TINY, 'data.tokenizer_path': minilm_dir, **overrides}.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def flags(minilm_dir, **overrides) -> list[str]:
  values = {**TINY, 'data.tokenizer_path': minilm_dir, **overrides}
  return [f'--config.{k}={v}' for k, v in values.items()]


def run(workdir, minilm_dir, num_devices=1, **overrides) -> subprocess.CompletedProcess:
  command = [sys.executable, '-m', 'experiments.train_sentence', '--config', 'configs/sentence.py',
             '--workdir', str(workdir), *flags(minilm_dir, **overrides)]
  return subprocess.run(command, cwd=training_util.ROOT, env=training_util.env(num_devices),
                        capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_training_improves_retrieval_and_exports(minilm_dir, tmp_path, record_figure):
  result = run(tmp_path, minilm_dir, **{'train.num_steps': 60})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  for split in ('validation', 'test'):
    before, after = results['before'][split]['ndcg@10'], results['after'][split]['ndcg@10']
    record_figure(f'{split} nDCG@10 gain', after - before, '> 0.05')
    assert after > before + 0.05, (split, before, after)
    assert results['after'][split]['documents'] == 200 < results['after'][split]['queries'] + 10
  assert results['best_step'] == 60 and results['train_pairs'] > 8000
  assert 'before: ndcg@10=' in result.stdout and 'after (step 60): ndcg@10=' in result.stdout

  texts = ['a river in South America', 'Carmen is an opera in four acts by Georges Bizet.']
  ours = embed.Embedder(results['export'], 64, batch_size=2)(texts)
  theirs = SentenceTransformer(results['export'], device='cpu').encode(texts)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  logged = metrics.read_jsonl(str(tmp_path))
  losses = [r['train/ranking_loss'] for r in logged if 'train/ranking_loss' in r]
  assert losses[-1] < losses[0]


@pytest.mark.slow
def test_attention_pooling_symmetric_hard_negatives_and_chunks_train_together(minilm_dir, tmp_path):
  config = tiny(minilm_dir, pooling='attention', **{
      'data.pairs': 'title', 'data.hard_negatives': 'topic', 'loss.symmetric': True,
      'train.chunk_size': 8, 'train.batch_size': 16, 'train.num_steps': 40,
      'eval.pairs': 'title'})
  results = sentence_train.train_sentence(config, str(tmp_path))
  assert results['after']['validation']['ndcg@10'] > results['before']['validation']['ndcg@10'] + 0.05
  assert results['export'] is None and not os.path.exists(tmp_path / 'export')  # No ST module.
  manager = checkpointing.make_manager(str(tmp_path), read_only=True)
  state, _ = checkpointing.restore(manager, 40, None, with_data=False)
  query = np.asarray(state['params']['attention_pooling']['query'])
  assert np.linalg.norm(query) > 1e-2  # Learned away from zero (mean pooling).
  logged = metrics.read_jsonl(str(tmp_path))
  assert [r['step'] for r in logged if 'train/ranking_loss' in r] == [20, 40]


@pytest.mark.slow
def test_two_devices_compute_the_losses_of_one(minilm_dir, tmp_path):
  steps = {'train.num_steps': 3, 'train.log_every': 1, 'train.chunk_size': 8,
           'model.hidden_dropout_rate': 0.0, 'model.attention_dropout_rate': 0.0,
           'optimizer.eps': 1e-2}  # Adam with a large eps: updates linear in tiny gradients.
  losses = {}
  for devices, shape in ((1, '(1,1,1)'), (2, '(2,1,1)')):
    workdir = tmp_path / f'devices_{devices}'
    result = run(workdir, minilm_dir, devices, **{**steps, 'mesh.shape': shape})
    assert result.returncode == 0, result.stderr[-3000:]
    losses[devices] = [r['train/ranking_loss'] for r in metrics.read_jsonl(str(workdir))
                       if 'train/ranking_loss' in r]
  assert len(losses[1]) == 3
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4)


def test_bad_settings_fail_at_start(minilm_dir, tmp_path):
  for overrides, message in (({'train.chunk_size': 5}, 'chunk_size=5'),
                             ({'train.batch_size': 1}, 'batch_size=1'),
                             ({'pooling': 'lasttoken'}, "pooling='lasttoken'"),
                             ({'eval.pairs': 'sentences'}, "eval.pairs='sentences'")):
    with pytest.raises(ConfigError, match=message):
      sentence_train.train_sentence(tiny(minilm_dir, **overrides), str(tmp_path))
