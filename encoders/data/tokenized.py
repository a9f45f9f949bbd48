"""A corpus split as token ids with word, sentence and document boundaries, cached on disk.

Each document is tokenized whole (so byte-level BPE sees the spaces between sentences as
RoBERTa did), then cut into sentences by a regex splitter through the tokens' character
offsets. The arrays are cached as .npy files keyed by (dataset, split, tokenizer
fingerprint, splitter version) and memory-mapped on later loads (read whole from a URL cache_dir).
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
from encoders.data import tokenizer as tokenizer_lib

SPLITTER_VERSION = 1
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


def load_tokenized_corpus(data_config, tokenizer: tokenizer_lib.Tokenizer,
                          split: str) -> TokenizedCorpus:
  """The tokenized split: read from the cache, or built (dataset + tokenization) and cached."""
  builder = corpus.get_builder(data_config)
  split_name = re.sub(r'[^\w.+-]', '_', split)  # 'train[:10%]' -> 'train__10__-<hash>'
  if split_name != split:
    split_name += '-' + hashlib.md5(split.encode()).hexdigest()[:8]
  folder = os.path.join(cache_dir_of(data_config), corpus.dataset_key(data_config, builder),
                        f'{split_name}-{tokenizer.fingerprint}-splitter{SPLITTER_VERSION}')
  if not epath.Path(folder, 'stats.json').exists():
    start = time.perf_counter()
    # Streams chunks of documents: only the token arrays are held in memory.
    result, stats = _concatenate([_tokenize_chunk(tokenizer, texts, labels) for texts, labels
                                  in corpus.iter_documents(data_config, split, builder)])
    stats['seconds'] = round(time.perf_counter() - start, 2)
    _save(result, stats, folder)
    logging.info('Tokenized %s/%s into %s: %s.', data_config.dataset, split, folder, stats)
    if paths.is_url(folder):  # Read back it would be read whole, as it is already in memory.
      return result
  return _load(folder)  # A local cache memory-mapped.


def _save(result: TokenizedCorpus, stats: dict, folder: str) -> None:
  """Readers never see a partial cache: a local one is written into a temporary folder, then
  renamed; at a URL (object stores rename no folders) stats.json, which readers look for, is
  written last."""
  if paths.is_url(folder):
    _write(result, stats, folder)
    return
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix='.tmp-')
  _write(result, stats, tmp)
  try:
    os.rename(tmp, folder)
  except OSError:  # Another process cached it first.
    shutil.rmtree(tmp)


def _write(result: TokenizedCorpus, stats: dict, folder: str) -> None:
  for name in _ARRAYS + ('document_labels',):
    if getattr(result, name) is not None:
      paths.save_npy(os.path.join(folder, f'{name}.npy'), getattr(result, name))
  paths.write_json(os.path.join(folder, 'stats.json'), stats)


def _load(folder: str) -> TokenizedCorpus:
  arrays = {name: paths.load_npy(os.path.join(folder, f'{name}.npy')) for name in _ARRAYS}
  labels_path = os.path.join(folder, 'document_labels.npy')
  labels = paths.load_npy(labels_path) if epath.Path(labels_path).exists() else None
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
