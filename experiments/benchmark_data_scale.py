"""Host memory of the pretraining input pipeline on a generated multi-GB corpus (a script).

  python -m experiments.benchmark_data_scale --gigabytes=0.5,2 --out=docs/data_scale

For each size: writes synthetic text files (documents of Zipf-distributed pseudo-words,
separated by blank lines, in 64 MB files) into a scratch folder, then runs the chain a
pretraining run runs on a fresh machine, in a fresh process (the corpus is written by another
one, so neither the writer's heap nor an earlier size's is in the figures):
  build   the TFDS dataset of the files (corpus.TextFiles, streamed, array_record);
  vocab   a WordPiece tokenizer trained on config.data.tokenizer_max_documents of them;
  shards  tokenization into cached shards of config.data.shard_documents documents;
  batches --num_batches batches of the pipeline (full_sentences, seq 128, masked, packed).
A thread samples /proc/self/status every 0.2 s: RssAnon (memory the process holds) and
RssFile (pages of memory-mapped caches the kernel may drop). If the pipeline held a whole
split, RssAnon would grow with the corpus; the figures show whether it does.
Writes <out>/results.json (per size and phase: seconds, RssAnon at the phase's start, peak RssAnon
and RssFile in MiB) and <out>/memory.png.
"""
import concurrent.futures
import multiprocessing
import os
import shutil
import tempfile
import threading
import time

from absl import app
from absl import flags
from etils import epath
import numpy as np

from encoders import paths
from encoders.configs import data as data_config_lib

_GIGABYTES = flags.DEFINE_list('gigabytes', ['0.5', '2'], 'Corpus sizes (GB of text) to run.')
_OUT = flags.DEFINE_string('out', 'docs/data_scale', 'Where results.json and memory.png go.')
_SCRATCH = flags.DEFINE_string('scratch', None, 'Scratch folder (default: a temporary one).')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 2000, 'Pipeline batches read per size.')
_BATCH_SIZE = 32
_FILE_BYTES = 64 << 20


class MemorySampler(threading.Thread):
  """Samples (wall-clock seconds, phase, RssAnon MiB, RssFile MiB) of this process."""

  def __init__(self):
    super().__init__(daemon=True)
    self.samples, self.phase, self._stopping = [], None, False

  def run(self):
    while not self._stopping:
      self.sample()
      time.sleep(0.2)

  def sample(self):
    """Records one sample now (also called at each phase's start and end, so a phase shorter
    than the sampling period still has samples)."""
    with open('/proc/self/status') as status:
      fields = dict(line.split(':', 1) for line in status)
    kib = lambda name: int(fields[name].split()[0]) / 1024
    self.samples.append((time.time(), self.phase, kib('RssAnon'),
                         kib('RssFile')))

  def stop(self):
    self._stopping = True
    self.join()


def write_corpus(folder: str, num_bytes: int, seed: int = 0) -> int:
  """Writes about num_bytes of documents (3-40 sentences of 5-30 words) in 64 MB files; returns
  the number of documents."""
  rng = np.random.default_rng(seed)
  syllables = np.array(['ka', 'lo', 'mi', 'ter', 'an', 'dor', 'vel', 'si', 'pu', 'ne', 'ro',
                        'tha', 'gri', 'bel', 'os', 'un', 'ja', 'wen', 'ci', 'mar'])
  words = np.array([''.join(rng.choice(syllables, size=rng.integers(1, 5)))
                    for _ in range(50_000)])
  cdf = np.cumsum(1 / np.arange(1, len(words) + 1))
  os.makedirs(folder, exist_ok=True)
  written = documents = file_index = 0
  while written < num_bytes:
    parts, size = [], 0
    while size < _FILE_BYTES and written + size < num_bytes:
      drawn = words[np.searchsorted(cdf, rng.random(1 << 16) * cdf[-1])].tolist()
      lengths = rng.integers(5, 31, size=len(drawn) // 5)
      ends = np.cumsum(lengths)
      sentences = [' '.join(drawn[e - n:e]).capitalize() + '.'
                   for n, e in zip(lengths, ends) if e <= len(drawn)]
      cuts = np.cumsum(rng.integers(3, 41, size=len(sentences)))
      for a, b in zip(np.concatenate([[0], cuts]), cuts):
        if b > len(sentences):
          break
        parts.append(' '.join(sentences[a:b]))
        size += len(parts[-1]) + 2
    with open(os.path.join(folder, f'part-{file_index:05d}.txt'), 'w') as f:
      f.write('\n\n'.join(parts))
    written += size
    documents += len(parts)
    file_index += 1
  return documents


def _in_fresh_process(function, *args):
  """function(*args) in a new interpreter, whose memory starts from nothing of this one's."""
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    return pool.submit(function, *args).result()


def run_pipeline(gigabytes: float, folder: str, num_batches: int) -> tuple[dict, list]:
  """The pipeline's phases on the corpus in folder/text; returns (result, memory samples)."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from encoders.data import corpus, pipeline, tokenized, tokenizer as tokenizer_lib
  sampler = MemorySampler()
  sampler.start()
  config = data_config_lib.get_data_config(
      dataset='text_files', text_files=os.path.join(folder, 'text'),
      text_files_split_by='paragraph', data_dir=os.path.join(folder, 'tfds'), prefetch=0)
  result, phases = {}, {}

  def phase(name, work):
    sampler.phase = f'{gigabytes:g}GB {name}'
    sampler.sample()
    begin = time.perf_counter()
    value = work()
    sampler.sample()
    phases[name] = dict(seconds=round(time.perf_counter() - begin, 1))
    return value

  phase('build', lambda: corpus.get_builder(config))
  tokenizer = phase('vocab', lambda: tokenizer_lib.get_tokenizer(config, folder))
  config.vocab_size = tokenizer.vocab_size
  shards = phase('shards', lambda: tokenized.load_shards(config, tokenizer, 'train'))
  result.update(train_documents=sum(s.corpus.num_documents for s in shards),
                train_tokens=int(sum(s.corpus.num_tokens for s in shards)),
                shards=len(shards))
  del shards

  def read_batches():
    batches = pipeline.make_pretraining_iterator(
        ml_collections.ConfigDict(dict(data=config, train=dict(batch_size=_BATCH_SIZE))),
        tokenizer, 'train', process_index=0, process_count=1)
    for _ in range(num_batches):
      next(batches)

  phase('batches', read_batches)
  sampler.stop()
  for name, values in phases.items():
    rows = [s for s in sampler.samples if s[1] == f'{gigabytes:g}GB {name}']
    values.update(start_rss_anon_mib=round(rows[0][2]),
                  peak_rss_anon_mib=round(max(r[2] for r in rows)),
                  peak_rss_file_mib=round(max(r[3] for r in rows)))
  result['phases'] = phases
  return result, [s for s in sampler.samples if s[1]]


def run_size(gigabytes: float, scratch: str, num_batches: int) -> tuple[dict, list]:
  """Writes the corpus in one fresh process and runs the pipeline on it in another."""
  folder = os.path.join(scratch, f'{gigabytes:g}GB')
  start = time.perf_counter()
  documents = _in_fresh_process(write_corpus, os.path.join(folder, 'text'), int(gigabytes * 1e9))
  result = dict(gigabytes=gigabytes, documents_written=documents,
                write_s=time.perf_counter() - start)
  measured, samples = _in_fresh_process(run_pipeline, gigabytes, folder, num_batches)
  result.update(measured)
  shutil.rmtree(folder)
  return result, samples


def plot(samples: list, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(10, 4))
  seconds = (np.array([r[0] for r in samples]) - samples[0][0]) / 60
  anon, mapped = (np.array([r[i] for r in samples]) for i in (2, 3))
  gaps = np.flatnonzero(np.diff(seconds) > 0.05) + 1  # While the next corpus was written.
  seconds, anon, mapped = (np.insert(values.astype(float), gaps, np.nan)
                           for values in (seconds, anon, mapped))
  axis.plot(seconds, anon, label='RssAnon (held by the process)')
  axis.plot(seconds, mapped, label='RssFile (mapped caches, droppable)', alpha=0.6)
  starts = {}
  for r, minute in zip(samples, seconds[~np.isnan(seconds)]):
    starts.setdefault(r[1], minute)
  for name, minute in starts.items():
    axis.axvline(minute, color='grey', lw=0.5)
    axis.text(minute, axis.get_ylim()[1] * 0.97, name, rotation=90, va='top', fontsize=7)
  axis.set(xlabel='minutes', ylabel='MiB', title='Input pipeline memory on generated corpora')
  axis.legend(loc='center right')
  figure.tight_layout()
  paths.save_figure(figure, path, dpi=120)


def main(argv):
  del argv
  scratch = _SCRATCH.value or tempfile.mkdtemp(prefix='data_scale-')
  results, samples = [], []
  for gigabytes in map(float, _GIGABYTES.value):
    result, size_samples = run_size(gigabytes, scratch, _NUM_BATCHES.value)
    results.append(result)
    samples += size_samples
    print(result, flush=True)
  epath.Path(_OUT.value).mkdir(parents=True, exist_ok=True)
  paths.write_json(os.path.join(_OUT.value, 'results.json'), results, indent=1)
  plot(samples, os.path.join(_OUT.value, 'memory.png'))
  print(f'{"GB":>4} {"tokens":>12} {"phase":>8} {"seconds":>8} {"RssAnon MiB at start":>21} '
        f'{"peak":>6} {"RssFile MiB":>12}')
  for result in results:
    for name, values in result['phases'].items():
      print(f'{result["gigabytes"]:4g} {result["train_tokens"]:12,d} {name:>8} '
            f'{values["seconds"]:8.1f} {values["start_rss_anon_mib"]:21d} '
            f'{values["peak_rss_anon_mib"]:6d} {values["peak_rss_file_mib"]:12d}')


if __name__ == '__main__':
  app.run(main)
