"""A corpus split as token ids with word, sentence and document boundaries, cached on disk in shards.

Each document is tokenized whole (so byte-level BPE sees the spaces between sentences as
RoBERTa did), then cut into sentences by a regex splitter through the tokens' character
offsets. The arrays are cached as .npy files keyed by (dataset, split, tokenizer
fingerprint, splitter version), one folder per shard of documents (with the shard's example
indexes), and memory-mapped on later loads (read whole from a URL cache_dir).
"""
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time

import numpy as np
from etils import epath

from encoders import paths
from encoders.data import corpus
from encoders.data import examples as examples_lib
from encoders.data import tokenizer as tokenizer_lib

SPLITTER_VERSION = 1
SHARD_DOCUMENTS = 100_000  # config.data.shard_documents of configs saved before it existed.
_ARRAYS = ('token_ids', 'word_starts', 'sentence_offsets', 'document_offsets')

# Sentence ends: terminal punctuation, closing quotes / brackets, then whitespace; or a newline.
_CANDIDATE = re.compile(r'[.!?…]+["\'”’»)\]]*\s+|\s*\n\s*')
_OPENERS = '"“‘«¿¡([\''
# Words (lowercased, without the final period) after which a period rarely ends a sentence
# in English, French or Spanish Wikipedia prose.
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof st sr jr vs no nos vol fig figs cf approx ca inc ltd co corp gen gov sen rep
col lt sgt capt mt ft jan feb mar apr jun jul aug sep sept oct nov dec est op al ed eds
mme mlle mm me sra srta dres dra ud uds av pág núm art
""".split())


def split_sentences(text: str) -> list[str]:
  """Sentences of `text` (stripped), for en / fr / es prose."""
  starts = _sentence_starts(text)
  return [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)]) if text[a:b].strip()]


def _sentence_starts(text: str) -> list[int]:
  """Character offsets where sentences begin (the first is 0)."""
  starts = [0]
  for match in _CANDIDATE.finditer(text):
    if match.end() < len(text) and ('\n' in match.group() or _ends_sentence(text, match)):
      starts.append(match.end())
  return starts


def _ends_sentence(text: str, match: re.Match) -> bool:
  following = text[match.end():match.end() + 4].lstrip(_OPENERS + ' \u00a0\u202f')
  if not following or not (following[0].isupper() or following[0].isdigit()):
    return False
  if not match.group().startswith('.') or match.group().startswith('..'):
    return True
  before = text[max(0, match.start() - 32):match.start()].split()  # Bounded: long docs stay linear.
  word = before[-1].lstrip(_OPENERS) if before else ''
  # Initials ('J. R. R.'), dotted abbreviations ('e.g', 'U.S') and known abbreviations.
  return not (len(word) == 1 or '.' in word or word.lower() in _ABBREVIATIONS)


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  """Tokens of a split, with word / sentence / document boundaries (no special tokens)."""
  token_ids: np.ndarray         # int32 [num_tokens]: every document's tokens concatenated
  word_starts: np.ndarray       # bool [num_tokens]: True where a token begins a new word
  sentence_offsets: np.ndarray  # int64 [num_sentences + 1]: token offset of each sentence
  document_offsets: np.ndarray  # int64 [num_documents + 1]: sentence offset of each document
  document_labels: np.ndarray | None  # int32 [num_documents]: topic label, if the dataset has one

  @property
  def num_documents(self) -> int:
    return len(self.document_offsets) - 1

  @property
  def num_sentences(self) -> int:
    return len(self.sentence_offsets) - 1

  @property
  def num_tokens(self) -> int:
    return len(self.token_ids)

  def sentence(self, j: int) -> np.ndarray:
    return self.token_ids[self.sentence_offsets[j]:self.sentence_offsets[j + 1]]

  def document(self, i: int) -> list[np.ndarray]:
    """The token ids of each sentence of document i."""
    return [self.sentence(j)
            for j in range(self.document_offsets[i], self.document_offsets[i + 1])]

  def document_tokens(self, i: int) -> np.ndarray:
    sentences = self.sentence_offsets[self.document_offsets[[i, i + 1]]]
    return self.token_ids[sentences[0]:sentences[1]]


def tokenize_documents(tokenizer: tokenizer_lib.Tokenizer, texts: list[str],
                       labels: np.ndarray | None = None) -> tuple[TokenizedCorpus, dict]:
  """Tokenizes whole documents and cuts them into sentences; empty ones are skipped."""
  return _concatenate([_tokenize_chunk(tokenizer, texts, labels)])


def _tokenize_chunk(tokenizer, texts, labels) -> dict:
  """Per-document token arrays of one chunk of documents (the tokenizer batches in threads)."""
  token_ids, word_starts, sentence_lengths, kept = [], [], [], []
  encodings = tokenizer.backend.encode_batch(texts, add_special_tokens=False)
  for index, (text, encoding) in enumerate(zip(texts, encodings)):
    if not encoding.ids:
      continue
    word_ids = np.asarray(encoding.word_ids, np.int64)
    # A token belongs to the sentence holding its last character.
    last_chars = np.maximum(np.asarray(encoding.offsets, np.int64)[:, 1] - 1, 0)
    sentence_of_token = np.searchsorted(_sentence_starts(text), last_chars, side='right') - 1
    lengths = np.bincount(sentence_of_token)
    token_ids.append(np.asarray(encoding.ids, np.int32))
    word_starts.append(np.concatenate([[True], word_ids[1:] != word_ids[:-1]]))
    sentence_lengths.append(lengths[lengths > 0])
    kept.append(index)
  return dict(token_ids=token_ids, word_starts=word_starts, sentence_lengths=sentence_lengths,
              labels=None if labels is None else np.asarray(labels, np.int32)[kept],
              num_skipped=len(texts) - len(kept))


def _concatenate(chunks: list[dict]) -> tuple[TokenizedCorpus, dict]:
  sentence_lengths = [l for c in chunks for l in c['sentence_lengths']]
  if not sentence_lengths:
    raise ValueError('All documents are empty after tokenization: check the corpus.')
  result = TokenizedCorpus(
      token_ids=np.concatenate([t for c in chunks for t in c['token_ids']]),
      word_starts=np.concatenate([w for c in chunks for w in c['word_starts']]).astype(bool),
      sentence_offsets=np.concatenate([[0], np.cumsum(np.concatenate(sentence_lengths))]
                                      ).astype(np.int64),
      document_offsets=np.concatenate([[0], np.cumsum([len(l) for l in sentence_lengths])]
                                      ).astype(np.int64),
      document_labels=(None if chunks[0]['labels'] is None
                       else np.concatenate([c['labels'] for c in chunks])))
  stats = dict(documents=result.num_documents, sentences=result.num_sentences,
               tokens=result.num_tokens,
               skipped_empty_documents=sum(c['num_skipped'] for c in chunks))
  return result, stats


def cache_dir_of(data_config) -> str:
  return os.path.expanduser(data_config.get('cache_dir') or
                            os.path.join(corpus.data_dir_of(data_config), 'tokenized'))


@dataclasses.dataclass(frozen=True)
class Shard:
  """One cached shard of a split: documents [first, first + corpus.num_documents) of it."""
  shard_id: int
  num_shards: int
  corpus: TokenizedCorpus
  folder: str | None  # Where it is cached (its example indexes too); None: built in memory.


def shard_ranges(num_documents: int, shard_documents: int) -> list[range]:
  """Document ranges of the shards of a split: ceil(n / shard_documents) of near-equal size."""
  num_shards = max(1, -(-num_documents // shard_documents))
  bounds = [s * num_documents // num_shards for s in range(num_shards + 1)]
  return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def host_shard_ids(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The shards a host reads: its own (index, index + count, ...) when every host gets one;
  all of them otherwise (the pipeline then gives each host every count-th example)."""
  if num_shards < process_count:
    return list(range(num_shards))
  return list(range(process_index, num_shards, process_count))


def load_shards(data_config, tokenizer: tokenizer_lib.Tokenizer, split: str,
                process_index: int = 0, process_count: int = 1) -> list[Shard]:
  """This host's shards of the split, each read from the cache or tokenized and cached first.

  Only these shards' documents are read, a chunk at a time, and a shard is cached as soon as it
  is tokenized: memory holds one shard's arrays while building, and the memory-mapped caches
  after (a cache_dir at a URL is read whole, shard by shard: keep a C4-size cache on each
  host's local disk, which needs only that host's shards). A run stopped while tokenizing resumes at the first shard not cached. A shard's arrays
  depend only on its documents and the tokenizer, not on the number of hosts.
  """
  builder = corpus.get_builder(data_config)
  split_name = re.sub(r'[^\w.+-]', '_', split)  # 'train[:10%]' -> 'train__10__-<hash>'
  if split_name != split:
    split_name += '-' + hashlib.md5(split.encode()).hexdigest()[:8]
  split_folder = os.path.join(cache_dir_of(data_config), corpus.dataset_key(data_config, builder),
                              f'{split_name}-{tokenizer.fingerprint}-splitter{SPLITTER_VERSION}')
  ranges = shard_ranges(corpus.num_documents(data_config, split, builder),
                        data_config.get('shard_documents', SHARD_DOCUMENTS))
  shards = []
  for shard_id in host_shard_ids(len(ranges), process_index, process_count):
    folder = os.path.join(split_folder, f'shard-{shard_id:05d}-of-{len(ranges):05d}')
    if not epath.Path(folder, 'stats.json').exists():
      start = time.perf_counter()
      result, stats = _concatenate([
          _tokenize_chunk(tokenizer, texts, labels) for texts, labels in corpus.iter_documents(
              data_config, split, builder, documents=ranges[shard_id])])
      stats['seconds'] = round(time.perf_counter() - start, 2)
      _save({name: getattr(result, name) for name in _ARRAYS + ('document_labels',)
             if getattr(result, name) is not None}, stats, folder)
      logging.info('Tokenized %s/%s documents %d:%d into %s: %s.', data_config.dataset, split,
                   ranges[shard_id].start, ranges[shard_id].stop, folder, stats)
      if paths.is_url(folder):  # Read back, it would be downloaded whole.
        shards.append(Shard(shard_id, len(ranges), result, folder))
        continue
      del result  # Read back memory-mapped, like every other shard.
    shards.append(Shard(shard_id, len(ranges), _load(folder), folder))
  return shards


def load_tokenized_corpus(data_config, tokenizer: tokenizer_lib.Tokenizer,
                          split: str) -> TokenizedCorpus:
  """The whole tokenized split as one corpus (shards are cached as in load_shards); a split of
  one shard stays memory-mapped, a larger one is concatenated in memory."""
  shards = load_shards(data_config, tokenizer, split)
  if len(shards) == 1:
    return shards[0].corpus
  return concatenate_corpora([shard.corpus for shard in shards])


def concatenate_corpora(parts: list[TokenizedCorpus]) -> TokenizedCorpus:
  token_offsets = np.cumsum([0] + [part.num_tokens for part in parts])
  sentence_offsets = np.cumsum([0] + [part.num_sentences for part in parts])
  return TokenizedCorpus(
      token_ids=np.concatenate([part.token_ids for part in parts]),
      word_starts=np.concatenate([part.word_starts for part in parts]),
      sentence_offsets=np.concatenate(
          [[0]] + [part.sentence_offsets[1:] + offset for part, offset
                   in zip(parts, token_offsets)]).astype(np.int64),
      document_offsets=np.concatenate(
          [[0]] + [part.document_offsets[1:] + offset for part, offset
                   in zip(parts, sentence_offsets)]).astype(np.int64),
      document_labels=(None if parts[0].document_labels is None
                       else np.concatenate([part.document_labels for part in parts])))


def load_examples(shard: Shard, data_config) -> examples_lib.ExampleIndex:
  """The shard cut into examples of config.data's input format, cached next to its tokens
  (training and every validation read them back instead of cutting them again)."""
  key = (data_config.input_format, data_config.seq_length, data_config.short_seq_prob,
         data_config.shuffle_seed)
  build = lambda: examples_lib.build_examples(shard.corpus, *key)
  if shard.folder is None:
    return build()
  folder = os.path.join(shard.folder, 'examples-' + hashlib.md5(repr(key).encode()).hexdigest()[:12])
  if not epath.Path(folder, 'stats.json').exists():
    index = build()
    arrays = {field.name: getattr(index, field.name) for field in dataclasses.fields(index)
              if field.name != 'stats' and getattr(index, field.name) is not None}
    _save(arrays, index.stats, folder)
    if paths.is_url(folder):
      return index
  stats = paths.read_json(os.path.join(folder, 'stats.json'))
  arrays = {field.name: _load_if_exists(os.path.join(folder, f'{field.name}.npy'))
            for field in dataclasses.fields(examples_lib.ExampleIndex) if field.name != 'stats'}
  return examples_lib.ExampleIndex(**arrays, stats=stats)


def _save(arrays: dict[str, np.ndarray], stats: dict, folder: str) -> None:
  """Writes `arrays` as .npy files and stats.json. Readers never see a partial cache: a local
  one is written into a temporary folder, then renamed; at a URL (object stores rename no
  folders) stats.json, which readers look for, is written last."""
  if paths.is_url(folder):
    _write(arrays, stats, folder)
    return
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix='.tmp-')
  _write(arrays, stats, tmp)
  try:
    os.rename(tmp, folder)
  except OSError:  # Another process cached it first.
    shutil.rmtree(tmp)


def _write(arrays: dict[str, np.ndarray], stats: dict, folder: str) -> None:
  for name, array in arrays.items():
    paths.save_npy(os.path.join(folder, f'{name}.npy'), array)
  paths.write_json(os.path.join(folder, 'stats.json'), stats)


def _load_if_exists(path: str) -> np.ndarray | None:
  return paths.load_npy(path) if epath.Path(path).exists() else None


def _load(folder: str) -> TokenizedCorpus:
  arrays = {name: paths.load_npy(os.path.join(folder, f'{name}.npy')) for name in _ARRAYS}
  labels = _load_if_exists(os.path.join(folder, 'document_labels.npy'))
  stats = paths.read_json(os.path.join(folder, 'stats.json'))
  logging.info('Tokenized corpus %s: %s.', folder, stats)
  return TokenizedCorpus(**arrays, document_labels=labels)


def cold_build(data_config, workdir: str) -> dict:
  """Seconds to build the dataset, get the tokenizer and tokenize + cache the train split.

  Run with data_dir / cache_dir / workdir pointing at empty folders to time a cold start.
  """
  timings = {}
  start = time.perf_counter()
  corpus.get_builder(data_config)
  timings['build_dataset_s'] = time.perf_counter() - start
  tokenizer = tokenizer_lib.get_tokenizer(data_config, workdir)
  timings['tokenizer_s'] = time.perf_counter() - start - timings['build_dataset_s']
  tokenized = load_tokenized_corpus(data_config, tokenizer, data_config.get('train_split', 'train'))
  timings['total_s'] = time.perf_counter() - start
  timings['tokenize_and_cache_s'] = (timings['total_s'] - timings['build_dataset_s']
                                     - timings['tokenizer_s'])
  timings.update(documents=tokenized.num_documents, sentences=tokenized.num_sentences,
                 tokens=tokenized.num_tokens)
  return timings
