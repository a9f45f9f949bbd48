"""Throughput of the whole pretraining input pipeline (a script, not a test).

  python -m experiments.benchmark_pipeline [--num_batches=200 --batch_size=32 --seq_length=128]
                                           [--out=docs/pipeline]

Cold: builds the TFDS corpus, trains the tokenizer and tokenizes into empty
temporary folders (data/tokenized.cold_build), then builds the iterator.
Warm: the same from the cache, then times batches with masking for several input
formats and masking units. Prints tokens/s (row slots, what a trainer consumes,
and non-padding tokens) and the peak RSS of the process; with --out, also writes them (and the
machine's load average, which the seconds depend on) to <out>/results.json.
"""
import json
import os
import resource
import tempfile
import time

from absl import app
from absl import flags
import ml_collections

from encoders import paths
from encoders.configs import data as data_config_lib
from encoders.data import packing
from encoders.data import pipeline
from encoders.data import tokenized
from encoders.data import tokenizer as tokenizer_lib

_NUM_BATCHES = flags.DEFINE_integer('num_batches', 200, 'Batches timed per setting.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Rows per batch.')
_SEQ_LENGTH = flags.DEFINE_integer('seq_length', 128, 'Tokens per row.')
_DATASET = flags.DEFINE_string('dataset', 'wiki_offline/en', 'config.data.dataset')
_OUT = flags.DEFINE_string('out', None, 'If set, the folder (local or gs://) for results.json.')
# A BERT-base step on this 2-core CPU consumes roughly 300-500 tokens/s.
_TRAINER_TOKENS_PER_S = 500

SETTINGS = [  # (input_format, masking, packing)
    ('full_sentences', 'token', True),
    ('full_sentences', 'whole_word', True),
    ('doc_sentences', 'span', True),
    ('segment_pair_nsp', 'token', False),
    ('sop', 'ngram', False),
]


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_batches(config, tokenizer, corpus):
  start = time.perf_counter()
  iterator = pipeline.make_pretraining_iterator(
      ml_collections.ConfigDict(dict(data=config, train=dict(batch_size=_BATCH_SIZE.value))),
      tokenizer, 'train', process_index=0, process_count=1, corpus=corpus)
  first = next(iterator)
  startup_s = time.perf_counter() - start
  start = time.perf_counter()
  efficiency = []
  for _ in range(_NUM_BATCHES.value):
    efficiency.append(packing.packing_efficiency(next(iterator)))
  seconds = time.perf_counter() - start
  slots = _NUM_BATCHES.value * first['input_ids'].size
  return dict(startup_s=startup_s, tokens_per_s=slots / seconds,
              real_tokens_per_s=slots * sum(efficiency) / len(efficiency) / seconds,
              efficiency=sum(efficiency) / len(efficiency))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as folder:
    config = data_config_lib.get_data_config(
        dataset=_DATASET.value, data_dir=f'{folder}/tfds', cache_dir=f'{folder}/cache',
        seq_length=_SEQ_LENGTH.value, prefetch=0)
    workdir = f'{folder}/work'
    cold = tokenized.cold_build(config, workdir)
    tokenizer = tokenizer_lib.get_tokenizer(config, workdir)
    corpus = tokenized.load_tokenized_corpus(config, tokenizer, 'train')
    cold_pipeline = _time_batches(config, tokenizer, corpus)
    print(f'Cold build of {_DATASET.value} (train): {cold["total_s"]:.1f} s '
          f'(dataset {cold["build_dataset_s"]:.1f} s, tokenizer {cold["tokenizer_s"]:.1f} s, '
          f'tokenize + cache {cold["tokenize_and_cache_s"]:.1f} s); {cold["documents"]} documents, '
          f'{cold["tokens"]:,} tokens; then first batch after {cold_pipeline["startup_s"]:.1f} s.')

    start = time.perf_counter()
    tokenizer = tokenizer_lib.get_tokenizer(config, workdir)
    corpus = tokenized.load_tokenized_corpus(config, tokenizer, 'train')
    warm_reload_s = time.perf_counter() - start
    print(f'Warm reload of tokenizer + cached corpus: {warm_reload_s:.2f} s.')
    print(f'\nWarm pipeline, batch {_BATCH_SIZE.value} x {_SEQ_LENGTH.value}, '
          f'{_NUM_BATCHES.value} batches per row, 1 process, no prefetch thread:')
    rows = []
    print(f'| input_format | masking | packing | startup s | tokens/s | non-pad tokens/s | '
          f'efficiency | x trainer ({_TRAINER_TOKENS_PER_S} tok/s) |')
    print('|---|---|---|---|---|---|---|---|')
    for input_format, masking_unit, packed in SETTINGS:
      config.input_format, config.masking, config.packing = input_format, masking_unit, packed
      result = _time_batches(config, tokenizer, corpus)
      rows.append(dict(input_format=input_format, masking=masking_unit, packing=packed, **result))
      print(f'| {input_format} | {masking_unit} | {packed} | {result["startup_s"]:.2f} | '
            f'{result["tokens_per_s"]:,.0f} | {result["real_tokens_per_s"]:,.0f} | '
            f'{result["efficiency"]:.3f} | {result["tokens_per_s"] / _TRAINER_TOKENS_PER_S:,.0f}x |')
    print(f'\nPeak RSS: {_peak_rss_mib():,.0f} MiB')
  if _OUT.value:
    results = dict(dataset=_DATASET.value, batch_size=_BATCH_SIZE.value,
                   seq_length=_SEQ_LENGTH.value, num_batches=_NUM_BATCHES.value, cold=cold,
                   cold_first_batch_s=cold_pipeline['startup_s'], warm_reload_s=warm_reload_s,
                   warm=rows, peak_rss_mib=_peak_rss_mib(), load_average=os.getloadavg())
    paths.write_atomic(os.path.join(_OUT.value, 'results.json'), json.dumps(results, indent=1))
    print('Wrote', os.path.join(_OUT.value, 'results.json'))


if __name__ == '__main__':
  app.run(main)
