"""Class imbalance options of fine-tuning: the focal loss against torch, the long-tailed subsample
and class-balanced sampling on the real topic labels, and all three through `finetune`."""
import numpy as np
import pytest
import torch

from encoders.adaptation import finetune
from encoders.config import ConfigError
from encoders.configs import finetune as finetune_configs
from encoders.data import finetune_data, imbalance
from encoders.data import tokenizer as tokenizer_lib
from tests.test_finetune import _classification_task, _config, _restored_params

import jax
import jax.numpy as jnp


@pytest.fixture(scope='module')
def topic_train_labels() -> np.ndarray:
  config = finetune_configs.get_config('topic')
  splits, names = finetune_data.topic_records(config.data, config.data.dev_fraction)
  labels = np.array([r['topic'] for r in splits['train']])
  assert len(names) == 12 and len(np.unique(labels)) == 12
  return labels


def torch_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
  """Lin et al. 2017 in torch: (1 - p_t)^gamma * CE, with p_t = exp(-CE)."""
  cross_entropy = torch.nn.functional.cross_entropy(logits, labels, reduction='none')
  return (1 - torch.exp(-cross_entropy)) ** gamma * cross_entropy


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_and_its_gradient_equal_torch(gamma):
  rng = np.random.default_rng(0)
  logits = (3 * rng.standard_normal((64, 12))).astype(np.float32)
  labels = rng.integers(0, 12, 64)
  weights = rng.uniform(0.2, 3.0, 64).astype(np.float32)

  def ours(x):
    return jnp.sum(finetune.focal_loss(x, jnp.asarray(labels), gamma) * weights)

  value, grad = jax.value_and_grad(ours)(jnp.asarray(logits))
  reference_logits = torch.tensor(logits, requires_grad=True)
  reference = (torch_focal(reference_logits, torch.tensor(labels), gamma) * torch.tensor(weights)).sum()
  reference.backward()
  np.testing.assert_allclose(float(value), reference.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), reference_logits.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_focal_loss_down_weights_easy_examples():
  logits = jnp.array([[6.0, 0.0], [0.2, 0.0]])  # An easy and a hard example of class 0.
  cross_entropy = finetune.focal_loss(logits, jnp.array([0, 0]), 0.0)
  focal = finetune.focal_loss(logits, jnp.array([0, 0]), 2.0)
  ratio = np.asarray(focal / cross_entropy)
  assert ratio[0] < 1e-4 and 0.2 < ratio[1] < 0.3  # (1 - p_t)^2: 0.0025^2 and 0.45^2.


@pytest.mark.parametrize('ratio', [1.0, 10.0, 50.0])
def test_long_tailed_subsample_of_the_topic_labels(topic_train_labels, ratio):
  labels = topic_train_labels
  kept = imbalance.long_tailed(labels, ratio, seed=0)
  assert len(np.unique(kept)) == len(kept) and kept.max() < len(labels)
  original = np.bincount(labels, minlength=12)
  counts = np.bincount(labels[kept], minlength=12)
  order = np.argsort(-original, kind='stable')
  n_max = original.max()
  expected = np.minimum(np.round(n_max * ratio ** (-np.arange(12) / 11)), original[order])
  np.testing.assert_array_equal(counts[order], expected)
  assert counts[order[0]] == n_max
  if ratio == 1.0:
    assert len(kept) == len(labels)
  else:
    assert counts.max() / counts.min() == pytest.approx(ratio, rel=0.05)
  np.testing.assert_array_equal(kept, imbalance.long_tailed(labels, ratio, seed=0))
  if ratio > 1:
    assert not np.array_equal(kept, imbalance.long_tailed(labels, ratio, seed=1))


def test_long_tail_ratio_below_one_is_refused():
  with pytest.raises(ConfigError, match='long_tail_ratio'):
    imbalance.long_tailed(np.array([0, 1]), 0.5, seed=0)


def test_balanced_stream_draws_every_class_equally(topic_train_labels):
  labels = topic_train_labels[imbalance.long_tailed(topic_train_labels, 20.0, seed=0)]
  draws = 60_000
  stream = imbalance.balanced_stream(labels, draws, np.random.default_rng(0))
  frequency = np.bincount(labels[stream], minlength=12) / draws
  # Binomial standard deviation of a class's share: sqrt(p (1 - p) / draws) ~ 0.0011.
  np.testing.assert_allclose(frequency, 1 / 12, atol=5 * np.sqrt((1 / 12) * (11 / 12) / draws))
  # Within the rarest class, rows are drawn uniformly too.
  rarest = np.flatnonzero(labels == np.argmin(np.bincount(labels, minlength=12)))
  hits = np.bincount(np.searchsorted(rarest, stream[np.isin(stream, rarest)]), minlength=len(rarest))
  assert hits.min() > 0.5 * hits.mean() and hits.max() < 1.5 * hits.mean()


def _run(minilm_dir, tmp_path, name, **head):
  tokenizer = tokenizer_lib.load(minilm_dir)
  task = _classification_task(tokenizer, np.random.default_rng(0))
  config = _config(minilm_dir, num_epochs=2.0)
  config.head.update(pooling='mean', **head)
  finetune.finetune(config, str(tmp_path / name), task=task)
  return _restored_params(str(tmp_path / name))


def test_focal_with_gamma_zero_trains_as_cross_entropy(minilm_dir, tmp_path):
  """12 updates: gamma 0 gives cross-entropy's parameters; gamma 2 other ones."""
  cross_entropy = _run(minilm_dir, tmp_path, 'ce')
  focal_0 = _run(minilm_dir, tmp_path, 'focal0', loss='focal', focal_gamma=0.0)
  focal_2 = _run(minilm_dir, tmp_path, 'focal2', loss='focal', focal_gamma=2.0)
  leaves = lambda tree: jax.tree.leaves(tree)
  for a, b in zip(leaves(cross_entropy), leaves(focal_0)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert max(float(np.abs(a - b).max()) for a, b in zip(leaves(cross_entropy), leaves(focal_2))) > 1e-4


@pytest.mark.slow
def test_long_tail_balanced_sampling_and_focal_on_the_topic_task(minilm_dir, tmp_path):
  config = finetune_configs.get_config('topic_tiny')
  config.data.update(tokenizer_path=minilm_dir, max_train_examples=1200, long_tail_ratio=20.0,
                     sampling='balanced')
  config.model.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
  config.head.update(loss='focal', class_weights='balanced')
  config.train.update(num_epochs=1.0, log_every=1)
  result = finetune.finetune(config, str(tmp_path))
  splits, _ = finetune_data.topic_records(config.data, config.data.dev_fraction)
  labels = [r['topic'] for r in splits['train'][:1200]]
  assert result['train_rows'] == len(imbalance.long_tailed(labels, 20.0, config.seed)) < 1200
  assert np.isfinite(result['test']['macro_f1'])


@pytest.mark.parametrize('field,value', [('head.loss', 'dice'), ('head.focal_gamma', -1.0),
                                         ('data.sampling', 'oversample')])
def test_bad_imbalance_options_fail_at_start(minilm_dir, tmp_path, field, value):
  config = _config(minilm_dir)
  if field == 'head.focal_gamma':
    config.head.loss = 'focal'
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
    finetune.finetune(config, str(tmp_path))


def test_study_cells_differ_only_in_loss_weights_and_order(tmp_path):
  """experiments/class_imbalance.py: every cell is the README's topic_tiny recipe on the same
  long-tailed records, changed only in head.loss / focal_gamma / class_weights / data.sampling."""
  from experiments import class_imbalance  # pylint: disable=g-import-not-at-top
  from encoders.training import sweep  # pylint: disable=g-import-not-at-top
  base = class_imbalance.base_config('workdirs/bert_tiny', 50.0, {})
  recipe = finetune_configs.get_config('topic_tiny').to_dict()
  changed = {'init_from', 'data.long_tail_ratio'}
  flat = lambda d: {f'{s}.{k}': v for s, sub in d.items() if isinstance(sub, dict)
                    for k, v in sub.items()} | {k: v for k, v in d.items() if not isinstance(v, dict)}
  assert {k for k, v in flat(base.to_dict()).items() if flat(recipe)[k] != v} == changed
  allowed = {'head.loss', 'head.focal_gamma', 'head.class_weights', 'data.sampling'}
  for cell in class_imbalance.CELLS:
    config = flat(sweep.apply_overrides(base, cell.overrides).to_dict())
    assert {k for k, v in config.items() if flat(base.to_dict())[k] != v} <= allowed, cell.name
  assert len({str(c.overrides) for c in class_imbalance.CELLS}) == len(class_imbalance.CELLS)
