"""A paper's finding as a comparison of two sweep cells fixed before the runs, and its verdict.

  finding = Finding('dynamic masking beats static', 'RoBERTa Table 1',
                    better=r'dynamic', worse=r'static \\(dupe_factor=10\\)', metric='probe_topic')
  verdict(finding, records)  # records: sweep.collect(...) or the result JSONs of a sweep

The rule, the same for every finding and fixed before the runs: with each cell's runs over
seeds, delta = mean(the cell the paper found better) - mean(the other), signed so that
positive is the paper's direction (lower_is_better flips it), and SE = sqrt(s_b^2 / n_b +
s_w^2 / n_w) with the sample std over seeds. Reproduced: delta > 2 SE; reversed: delta <
-2 SE; unresolved otherwise, and when the seeds show no spread (SE 0); pending while either
cell has fewer than `min_seeds` runs; invalid when a run's value is not finite (it diverged).
A claim of "as good or better" is tested as "better": unresolved agrees with it, reversed
contradicts it.
"""
import dataclasses
import math
import re
import string

import numpy as np

REPRODUCED, REVERSED, UNRESOLVED, PENDING, INVALID = (
    'reproduced', 'reversed', 'unresolved', 'pending', 'invalid')
Z = 2.0  # |delta| / SE beyond which a direction is read.


@dataclasses.dataclass(frozen=True)
class Finding:
  claim: str  # What the paper found, in words.
  source: str  # Paper and table.
  # Cell names as regular expressions (re.fullmatch). In `worse`, `$name` stands for the text
  # of `better`'s group `(?P<name>...)`: cells that share part of their name.
  better: str
  worse: str
  metric: str  # Key of a run's metrics.
  lower_is_better: bool = False


def _cell(pattern: str, names: list[str], finding: Finding) -> tuple[str | None, dict]:
  """(the one cell name matching `pattern`, its named groups); (None, {}) when no run has it."""
  matches = [(name, m) for name in names if (m := re.fullmatch(pattern, name))]
  if len(matches) > 1:
    raise ValueError(f'Finding {finding.claim!r}: {pattern!r} matches several cells: '
                     f'{[name for name, _ in matches]}.')
  return (matches[0][0], matches[0][1].groupdict()) if matches else (None, {})


def values_by_cell(records: list[dict], metric: str) -> dict[str, list[float]]:
  """{cell: [the metric of each seed's run]} over the records that have the metric."""
  values, seen = {}, set()
  for record in records:
    if (record['cell'], record['seed']) in seen:
      raise ValueError(f'Two runs of cell {record["cell"]!r}, seed {record["seed"]}.')
    seen.add((record['cell'], record['seed']))
    if metric in record['metrics']:
      values.setdefault(record['cell'], []).append(float(record['metrics'][metric]))
  return values


def _variance(values: list[float]) -> float:
  """The sample variance; exactly 0 for equal values (np.var leaves rounding residue)."""
  return float(np.var(values, ddof=1)) if len(set(values)) > 1 else 0.0


def verdict(finding: Finding, records: list[dict], min_seeds: int = 3) -> dict:
  """The finding's cells, their values over seeds, delta, SE and the verdict (module doc)."""
  if min_seeds < 2:
    raise ValueError(f'min_seeds={min_seeds}: a spread over seeds needs at least 2.')
  values = values_by_cell(records, finding.metric)
  better, groups = _cell(finding.better, list(values), finding)
  worse = string.Template(finding.worse)
  worse_cell = None  # A `worse` that names groups of `better` waits for `better`'s runs.
  if better is not None or not worse.get_identifiers():
    escaped = {k: re.escape(v) for k, v in groups.items() if v is not None}
    worse_cell, _ = _cell(worse.safe_substitute(escaped), list(values), finding)
  a, b = values.get(better, []), values.get(worse_cell, [])
  result = dict(finding=finding, better_cell=better, worse_cell=worse_cell, better_values=a,
                worse_values=b, delta=math.nan, se=math.nan)
  if not all(math.isfinite(v) for v in a + b):
    result['verdict'] = INVALID
    return result
  if a and b:
    result['delta'] = (-1.0 if finding.lower_is_better else 1.0) * float(np.mean(a) - np.mean(b))
  if min(len(a), len(b)) < min_seeds:
    result['verdict'] = PENDING
    return result
  result['se'] = math.sqrt(_variance(a) / len(a) + _variance(b) / len(b))
  if result['se'] > 0 and result['delta'] > Z * result['se']:
    result['verdict'] = REPRODUCED
  elif result['se'] > 0 and result['delta'] < -Z * result['se']:
    result['verdict'] = REVERSED
  else:
    result['verdict'] = UNRESOLVED
  return result


def _stats(values: list[float]) -> str:
  if not values:
    return 'no run'
  spread = f' ± {np.std(values, ddof=1):.3g}' if len(values) > 1 else ''
  return f'{np.mean(values):.4g}{spread} ({len(values)})'


def rule(min_seeds: int = 3) -> str:
  """The verdict rule in words, for a report."""
  return (f'Verdict rule (fixed before the runs): delta = the cell the paper found better minus '
          f'the other, signed so that positive is the paper\'s direction; reproduced if delta > '
          f'{Z:g} SE, reversed if delta < -{Z:g} SE, else unresolved (also when the seeds show no '
          f'spread); pending below {min_seeds} seeds per cell; invalid if a run diverged. A claim '
          f'of "as good or better" is tested as "better": unresolved agrees with it, reversed '
          f'contradicts it. Cells: mean ± sample std (seeds).\n')


def _shown(pattern: str) -> str:
  """A cell pattern as text: 'bsz=2K .*' -> 'bsz=2K …', 'static \\(x\\)' -> 'static (x)'."""
  for wildcard, shown in ((r'\(\?P<\w+>[^)]*\)', '…'), (r'\$\w+', '…'), (r'\.\*', '…'),
                         (r'\\d\+', 'N')):
    pattern = re.sub(wildcard, shown, pattern)
  return re.sub(r'\\(.)', r'\1', pattern)


def markdown(results: list[dict]) -> str:
  """A table of `verdict` results: one row per finding."""
  lines = ['| finding | source | metric | paper\'s better cell | other cell | delta ± SE | '
           'verdict |', '|---|---|---|---|---|---|---|']
  for r in results:
    f = r['finding']
    metric = f.metric + (' (lower is better)' if f.lower_is_better else '')
    delta = ('—' if math.isnan(r['delta']) else f'{r["delta"]:+.3g}'
             + ('' if math.isnan(r['se']) else f' ± {r["se"]:.2g}'))
    lines.append(f'| {f.claim} | {f.source} | {metric} | {r["better_cell"] or _shown(f.better)}: '
                 f'{_stats(r["better_values"])} | {r["worse_cell"] or _shown(f.worse)}: '
                 f'{_stats(r["worse_values"])} | {delta} | **{r["verdict"]}** |')
  return '\n'.join(lines) + '\n'
