"""Sharded training equals single-device training; parameters get the expected partition specs.

The checks run in a subprocess with 8 CPU devices (XLA_FLAGS must be set before JAX
starts, and other test modules import JAX first in the same pytest process).
"""
import re

import pytest

from tests import training_util

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2))
STEPS = 3
# f32. Sharded reductions reorder sums (~1e-7 relative). Adam's first updates are
# lr * g / (|g| + eps): with the default eps=1e-6 every element whose gradient is near zero
# moves by +-lr with a sign set by rounding, so parameters would differ by ~2 lr in a few
# elements whatever the sharding's correctness. The comparison therefore uses eps=1e-2,
# which keeps updates linear in such gradients (parameters then agree to ~1e-7).
LOSS_RTOL = 1e-4
PARAM_ATOL = 1e-5
COMPARABLE = dict(optimizer__eps=1e-2)

# Expected mesh axes per parameter on any mesh, from the rules in configs/training.py
# (embed->fsdp, vocab/heads/mlp/embed_out->tensor, kv->None) applied by hand to the
# logical axes of encoders/layers.py and heads.py. Trailing Nones dropped.
EXPECTED_SPECS = (
    (r'word_embeddings/embedding$', ('tensor', 'fsdp')),
    (r'(position|token_type)_embeddings/embedding$', (None, 'fsdp')),
    (r'layer_norm/(scale|bias)$', ('fsdp',)),
    (r'attention/(query|key|value)/kernel$', ('fsdp', 'tensor')),
    (r'attention/(query|key|value)/bias$', ('tensor',)),
    (r'attention/output/kernel$', ('tensor', None, 'fsdp')),
    (r'attention/output/bias$', ('fsdp',)),
    (r'mlp/intermediate/kernel$', ('fsdp', 'tensor')),
    (r'mlp/intermediate/bias$', ('tensor',)),
    (r'mlp/output/kernel$', ('tensor', 'fsdp')),
    (r'mlp/output/bias$', ('fsdp',)),
    (r'mlm_head/transform/kernel$', ('fsdp', 'tensor')),
    (r'mlm_head/transform/bias$', ('tensor',)),
    (r'mlm_head/bias$', ('tensor',)),
    (r'pooler/dense/kernel$', ('fsdp', 'tensor')),
    (r'pooler/dense/bias$', ('tensor',)),
    (r'sentence_order_head/dense/kernel$', ('fsdp',)),
    (r'sentence_order_head/dense/bias$', ()),
    (r'attention/distance_embedding/embedding$', ()),  # (None, 'kv'): replicated.
)


def expected_spec(name: str) -> tuple:
  matches = [spec for pattern, spec in EXPECTED_SPECS if re.search(pattern, name)]
  assert len(matches) == 1, f'{name}: {len(matches)} entries of the expected table match.'
  return matches[0]


def _child():
  """Runs in the subprocess: trains on each mesh, prints a JSON report."""
  import tempfile  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  # pylint: disable-next=g-import-not-at-top
  from encoders.training import checkpointing, sharding, trainer
  jax.config.update('jax_threefry_partitionable', True)
  assert jax.device_count() == 8

  def train(mesh_shape, devices, **overrides):
    config = training_util.tiny_config(**COMPARABLE, **overrides)
    config.mesh.shape = mesh_shape
    step_sums, state, run = training_util.train_on_mesh(config, devices, STEPS)
    return [float(sums['loss'][0]) for sums in step_sums], state, run

  def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))

  def spec_of(array):
    spec = tuple(array.sharding.spec)
    while spec and spec[-1] is None:
      spec = spec[:-1]
    return spec

  report = {}
  ref_losses, ref_state, _ = train((1, 1, 1), jax.devices()[:1])
  ref_params = jax.device_get(ref_state.params)
  report['reference'] = ref_losses
  for shape in MESHES:
    losses, state, run = train(shape, None)
    named = {'/'.join(k.key for k in path): x for path, x in
             jax.tree_util.tree_flatten_with_path(state.params)[0]}
    report[str(shape)] = dict(
        losses=losses, param_diff=max_diff(jax.device_get(state.params), ref_params),
        specs={name: spec_of(x) for name, x in named.items()},
        mu_matches_params=all(
            spec_of(m) == spec_of(p) for m, p in
            zip(jax.tree.leaves(state.opt_state[1][0].mu), jax.tree.leaves(state.params))))
    if shape == (2, 2, 2):
      params_222 = jax.device_get(state.params)
      with tempfile.TemporaryDirectory() as workdir:  # Save on 8 devices, restore on 1.
        config = training_util.tiny_config()
        manager = checkpointing.make_manager(workdir, config.checkpoint)
        checkpointing.save(manager, STEPS, state, {'step': STEPS}, config)
        manager.wait_until_finished()
        config.mesh.shape = (1, 1, 1)
        one = trainer.setup(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
        restored, data_state = checkpointing.restore(manager, STEPS, one.abstract_state)
        manager.close()
      report['restore_8_to_1'] = dict(
          param_diff=max_diff(jax.device_get(restored.params), params_222),
          devices=sorted({len(x.sharding.device_set) for x in jax.tree.leaves(restored)}),
          step=int(restored.step), data_state=data_state)
  # Gradient accumulation on the mesh against one batch on one device, both without dropout
  # (dropout masks are drawn per micro-batch, so with it the runs would differ by design).
  no_dropout = dict(model__hidden_dropout_rate=0.0, model__attention_dropout_rate=0.0)
  plain_losses, plain_state, _ = train((1, 1, 1), jax.devices()[:1], **no_dropout)
  accum_losses, accum_state, _ = train((2, 2, 2), None, train__grad_accum_steps=2, **no_dropout)
  report['accum_2'] = dict(losses=accum_losses, reference=plain_losses, param_diff=max_diff(
      jax.device_get(accum_state.params), jax.device_get(plain_state.params)))
  # Relative positions (a distance table per layer, read through a gather) on the full mesh.
  relative = dict(model__position_embedding_type='relative_key_query')
  relative_losses, relative_state, _ = train((1, 1, 1), jax.devices()[:1], **relative)
  sharded_losses, sharded_state, _ = train((2, 2, 2), None, **relative)
  report['relative_222'] = dict(
      losses=sharded_losses, reference=relative_losses,
      param_diff=max_diff(jax.device_get(sharded_state.params), jax.device_get(relative_state.params)),
      distance_specs={'/'.join(k.key for k in path): spec_of(x) for path, x in
                      jax.tree_util.tree_flatten_with_path(sharded_state.params)[0]
                      if 'distance_embedding' in jax.tree_util.keystr(path)})
  training_util.print_report(report)


@pytest.fixture(scope='module')
def report():
  return training_util.child_report('test_sharding', '_child')


@pytest.mark.slow
@pytest.mark.parametrize('shape', MESHES)
def test_sharded_training_matches_one_device(report, shape):
  result = report[str(shape)]
  assert result['losses'] == pytest.approx(report['reference'], rel=LOSS_RTOL)
  assert result['param_diff'] < PARAM_ATOL, result['param_diff']
  assert report['reference'][-1] != report['reference'][0]  # The steps did change the model.


@pytest.mark.slow
def test_relative_positions_train_alike_on_a_mesh(report):
  result = report['relative_222']
  assert result['losses'] == pytest.approx(result['reference'], rel=LOSS_RTOL)
  assert result['param_diff'] < PARAM_ATOL, result['param_diff']
  assert result['reference'] != report['reference']  # Not the absolute model's run.
  assert result['distance_specs']  # One table per layer.
  for name, spec in result['distance_specs'].items():
    assert tuple(spec) == expected_spec(name), name


@pytest.mark.slow
@pytest.mark.parametrize('shape', MESHES)
def test_partition_specs(report, shape):
  active = {'data': shape[0], 'fsdp': shape[1], 'tensor': shape[2]}
  specs = report[str(shape)]['specs']
  assert len(specs) >= 20
  for name, spec in specs.items():
    # Axes of size 1 may be dropped by JAX; compare the axes that really split.
    expected = tuple(a if a is None or active[a] > 1 else None for a in expected_spec(name))
    got = tuple(a if a is None or active[a] > 1 else None for a in spec)
    strip = lambda s: s[:max([i + 1 for i, a in enumerate(s) if a is not None], default=0)]
    assert strip(got) == strip(expected), name
  assert report[str(shape)]['mu_matches_params']


@pytest.mark.slow
def test_checkpoint_restores_onto_another_mesh(report):
  result = report['restore_8_to_1']
  assert result['param_diff'] == 0.0
  assert result['devices'] == [1]
  assert result['step'] == STEPS and result['data_state'] == {'step': STEPS}


@pytest.mark.slow
def test_gradient_accumulation_on_a_mesh_matches_one_batch_on_one_device(report):
  # Parameters after several updates, so a wrong accumulated gradient cannot hide.
  result = report['accum_2']
  assert len(result['losses']) == STEPS
  assert result['losses'] == pytest.approx(result['reference'], rel=LOSS_RTOL)
  assert result['param_diff'] < PARAM_ATOL, result['param_diff']
  assert result['reference'][-1] != result['reference'][0]


def _xla_reproduction_child():
  """The XLA defect behind encoders.layers.Dense's layout of 'embed_out' outputs, in plain JAX.

  logits = (h @ W) @ T.T with W's output features and T's vocabulary both split over
  'tensor', then a log-sum-exp over the vocabulary (the softmax's): the gradients of W and
  h differ from one device's unless h @ W is laid out without the 'tensor' split.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  h = rng.normal(size=(8, 5, 32)).astype(np.float32)
  w = rng.normal(size=(32, 32)).astype(np.float32) * 0.2
  table = rng.normal(size=(128, 32)).astype(np.float32)
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)

  def loss(w, table, h, pin):
    x = jnp.einsum('bli,io->blo', h, w)
    if pin:  # What Dense does for ('embed', 'embed_out') kernels.
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(('data', 'fsdp'))))
    return jnp.sum(jax.nn.logsumexp(jnp.einsum('bld,vd->blv', x, table), axis=-1))

  reference = jax.grad(loss, argnums=(0, 2))(w, table, h, False)
  report = {}
  for pin in (False, True):
    with jax.set_mesh(mesh):
      args = (jax.device_put(w, NamedSharding(mesh, P('fsdp', 'tensor'))),
              jax.device_put(table, NamedSharding(mesh, P('tensor', 'fsdp'))),
              jax.device_put(h, NamedSharding(mesh, P(('data', 'fsdp')))))
      grads = jax.jit(jax.grad(loss, argnums=(0, 2)), static_argnums=3)(*args, pin)
    report[str(pin)] = max(float(np.max(np.abs(np.asarray(g) - r)) / np.max(np.abs(r)))
                           for g, r in zip(grads, reference))
  training_util.print_report(report)


@pytest.mark.slow
def test_embed_out_outputs_are_pinned_around_an_xla_gradient_defect():
  report = training_util.child_report('test_sharding', '_xla_reproduction_child')
  assert report['True'] < 1e-5, report
  # If a JAX upgrade fixes XLA, the unpinned gradients agree too and this documents nothing
  # more: the pin in Dense can then go.
  print(f'unpinned relative gradient error: {report["False"]:.3g}')


def test_mesh_shape_errors_name_the_field():
  from encoders.config import ConfigError  # pylint: disable=g-import-not-at-top
  from encoders.training import sharding  # pylint: disable=g-import-not-at-top
  assert sharding.mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  for bad in ((3, 1, 1), (-1, 3, 1), (-1, -1, 1), (8, 1)):
    with pytest.raises(ConfigError, match='config.mesh.shape'):
      sharding.mesh_shape(bad, 8)
