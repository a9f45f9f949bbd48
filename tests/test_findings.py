"""Findings' verdicts: the rule's arithmetic, the cells each ablation's findings name, the report."""
import json
import math
import os
import statistics

import pytest

from encoders.adaptation import finetune_ablation
from encoders.training import findings, sweep
from experiments import (ablate_batch_size, ablate_masking_rate, ablate_masking_strategy,
                         ablate_nsp, ablation_verdicts, electra_vs_mlm, electra_vs_mlm_relative)
from tests import training_util

HIGHER = findings.Finding('a beats b', 'test', better='a', worse='b', metric='score')


def _records(values: dict[str, list[float]], metric: str = 'score') -> list[dict]:
  return [dict(cell=cell, seed=seed, metrics={metric: v})
          for cell, seeds in values.items() for seed, v in enumerate(seeds)]


def test_delta_and_se_are_welch_s():
  a, b = [10.0, 11.0, 12.5], [9.0, 9.5, 8.0, 10.5]
  result = findings.verdict(HIGHER, _records({'a': a, 'b': b}))
  se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 4)
  assert result['delta'] == pytest.approx(statistics.mean(a) - statistics.mean(b))
  assert result['se'] == pytest.approx(se)
  assert result['delta'] > 2 * se and result['verdict'] == findings.REPRODUCED


@pytest.mark.parametrize('a,b,expected', [
    ([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], findings.REVERSED),
    ([1.0, 2.0, 3.0], [1.5, 2.5, 1.0], findings.UNRESOLVED),  # delta 0.33, SE 0.73.
    ([5.0, 5.1], [1.0, 1.1], findings.PENDING),  # 2 seeds.
    ([5.0, 5.1, 5.2], [], findings.PENDING),  # No run of b.
])
def test_verdicts(a, b, expected):
  assert findings.verdict(HIGHER, _records({'a': a, 'b': b}))['verdict'] == expected


@pytest.mark.parametrize('a,b,expected', [
    ([6.0, 6.1, 6.2], [7.0, 7.1, 7.2], findings.REPRODUCED),
    ([7.0, 7.1, 7.2], [6.0, 6.1, 6.2], findings.REVERSED),
])
def test_lower_is_better_flips_the_sign(a, b, expected):
  loss = findings.Finding('a has the lower loss', 'test', better='a', worse='b', metric='loss',
                          lower_is_better=True)
  result = findings.verdict(loss, _records({'a': a, 'b': b}, 'loss'))
  assert result['delta'] == pytest.approx(statistics.mean(b) - statistics.mean(a))
  assert result['verdict'] == expected


def test_no_spread_over_seeds_is_unresolved_and_a_diverged_run_invalid():
  """Identical seeds give SE 0: any gap would pass '> 2 SE', so it reads nothing."""
  flat = findings.verdict(HIGHER, _records({'a': [0.5] * 3, 'b': [0.4] * 3}))
  assert flat['se'] == 0.0 and flat['verdict'] == findings.UNRESOLVED
  diverged = findings.verdict(HIGHER, _records({'a': [0.5, math.nan, 0.6], 'b': [0.1, 0.2, 0.3]}))
  assert diverged['verdict'] == findings.INVALID


def test_malformed_inputs_are_errors():
  with pytest.raises(ValueError, match='Two runs'):
    findings.verdict(HIGHER, _records({'a': [1.0], 'b': [2.0]}) * 2)
  with pytest.raises(ValueError, match='min_seeds'):
    findings.verdict(HIGHER, _records({'a': [1.0], 'b': [2.0]}), min_seeds=1)


def test_worse_cell_shares_a_group_of_the_better_one():
  """ELECTRA's cell and BERT's at its FLOPs: the '+' of '2.6e+15' is matched literally."""
  finding = electra_vs_mlm.FINDINGS[-1]
  steps = finetune_ablation.TINY_STEPS
  values = {f'ELECTRA, {steps} steps, 2.6e+15 FLOPs': [0.5, 0.6, 0.7],
            'BERT (MLM), 5200 steps, 2.6e+15 FLOPs': [0.1, 0.2, 0.1],
            'BERT (MLM), 2600 steps, 1.3e+15 FLOPs': [0.9, 0.9, 0.9],
            'BERT (MLM), 5200 steps, 2.6e+155 FLOPs': [0.9, 0.9, 0.9]}
  result = findings.verdict(finding, _records(values, 'probe_topic'))
  assert result['worse_cell'] == 'BERT (MLM), 5200 steps, 2.6e+15 FLOPs'
  assert result['verdict'] == findings.REPRODUCED
  del values[f'ELECTRA, {steps} steps, 2.6e+15 FLOPs']  # BERT's cell is unknown until then.
  waiting = findings.verdict(finding, _records(values, 'probe_topic'))
  assert (waiting['worse_cell'], waiting['verdict']) == (None, findings.PENDING)
  # A regex's own '$' and braces are not placeholders.
  quantified = findings.Finding('x', 'test', better='a(?P<n>\\d)', worse='b\\d{2}$', metric='score')
  assert findings.verdict(quantified, _records({'a1': [1.0], 'b12': [0.0]}))['worse_cell'] == 'b12'


def test_a_pattern_matching_two_cells_is_an_error():
  ambiguous = findings.Finding('x', 'test', better='a.*', worse='b', metric='score')
  with pytest.raises(ValueError, match='several cells'):
    findings.verdict(ambiguous, _records({'a1': [1.0], 'a2': [2.0], 'b': [0.0]}))


def _tiny_cell_names(monkeypatch) -> dict[str, list[str]]:
  """Each ablation's tiny cells, as its sweep names them (nsp's token count stubbed)."""
  monkeypatch.setattr(finetune_ablation, 'mean_tokens_per_row', lambda config: 100.0)
  base = finetune_ablation.pretrain_config('tiny')
  modules = (ablate_masking_strategy, ablate_nsp, ablate_masking_rate, ablate_batch_size)
  names = {m.ABLATION.name: [c.name for c in m.cells('tiny', base)] for m in modules}
  for module in (electra_vs_mlm, electra_vs_mlm_relative):
    names[module.ABLATION.name] = [c.name for c in module.ABLATION.cells(
        'tiny', module.ABLATION.base_config('tiny'))]
  return names


def test_every_finding_names_two_cells_of_its_tiny_sweep_and_a_reported_metric(monkeypatch):
  names = _tiny_cell_names(monkeypatch)
  # Every sweep's run records pretrain_and_finetune's metrics; this stored run is one of them.
  stored = json.loads(open(os.path.join(
      training_util.ROOT, 'docs/ablations_tiny/masking_strategy/results/dynamic__seed0.json')).read())
  for ablation in ablation_verdicts.ABLATIONS:
    assert ablation.findings, ablation.name
    for finding in ablation.findings:
      assert finding.metric in stored['metrics'], (ablation.name, finding.metric)
      records = _records({name: [1.0, 2.0, 3.0] for name in names[ablation.name]}, finding.metric)
      result = findings.verdict(finding, records)
      assert result['better_cell'] and result['worse_cell'], (ablation.name, finding.claim)
      assert result['better_cell'] != result['worse_cell']


def test_command_writes_a_table_and_plot_per_ablation(tmp_path):
  strategy = ablate_masking_strategy.cells('tiny', finetune_ablation.pretrain_config('tiny'))
  losses = {'dynamic': [6.30, 6.32, 6.31], 'static (dupe_factor=10)': [6.31, 6.30, 6.33],
            'static (dupe_factor=1)': [6.60, 6.70, 6.65]}
  for cell in strategy:
    for seed, loss in enumerate(losses[cell.name]):
      sweep.write_result(str(tmp_path / 'masking_strategy'), cell, seed,
                         {'mlm_loss': loss, 'probe_topic': 40.0 + seed}, 1.0)
  markdown = ablation_verdicts.main(['--results', str(tmp_path)])
  [ten_masks] = [line for line in markdown.splitlines() if line.startswith('| Hypothesis: ten')]
  assert ten_masks.endswith('**reproduced** |')
  assert markdown.count('**unresolved**') == 2  # Dynamic = static x10 on both metrics.
  judged = len(ablate_masking_strategy.FINDINGS)
  total = sum(len(a.findings) for a in ablation_verdicts.ABLATIONS)
  assert markdown.count('**pending**') == total - judged  # The other sweeps have no run.
  assert (tmp_path / 'verdicts.md').read_text() == markdown
  assert (tmp_path / 'verdicts.png').stat().st_size > 1000
  judged_results = [findings.verdict(f, sweep.collect(strategy, [0, 1, 2], str(tmp_path / 'masking_strategy')))
                    for f in ablate_masking_strategy.FINDINGS]
  assert ablation_verdicts.plot([('masking_strategy', r) for r in judged_results],
                                str(tmp_path / 'again.png')) == judged
