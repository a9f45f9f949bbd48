"""Each ablation's paper findings judged on its stored runs: reproduced, reversed, unresolved.

  python -m experiments.ablation_verdicts --results docs/ablations_tiny

Reads `<results>/<ablation>/results/*.json` (one file per finished run, as the sweeps write
them) for each sweep in ABLATIONS, judges every finding they declare (`FINDINGS` in each
script) by the one rule of encoders/training/findings.py, and writes verdicts.md (a table per
ablation) and verdicts.png (delta / SE per judged finding) into --results.
"""
import argparse
import os
import textwrap

from etils import epath
import matplotlib

from encoders import paths
from encoders.training import findings
from experiments import (ablate_batch_size, ablate_masking_rate, ablate_masking_strategy,
                         ablate_nsp, electra_vs_mlm, electra_vs_mlm_relative)

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

ABLATIONS = tuple(m.ABLATION for m in (ablate_masking_strategy, ablate_nsp, ablate_masking_rate,
                                       ablate_batch_size, electra_vs_mlm,
                                       electra_vs_mlm_relative))
COLORS = {findings.REPRODUCED: 'tab:green', findings.REVERSED: 'tab:red',
          findings.UNRESOLVED: 'tab:gray'}


def read_records(results_dir: str, name: str) -> list[dict]:
  """The finished runs of ablation `name` under results_dir, in file-name order."""
  folder = epath.Path(results_dir) / name / 'results'
  if not folder.exists():
    return []
  return [paths.read_json(path) for path in sorted(folder.glob('*.json'))]


def plot(judged: list[tuple[str, dict]], path: str) -> int:
  """delta / SE of every finding judged with a spread, coloured by verdict, the +-2 SE bounds
  marked; returns the number of findings drawn."""
  rows = [(textwrap.fill(f'{name}: {r["finding"].claim} [{r["finding"].metric}]', 60), r)
          for name, r in judged if r['se'] > 0]  # False for a NaN SE too.
  figure, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * max(1, len(rows))))
  for y, (label, r) in enumerate(rows):
    ratio = r['delta'] / r['se']
    ax.barh(y, ratio, color=COLORS.get(r['verdict'], 'tab:blue'))
    ax.text(ratio, y, f' {r["verdict"]} ', va='center', ha='left' if ratio >= 0 else 'right',
            fontsize=7)
  ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
  ax.margins(x=0.25)
  for bound in (-findings.Z, findings.Z):
    ax.axvline(bound, color='black', linestyle='--', linewidth=0.8)
  ax.set_xlabel("delta / SE (positive: the paper's direction)")
  ax.set_title('Findings judged' if rows else 'No finding has 2+ seeds per cell yet')
  ax.invert_yaxis()
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=110, bbox_inches='tight')
  plt.close(figure)
  return len(rows)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--results', default='docs/ablations_tiny',
                      help='Folder with one <ablation>/results/ folder per sweep (may be gs://).')
  parser.add_argument('--min_seeds', type=int, default=3, help='Seeds per cell before a verdict.')
  return parser.parse_args(argv)


def main(argv=None) -> str:
  """Writes verdicts.md and verdicts.png into --results; returns the markdown."""
  args = parse_args(argv)
  sections = [f'# Verdicts on the papers\' findings ({args.results})', '',
              findings.rule(args.min_seeds)]
  judged = []
  for ablation in ABLATIONS:
    records = read_records(args.results, ablation.name)
    results = [findings.verdict(f, records, args.min_seeds) for f in ablation.findings]
    judged += [(ablation.name, r) for r in results]
    sections += [f'## {ablation.title} ({ablation.name}: {len(records)} runs)', '',
                 findings.markdown(results)]
  markdown = '\n'.join(sections)
  paths.write_atomic(os.path.join(args.results, 'verdicts.md'), markdown)
  plot(judged, os.path.join(args.results, 'verdicts.png'))
  print(markdown)
  return markdown


if __name__ == '__main__':
  main()
