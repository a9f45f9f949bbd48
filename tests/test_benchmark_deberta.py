"""The DeBERTa benchmark builds one architecture in every system (experiments/benchmark.py --family deberta).

Ours (configs/deberta.py through the trainer) and transformers' DebertaV2ForMaskedLM must hold
the same parameter tensors (by size: ours keeps [hidden, heads, head_dim] where torch keeps
[hidden, hidden]), EMD adds only the absolute position table, and one step of each system
gives the loss of an untrained MLM head: ln(vocab) within a few percent.
"""
import math

import numpy as np
import pytest

from benchmarks import measure, ours_step, torch_step
from experiments import benchmark


def spec(system: str) -> measure.Spec:
  return measure.Spec(system=system, family='deberta', shape='tiny', seq=32, batch=2)


@pytest.fixture(scope='module')
def built():
  """system -> (losses of two steps, info) at the tiny shape (2 layers, hidden 128)."""
  batch = measure.synthetic_batch(spec('ours'))
  systems = {}
  for system, builder in (('ours', ours_step), ('ours_emd', ours_step), ('torch', torch_step)):
    step, _, info = builder.build(spec(system), batch)
    systems[system] = ([float(step()) for _ in range(2)], info)
  return systems


def test_ours_and_transformers_hold_the_same_parameters(built):
  ours, torch_info = built['ours'][1], built['torch'][1]
  assert ours['parameter_sizes'] == torch_info['parameter_sizes']
  assert ours['num_params'] == torch_info['num_params']
  # Reference count from the architecture (v3: no token types, no absolute positions, 512
  # relative rows, tied decoder): embeddings + LN, relative table + LN, layers, MLM head.
  fields = measure.model_fields(spec('ours'))
  h, m, v, layers = (fields[k] for k in ('hidden_size', 'intermediate_size', 'vocab_size',
                                         'num_layers'))
  per_layer = 4 * (h * h + h) + (h * m + m) + (m * h + h) + 2 * 2 * h
  expected = v * h + 2 * h + 2 * 256 * h + 2 * h + layers * per_layer + (h * h + h) + 2 * h + v
  assert ours['num_params'] == expected


def test_emd_adds_only_the_absolute_position_table(built):
  extra = built['ours_emd'][1]['num_params'] - built['ours'][1]['num_params']
  assert extra == 512 * measure.model_fields(spec('ours'))['hidden_size']


def test_every_system_steps_to_a_finite_untrained_loss(built):
  chance = math.log(measure.VOCAB_SIZE)
  for system, (losses, _) in built.items():
    assert all(np.isfinite(losses)), system
    assert abs(losses[0] - chance) < 0.05 * chance, (system, losses)


def test_deberta_family_has_no_hf_flax_and_bert_no_emd():
  args = lambda *a: benchmark.parse_args(['--shapes', 'mini,base', *a])
  names = {(s.system, s.precision, s.batch, s.family) for s in benchmark.specs_from_args(
      args('--family', 'deberta', '--systems', 'ours,ours_emd:f32,torch', '--batch', 'mini=16,base=8'))}
  assert ('ours_emd', 'f32', 8, 'deberta') in names and ('ours_emd', 'bf16', 8, 'deberta') not in names
  assert len(names) == 2 * (2 + 1 + 4)
  with pytest.raises(ValueError, match='hf_flax'):
    benchmark.specs_from_args(args('--family', 'deberta', '--systems', 'hf_flax'))
  with pytest.raises(ValueError, match='ours_emd'):
    benchmark.specs_from_args(args('--systems', 'ours_emd'))
  with pytest.raises(ValueError, match='base'):
    benchmark.specs_from_args(args('--family', 'deberta', '--systems', 'ours',
                                   '--batch', 'mini=16'))


def test_table_compares_with_the_fastest_torch_run_of_each_shape_in_its_best_round():
  def result(system, precision, rate, round_index=0):
    return dict(status='ok', name=f'{system}/{precision}', round=round_index,
                spec=dict(system=system, precision=precision, family='deberta', shape='mini',
                          seq=128, batch=16),
                tokens_per_s=dict(median=rate, p10=rate, p90=rate), step_s=dict(median=1.0),
                cpu_s_per_step=dict(median=1.0), compile_s=1.0, peak_rss_mb=1.0)
  results = [result('ours', 'f32', 300.0), result('ours', 'f32', 600.0, 1),
             result('torch', 'f32', 100.0), result('torch_compile', 'bf16', 400.0),
             result('torch_compile', 'bf16', 200.0, 1)]
  best = benchmark.best_rounds(results)
  assert sorted(r['tokens_per_s']['median'] for r in best) == [100.0, 400.0, 600.0]
  table = benchmark.markdown_table(best)
  assert 'vs fastest PyTorch' in table.splitlines()[0]
  row = next(line for line in table.splitlines() if 'ours/f32' in line)
  assert row.startswith('| deberta mini |') and row.endswith('| 1.50x |')
