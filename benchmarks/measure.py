"""What every benchmarked system shares: the run spec, the synthetic batch, timing, memory and FLOPs.

A run is one training step of one system at one model shape, batch size and sequence
length, timed in its own process (`benchmarks/worker.py`). All systems see the same
token ids and the same masked positions (15% of each row); ours reads them in the
batch contract's sparse form, the references as dense labels (-100 where unmasked).
"""
import dataclasses
import math
import resource
import time

import numpy as np

from encoders.configs import common

VOCAB_SIZE = 30522
SPECIAL_IDS = {'pad': 0, 'cls': 101, 'sep': 102, 'mask': 103}
FIRST_WORD_ID = 1000  # Ids below this are special / unused in BERT's vocabulary.
# 'deberta': DeBERTa-v3's architecture (configs/deberta.py) at the same widths and depths.
FAMILIES = ('bert', 'deberta')


@dataclasses.dataclass
class Spec:
  """One benchmark run: a system at a shape, batch and sequence length."""
  system: str  # 'ours', 'ours_emd', 'hf_flax', 'torch', 'torch_compile' or 'matmul_peak'.
  family: str = 'bert'  # Of FAMILIES: the architecture every system builds.
  precision: str = 'f32'  # 'f32' or 'bf16' (benchmarks/inference.py: also 'bf16_weights').
  shape: str = 'mini'  # A size of configs/common.py: SIZES.
  seq: int = 128
  batch: int = 16
  mask_rate: float = 0.15
  warmup: int = 2  # Untimed steps after compilation.
  steps: int = 10  # Timed steps (fewer if max_time runs out first).
  max_time: float = 60.0  # Seconds of timed steps at most.
  seed: int = 0
  overrides: dict = dataclasses.field(default_factory=dict)  # Extra config fields for ours.

  @property
  def name(self) -> str:
    return f'{self.system}/{self.precision}'


def model_fields(spec: Spec, vocab_size: int = VOCAB_SIZE) -> dict:
  """The widths at `spec.shape` (hidden/64 heads, 4x MLP), as configs/common.py sizes them, for
  either family (DeBERTa has no mini; its base is BERT's 12 x 768)."""
  return dict(common.size_fields(spec.shape), vocab_size=vocab_size)


def max_predictions(mask_rate: float, seq: int) -> int:
  """P of the batch contract: ceil(rate * L) up to a multiple of 8 (encoders/data/masking.py's
  default)."""
  return -(-math.ceil(mask_rate * seq) // 8) * 8


def synthetic_batch(spec: Spec, vocab_size: int = VOCAB_SIZE) -> dict[str, np.ndarray]:
  """A batch-contract batch of full rows, each packing two examples; round(rate * L) masks per row.

  Also holds `attention_mask` and dense `labels` (-100 where nothing is predicted) for
  the reference systems, which attend over the whole row as run_mlm_flax's grouped texts do.
  """
  rng = np.random.default_rng(spec.seed)
  b, length = spec.batch, spec.seq
  p = max_predictions(spec.mask_rate, length)
  num_masked = min(round(spec.mask_rate * length), p)
  original = rng.integers(FIRST_WORD_ID, vocab_size, (b, length), dtype=np.int32)
  segment_ids = np.ones((b, length), np.int32)
  position_ids = np.tile(np.arange(length, dtype=np.int32), (b, 1))
  special = np.zeros((b, length), bool)
  for row in range(b):
    split = int(rng.integers(length // 4, 3 * length // 4))  # Second example starts here.
    segment_ids[row, split:] = 2
    position_ids[row, split:] -= split
    for start, end in ((0, split), (split, length)):
      original[row, start], original[row, end - 1] = SPECIAL_IDS['cls'], SPECIAL_IDS['sep']
      special[row, [start, end - 1]] = True
  masked_positions = np.zeros((b, p), np.int32)
  masked_ids = np.zeros((b, p), np.int32)
  masked_weights = np.zeros((b, p), np.float32)
  input_ids = original.copy()
  labels = np.full((b, length), -100, np.int32)
  for row in range(b):
    chosen = np.sort(rng.choice(np.flatnonzero(~special[row]), num_masked, replace=False))
    masked_positions[row, :num_masked] = chosen
    masked_ids[row, :num_masked] = original[row, chosen]
    masked_weights[row, :num_masked] = 1.0
    input_ids[row, chosen] = SPECIAL_IDS['mask']
    labels[row, chosen] = original[row, chosen]
  return dict(
      input_ids=input_ids, segment_ids=segment_ids, position_ids=position_ids,
      token_type_ids=np.zeros((b, length), np.int32), masked_positions=masked_positions,
      masked_ids=masked_ids, masked_weights=masked_weights,
      attention_mask=np.ones((b, length), np.int32), labels=labels)


def percentile_stats(values: list[float]) -> dict:
  a = np.asarray(values, np.float64)
  return dict(median=float(np.median(a)), p10=float(np.percentile(a, 10)),
              p90=float(np.percentile(a, 90)), min=float(a.min()), max=float(a.max()))


def peak_rss_mb() -> float:
  """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step, spec: Spec) -> dict:
  """Runs `spec.warmup` untimed then up to `spec.steps` timed calls of `step()` (which must block)."""
  start = time.perf_counter()
  step()
  first_step_s = time.perf_counter() - start
  for _ in range(spec.warmup):
    step()
  times, cpu_times = [], []
  deadline = time.perf_counter() + spec.max_time
  while len(times) < spec.steps and (len(times) < 3 or time.perf_counter() < deadline):
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  tokens = spec.batch * spec.seq
  # CPU seconds (all threads) per step: less sensitive than wall time to other processes
  # taking cores away, so A/B comparisons on a shared machine can use it too.
  return dict(first_step_s=first_step_s, step_s=percentile_stats(times),
              tokens_per_s=percentile_stats([tokens / t for t in times]),
              cpu_s_per_step=percentile_stats(cpu_times), timed_steps=len(times))
