#!/bin/bash
# Multi-task vs. single-task fine-tuning (issue 19, item 4) from the main command's 4,000-step
# BERT-tiny (workdirs/bert_tiny): topic + mention + pair in one run (temperature sampling, T=2),
# then each task alone with the same recipe (configs/multitask.py:suite_tiny: lr 1e-3, batch 32,
# L=128, mean pooling, 2,000 training articles, all dev / test articles, 2.5 epochs of the run's
# rows). The multi-task run takes as many steps as the three single-task runs together.
# Seeds 0 and 1 (SEEDS), one run at a time on the 2-core VM (a run whose results.json exists is
# skipped); then results.json / results.md here from the runs that finished.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
OUT=docs/multitask
INIT=workdirs/bert_tiny
run() {  # name, seed, tasks
  local workdir=workdirs/multitask_$1_seed$2
  [ -f $workdir/results.json ] && return
  /usr/bin/time -f "$1 seed $2: %e s wall" nice python -m experiments.finetune_multitask \
      --config configs/multitask.py:suite_tiny --workdir $workdir --config.seed=$2 \
      --config.init_from=$INIT --config.multitask.tasks=$3 --config.train.progress_bar=False \
      2>&1 | tee $OUT/$1_seed$2.log
}
for seed in ${SEEDS:-0 1}; do
  run multi $seed topic,mention,pair
  for task in topic mention pair; do run single_$task $seed $task; done
done
python - <<'PY'
import glob, json
import numpy as np
from encoders.adaptation import suite
from encoders.data import suite as suite_data
TASKS = ['topic', 'mention', 'pair']
runs = {}  # seed -> {'multi': results, 'topic': results, ...}
for path in sorted(glob.glob('workdirs/multitask_*_seed*/results.json')):
  name, seed = path.split('/')[1].removeprefix('multitask_').rsplit('_seed', 1)
  runs.setdefault(int(seed), {})[name.removeprefix('single_')] = json.load(open(path))
complete = {s: r for s, r in runs.items() if set(r) == {'multi', *TASKS}}
json.dump({str(s): r for s, r in runs.items()}, open('docs/multitask/results.json', 'w'), indent=2)
scores = {s: {t: (suite.score(t, r[t]['test'][t]), suite.score(t, r['multi']['test'][t]))
              for t in TASKS} for s, r in complete.items()}
fmt = lambda v, sign='': (f'{np.mean(v):{sign}.1f}'
                         + (f' ± {np.std(v, ddof=1):.1f}' if len(v) > 1 else ''))
lines = [f'Test scores in percent (encoders/data/suite.py test split), BERT-tiny@4000, seeds '
         f'{sorted(complete)} (mean ± sample std).', '',
         '| task (metric) | single-task | multi-task | multi - single | steps single / multi (seed 0) |',
         '| --- | --- | --- | --- | --- |']
first = complete[min(complete)]
for t in TASKS + ['mean']:
  pick = (lambda s, i: np.mean([scores[s][u][i] for u in TASKS])) if t == 'mean' else (
      lambda s, i: scores[s][t][i])
  single, multi = ([pick(s, i) for s in complete] for i in (0, 1))
  steps = (f'{sum(first[u]["steps_run"] for u in TASKS)} / {first["multi"]["steps_run"]}'
           if t == 'mean' else f'{first[t]["steps_run"]} / {first["multi"]["steps_per_task"][t]}')
  metric = '' if t == 'mean' else f' ({suite_data.TASKS[t][1]})'
  lines.append(f'| {t}{metric} | {fmt(single)} | {fmt(multi)} | '
               f'{fmt(np.subtract(multi, single), "+")} | {steps} |')
m = first['multi']
lines += ['', f'Sampler: {m["sampler"]} (T={m["temperature"]}), p = ' + ', '.join(
    f'{t} {p:.3f}' for t, p in m['probabilities'].items()) + '; training rows ' + ', '.join(
    f'{t} {n}' for t, n in m['train_rows'].items()) + '.',
          'Wall time per run (s): ' + '; '.join(f'seed {s}: ' + ', '.join(
    f'{n} {r["wall_seconds"]:.0f}' for n, r in runs[s].items()) for s in sorted(runs)) + '.']
open('docs/multitask/results.md', 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines))
PY
