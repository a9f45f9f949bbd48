"""One markdown row per folder of docs/electra_lr/attention/ (each written by
`experiments.analyze attention` or generator_attention.py): the heads' attention entropy and
their weight on the previous and next token, mean over heads (and the most extreme head),
beside the same statistics for uniform attention over the same texts (in that model's tokens).

  PYTHONPATH=. python docs/electra_lr/attention_summary.py > docs/electra_lr/attention/summary.md
"""
import json
import pathlib

import numpy as np

FOLDER = pathlib.Path(__file__).parent / 'attention'

print('| model | entropy: mean (lowest head) | previous: mean (highest head) | next: mean (highest head) '
      '| uniform: entropy / previous |')
print('|---|---|---|---|---|')
for path in sorted(FOLDER.glob('*/head_statistics.json')):
  statistics = json.loads(path.read_text())
  entropy, previous, following = (np.asarray(statistics[k]) for k in ('entropy', 'previous', 'next'))
  print(f'| {path.parent.name} | {entropy.mean():.2f} ({entropy.min():.2f}) | {previous.mean():.3f} '
        f'({previous.max():.3f}) | {following.mean():.3f} ({following.max():.3f}) | '
        f'{statistics["uniform"]["entropy"]:.2f} / {statistics["uniform"]["previous"]:.3f} |')
