"""DeBERTa-v3 replaced-token detection (encoders/deberta.py: RTDPair) on ELECTRA's objective:
the three embedding sharings over several optimizer steps, the RTD loss against torch, the
discriminator exported to transformers, and tiny pretraining through the entry point (resume
after SIGKILL, a 2x2x2 mesh equal to one device)."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from encoders import deberta, hf_interop
from encoders.adaptation import finetune
from encoders.config import ConfigError
from encoders.configs import deberta as deberta_configs
from encoders.configs import finetune as finetune_configs
from encoders.data import tokenizer as tokenizer_lib
from encoders.training import objectives, synthetic, trainer
from encoders.training.electra_objective import MaskedOrReplaced, ReplacedTokenDetection
from tests import training_util
from tests.test_checkpointing import kill_and_resume
from tests.test_deberta_training import DEBERTA_TINY, one_device_and_2x2x2
from tests.test_electra_training import _params, _topic_like_task
from tests.test_hf_interop import max_diff

VOCAB = 40
FORCED = 7  # The token the rigged generator always samples.
MODEL = dict(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
             max_position_embeddings=16, position_buckets=8, hidden_dropout_rate=0.0,
             attention_dropout_rate=0.0)


def pair_config(sharing: str, **overrides) -> deberta.RTDConfig:
  return deberta.RTDConfig.from_config({**MODEL, 'embedding_sharing': sharing, **overrides})


def contract_batch(seed: int = 0) -> dict:
  return synthetic.make_batch(np.random.default_rng(seed), 2, 12, 4, VOCAB, pairs=False)


def word_tables(params) -> dict:
  """The generator's table and the discriminator's own word parameters (absent: None)."""
  embeddings = params['discriminator_encoder']['embeddings']
  own = lambda name: np.asarray(embeddings[name]['embedding']) if name in embeddings else None
  return {'generator': np.asarray(
              params['generator_model']['encoder']['embeddings']['word_embeddings']['embedding']),
          'discriminator': own('word_embeddings'), 'delta': own('word_embeddings_delta')}


@functools.cache
def train(sharing: str, steps: int = 4):
  """The same init and batches trained `steps` Adam steps with lambda = 50 and with lambda = 0
  (one compiled step for both). Returns (initial params, {lambda: final params})."""
  config = pair_config(sharing)
  batches = [contract_batch(seed) for seed in range(steps)]
  objective = ReplacedTokenDetection(config, pair_class=deberta.RTDPair)
  params = nn.unbox(objective.init(jax.random.key(0), batches[0]))
  final = training_util.adam_with_and_without_rtd(
      lambda rtd_weight: ReplacedTokenDetection(config, rtd_weight, pair_class=deberta.RTDPair),
      params, batches)
  return jax.device_get(params), final


def test_gdes_generator_table_learns_only_from_mlm_and_the_delta_only_from_rtd():
  initial, final = train('gdes')
  start, rtd, no_rtd = word_tables(initial), word_tables(final[50.0]), word_tables(final[0.0])
  assert start['discriminator'] is None  # Its words are the generator's table + the delta.
  np.testing.assert_array_equal(start['delta'], 0.0)
  # The RTD loss moves neither the generator's table nor any generator weight.
  assert not np.array_equal(rtd['generator'], start['generator'])
  jax.tree.map(np.testing.assert_array_equal, final[50.0]['generator_model'],
               final[0.0]['generator_model'])
  # The delta moves with the RTD loss only.
  assert np.abs(rtd['delta']).max() > 1e-3
  np.testing.assert_array_equal(no_rtd['delta'], 0.0)

  # The discriminator reads E_G + delta: the same logits as an encoder whose own table is that
  # sum (computed here in numpy), with the same layers and head.
  batch = contract_batch(7)
  pair = deberta.RTDPair(pair_config('gdes'))
  inputs = [batch[k] for k in ('input_ids', 'segment_ids', 'position_ids', 'token_type_ids')]
  logits = pair.apply({'params': final[50.0]}, *inputs, method='discriminator')
  encoder_params = jax.tree.map(np.asarray, dict(final[50.0]['discriminator_encoder']))
  embeddings = dict(encoder_params['embeddings'])
  del embeddings['word_embeddings_delta']
  embeddings['word_embeddings'] = {'embedding': rtd['generator'] + rtd['delta']}
  encoder = deberta.Encoder(pair.config.discriminator)
  hidden, _ = encoder.apply({'params': {**encoder_params, 'embeddings': embeddings}}, *inputs)
  head = deberta.MaskPredictionHead(pair.config.discriminator)
  head_params = {'params': final[50.0]['discriminator_predictions']}
  expected = head.apply(head_params, hidden, batch['segment_ids'])
  np.testing.assert_allclose(logits, expected, atol=1e-6)
  # Without the delta the logits differ: the delta is read.
  embeddings['word_embeddings'] = {'embedding': rtd['generator']}
  hidden, _ = encoder.apply({'params': {**encoder_params, 'embeddings': embeddings}}, *inputs)
  assert np.abs(head.apply(head_params, hidden, batch['segment_ids']) - logits).max() > 1e-4


def test_es_shares_one_table_that_both_losses_train():
  initial, final = train('es')
  start, rtd, no_rtd = word_tables(initial), word_tables(final[50.0]), word_tables(final[0.0])
  assert start['discriminator'] is None and start['delta'] is None  # One table in all.
  assert not np.array_equal(no_rtd['generator'], start['generator'])  # MLM trains it...
  assert np.abs(rtd['generator'] - no_rtd['generator']).max() > 1e-3  # ... and so does RTD.


def test_nes_keeps_two_tables_each_trained_by_its_own_loss():
  initial, final = train('nes')
  start, rtd, no_rtd = word_tables(initial), word_tables(final[50.0]), word_tables(final[0.0])
  assert start['delta'] is None
  assert start['discriminator'].shape == start['generator'].shape
  assert not np.allclose(start['discriminator'], start['generator'])  # Initialised apart.
  jax.tree.map(np.testing.assert_array_equal, final[50.0]['generator_model'],
               final[0.0]['generator_model'])
  assert np.abs(rtd['discriminator'] - start['discriminator']).max() > 1e-3
  np.testing.assert_array_equal(no_rtd['discriminator'], start['discriminator'])


def test_rtd_loss_equals_torch_bce_over_real_tokens():
  config = pair_config('gdes')
  batch = contract_batch(3)
  objective = ReplacedTokenDetection(config, pair_class=deberta.RTDPair)
  shapes = nn.unbox(jax.eval_shape(objective.init, jax.random.key(0), batch))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), shapes)
  params['generator_model']['mlm_head']['bias'][FORCED] = 1e4  # Always samples FORCED.
  loss, metrics = jax.jit(lambda p: objective.loss(p, batch, jax.random.key(1),
                                                   objective.denominators(batch),
                                                   deterministic=True))(params)
  # The discriminator's input from first principles: FORCED at every used masked slot.
  rows, slots = np.nonzero(batch['masked_weights'])
  positions = batch['masked_positions'][rows, slots]
  corrupted = np.array(batch['input_ids'])
  corrupted[rows, positions] = FORCED
  replaced = np.zeros(corrupted.shape, np.float32)
  replaced[rows, positions] = batch['masked_ids'][rows, slots] != FORCED
  logits = objective.model.apply({'params': params}, corrupted, batch['segment_ids'],
                                 batch['position_ids'], batch['token_type_ids'],
                                 method='discriminator')
  real = torch.from_numpy(batch['segment_ids'] > 0)
  bce = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(np.asarray(logits))[real], torch.from_numpy(replaced)[real])
  np.testing.assert_allclose(metrics['rtd_loss'][0] / metrics['rtd_loss'][1], bce.item(), rtol=1e-5)
  mlm = metrics['mlm_loss'][0] / metrics['mlm_loss'][1]
  np.testing.assert_allclose(loss, mlm + 50.0 * bce.item(), rtol=1e-5)
  assert 0 < replaced.sum() < real.sum()


def torch_mask_prediction_head(head: dict, hidden: torch.Tensor, eps: float) -> torch.Tensor:
  """The release's LMMaskPredictionHead in torch: LayerNorm(h + h[:, :1]), dense, gelu, one logit."""
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  x = torch.nn.functional.layer_norm(hidden + hidden[:, :1], (hidden.shape[-1],),
                                     t(head['layer_norm']['scale']), t(head['layer_norm']['bias']),
                                     eps)
  x = torch.nn.functional.gelu(x @ t(head['dense']['kernel']) + t(head['dense']['bias']))
  return (x @ t(head['classifier']['kernel']) + t(head['classifier']['bias']))[..., 0]


def test_rtd_head_of_a_packed_row_equals_the_release_head_on_each_example():
  config = pair_config('gdes').discriminator
  head = deberta.MaskPredictionHead(config)
  hidden = np.random.default_rng(0).normal(size=(1, 7, 32)).astype(np.float32)
  segment_ids = np.array([[1, 1, 1, 2, 2, 2, 0]])
  params = random_params_of(head, hidden, segment_ids)
  ours = np.asarray(head.apply({'params': params}, hidden, segment_ids))
  for start, end in ((0, 3), (3, 6)):
    alone = torch_mask_prediction_head(params, torch.from_numpy(hidden[:, start:end]),
                                       config.layer_norm_eps).numpy()
    np.testing.assert_allclose(ours[:, start:end], alone, atol=1e-5)


def random_params_of(module, *inputs) -> dict:
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))['params']
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda x: rng.normal(0, 0.5, x.shape).astype(np.float32), shapes)


def test_gdes_discriminator_exported_to_transformers_gives_its_logits(tmp_path, record_figure):
  _, final = train('gdes')  # A delta that has moved.
  params = final[50.0]
  pair = deberta.RTDPair(pair_config('gdes'))
  encoder_params = deberta.pretrained_encoder(params)
  encoder = deberta.Encoder(pair.config.discriminator)
  assert hf_interop.save_checkpoint(str(tmp_path), encoder, encoder_params,
                                    family='deberta') == 'DebertaV2Model'
  model, info = transformers.DebertaV2Model.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not any(info.values()), info  # No missing or unexpected keys.
  exported = model.embeddings.word_embeddings.weight.detach().numpy()
  tables = word_tables(params)
  np.testing.assert_allclose(exported, tables['generator'] + tables['delta'], atol=1e-7)

  batch = contract_batch(5)
  real = np.ones_like(batch['segment_ids'])
  real[1, 9:] = 0  # One example per row (transformers has no packing), row 1 padded.
  batch['segment_ids'] = real
  ours = pair.apply({'params': params}, batch['input_ids'], batch['segment_ids'],
                    batch['position_ids'], batch['token_type_ids'], method='discriminator')
  with torch.no_grad():
    hidden = model.eval()(torch.from_numpy(batch['input_ids']).long(),
                          attention_mask=torch.from_numpy(batch['segment_ids'] > 0).long())[0]
    theirs = torch_mask_prediction_head(params['discriminator_predictions'], hidden,
                                        pair.config.discriminator.layer_norm_eps).numpy()
  diff = max_diff(ours, theirs, batch['segment_ids'] > 0)
  record_figure('rtd_export_max_diff', diff, '<= 1e-4')
  assert diff <= 1e-4


def test_configs_choose_the_objective_and_validate():
  tiny = deberta_configs.get_config('tiny,objective=rtd')
  objective = objectives.make_objective(tiny, sentence_head=False)
  assert isinstance(objective, ReplacedTokenDetection)
  c = objective.model.config
  assert (c.sharing, c.generator.num_layers, c.discriminator.num_layers) == ('gdes', 2, 4)
  assert c.generator.hidden_size == c.discriminator.hidden_size and objective.rtd_weight == 50.0
  assert c.generator.emd and not c.discriminator.emd
  assert tiny.optimizer.learning_rate == deberta_configs.get_config('tiny').optimizer.learning_rate
  assert type(objectives.make_objective(deberta_configs.get_config('tiny'), False)).__name__ \
      == 'MaskedLanguageModeling'
  # The release's rtd_*.json generators: half the depth at the same width.
  for size, layers in (('xsmall', 6), ('small', 3), ('base', 6), ('large', 12)):
    config = deberta_configs.get_config(f'{size},objective=rtd')
    pair = deberta.RTDConfig.from_config(config.model)
    assert pair.generator.num_layers == layers
    assert pair.generator.hidden_size == pair.discriminator.hidden_size
  assert deberta_configs.get_config('xsmall,objective=rtd').optimizer.learning_rate == 3e-4
  with pytest.raises(ConfigError, match='model.embedding_sharing'):
    pair_config('shared')
  with pytest.raises(ConfigError, match='model.generator_hidden_size'):
    pair_config('gdes', generator_hidden_size=16)
  with pytest.raises(ConfigError, match='model.embedding_gradients'):  # ELECTRA's, not v3's.
    pair_config('gdes', embedding_gradients='mlm')
  tiny.model.objective = 'electra'
  with pytest.raises(ConfigError, match='config.model.objective'):
    MaskedOrReplaced.from_config(tiny, False)


# The RTD tiny recipe shrunk to training_util.TINY (DeBERTa tiny's test overrides).
RTD_TINY = {**DEBERTA_TINY, 'model.objective': 'rtd'}


def rtd_config(**overrides):
  config = deberta_configs.get_config('tiny,objective=rtd')
  for key, value in {**training_util.TINY, **RTD_TINY,
                     **{k.replace('__', '.'): v for k, v in overrides.items()}}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _sharded_child():
  """Runs in a subprocess with 8 CPU devices: losses and parameters on 1 device and on 2x2x2."""
  jax.config.update('jax_threefry_partitionable', True)
  config = rtd_config(optimizer__eps=1e-2)  # See test_sharding.COMPARABLE.
  training_util.print_report(one_device_and_2x2x2(config, ('loss', 'mlm_loss', 'rtd_loss')))


@pytest.mark.slow
def test_2x2x2_mesh_gives_the_one_device_losses_and_parameters():
  report = training_util.child_report('test_deberta_rtd', '_sharded_child')
  for sharded, reference in zip(report['sharded'], report['reference']):
    assert sharded == pytest.approx(reference, rel=1e-4)
  assert report['reference'][-1]['loss'] != report['reference'][0]['loss']
  assert report['param_diff'] < 1e-5, report['param_diff']


@pytest.mark.slow
def test_tiny_gdes_pretrains_and_resumes_after_sigkill(tmp_path):
  expected, resumed = kill_and_resume(tmp_path, 24, 12, config='configs/deberta.py:tiny,objective=rtd',
                                      **{k.replace('.', '__'): v for k, v in RTD_TINY.items()})
  assert resumed == expected
  rtd_losses = training_util.train_metric(str(tmp_path / 'straight'), 'rtd_loss')
  assert sorted(rtd_losses) == sorted(expected) and all(np.isfinite(list(rtd_losses.values())))


@pytest.mark.slow
def test_rtd_workdir_fine_tunes_from_the_discriminator_with_its_effective_table(minilm_dir, tmp_path):
  pretrain_dir, tune_dir = str(tmp_path / 'pretrain'), str(tmp_path / 'tune')
  # MiniLM's tokenizer (30522 tokens) stands in for a trained one; batches are synthetic.
  trainer.train_and_evaluate(rtd_config(model__vocab_size=30522, data__tokenizer_path=minilm_dir,
                                        train__num_steps=2), pretrain_dir)
  config = finetune_configs.get_config('topic')
  config.init_from = pretrain_dir
  config.train.update(batch_size=8, eval_batch_size=8, num_epochs=1.0, log_every=1)
  config.optimizer.learning_rate = 0.0  # Saved weights = initial weights.
  result = finetune.finetune(config, tune_dir, task=_topic_like_task(tokenizer_lib.load(minilm_dir)))
  assert result['new_parameters'] == ['classifier', 'encoder/pooler']
  pretrained, tuned = _params(pretrain_dir), _params(tune_dir)['encoder']
  discriminator = pretrained['discriminator_encoder']
  generator_table = pretrained['generator_model']['encoder']['embeddings']['word_embeddings']
  np.testing.assert_allclose(  # E_G + delta, the delta having moved in 2 steps.
      tuned['embeddings']['word_embeddings']['embedding'],
      generator_table['embedding'] + discriminator['embeddings']['word_embeddings_delta']['embedding'])
  assert np.abs(discriminator['embeddings']['word_embeddings_delta']['embedding']).max() > 0
  jax.tree.map(np.testing.assert_array_equal, tuned['layers'], discriminator['layers'])
