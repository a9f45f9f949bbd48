"""The training sections of a config: `train`, `optimizer`, `mesh`, `checkpoint`.

Defaults follow BERT's recipe (Devlin et al. 2019, appendix A.2): batch 256, 1M steps,
AdamW lr 1e-4 with 10k warm-up steps and linear decay, weight decay 0.01, clipping at 1.0.
The `tiny` size instead gets a schedule for the embedded corpus on a laptop CPU (the README's
main command, ~27 minutes on 2 cores): 4000 steps of 32 x 128 tokens, ~13 epochs of the corpus.
(`runlocal=True` gets the same.) The earlier 800-step schedule left a model that fine-tuned
worse than random initialisation on the topic task (0.40 test accuracy against 0.53, 500
records); at 4000 steps it fine-tunes better (experiments/compare_inits.py, README).
"""
import ml_collections

# Logical axis (encoders/layers.py) -> mesh axes. The first rule that names a free mesh
# axis wins, so activations ('batch', 'length', 'embed') shard batch over data and fsdp,
# and parameters ('embed', 'mlp') shard embed over fsdp (ZeRO-3) and mlp over tensor.
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('embed_out', 'tensor'),  # Output side of hidden-state kernels (pooler, MLM transform, projections).
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('length', None),
)


def get_training_config(size: str, runlocal: bool = False) -> ml_collections.ConfigDict:
  """The train/optimizer/mesh/checkpoint sections for a model `size` (configs/common.py)."""
  tiny = size == 'tiny' or runlocal
  config = ml_collections.ConfigDict()

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32 if tiny else 256  # Global batch: sequences per optimizer step, all hosts.
  train.num_steps = 4000 if tiny else 1_000_000  # Optimizer steps.
  train.grad_accum_steps = 1  # Micro-batches per step (scanned inside the step); divides batch_size.
  train.sentence_loss_weight = 1.0  # Weight of the NSP/SOP loss when the input format has pairs.
  train.log_every = 20 if tiny else 100  # Steps between train-metric writes.
  train.eval_every = 400 if tiny else 10_000  # Steps between validations (also at step 0 and the end).
  train.eval_steps = 8 if tiny else 100  # Batches of the held-out split per validation.
  train.skip_nonfinite_updates = False  # True: skip a step whose loss/grads are not finite; else stop.
  # True: random batches (encoders/training/synthetic.py) instead of config.data.
  train.synthetic_data = False
  train.progress_bar = True  # A tqdm progress bar on process 0.

  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adamw'  # 'adamw' (BERT, RoBERTa) or 'lamb' (You et al. 2020, large batches).
  opt.learning_rate = 1e-3 if tiny else 1e-4  # Peak learning rate, reached after warm-up.
  opt.warmup_steps = 80 if tiny else 10_000  # Linear warm-up from 0.
  opt.decay = 'linear'  # After warm-up: 'linear' (BERT) or 'cosine' decay, or 'constant'.
  opt.end_learning_rate_fraction = 0.0  # Learning rate at num_steps, as a fraction of the peak.
  opt.b1 = 0.9  # Adam beta1.
  opt.b2 = 0.999  # Adam beta2 (RoBERTa: 0.98).
  opt.eps = 1e-6  # Adam epsilon.
  opt.weight_decay = 0.01  # Decoupled weight decay; never on biases or LayerNorm.
  opt.grad_clip_norm = 1.0  # Clip gradients to this global norm; 0 disables.

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.shape = (-1, 1, 1)  # Sizes of the ('data', 'fsdp', 'tensor') axes; one -1 takes the rest.
  mesh.rules = DEFAULT_RULES  # Logical axis -> mesh axes, first free match wins.
  # Devices the run must find: 'any' (whatever JAX finds, CPU included), 'cpu', 'gpu' or 'tpu'.
  # 'gpu'/'tpu' stop the run at start when JAX falls back to CPU; with 'any', JAX_PLATFORMS=cuda
  # or tpu (set by launch/) asks the same (encoders/training/sharding.py: require_platform).
  mesh.platform = 'any'
  mesh.coordinator_address = ''  # host:port of process 0 for jax.distributed; '' auto-detects.
  mesh.num_processes = 0  # With coordinator_address: number of processes (0: auto-detect).
  mesh.process_id = -1  # With coordinator_address: this process's index (-1: auto-detect).

  config.checkpoint = ckpt = ml_collections.ConfigDict()
  ckpt.every_steps = 400 if tiny else 10_000  # Steps between saves (and one at the end).
  ckpt.keep = 3  # Most recent checkpoints kept.
  ckpt.async_save = True  # Write checkpoints in a background thread.
  ckpt.save_on_preemption = True  # SIGTERM / preemption notice: save the current step and stop.
  return config
