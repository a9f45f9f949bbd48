"""Labelled examples for fine-tuning: raw records -> fixed-length rows with targets.

Three task kinds, each turned into rows of the batch contract's input arrays
(`input_ids`, `segment_ids` 1 on tokens / 0 at padding, `position_ids`, `token_type_ids`)
plus targets, one row per window, `example_index` naming the record a row came from:

- 'classification': one label per text or text pair (`label` [N]). A single text longer
  than a row is cut into (at most `max_windows`) windows of `max_length - 2` tokens that start
  every `doc_stride` tokens (capped at the window length); evaluation averages the logits of
  a record's windows.
  Pairs (GLUE) are truncated longest-first, as BERT's `truncate_seq_pair`.
- 'token_classification': one tag per word (`labels`, `label_weights` [N, L]: the first
  sub-token of each word carries the word's tag). Long sentences get windows; each word is
  scored in the window where it has the most context (BERT's `_check_is_max_context`).
- 'qa': SQuAD-style [CLS] question [SEP] context-window [SEP] rows with `start_positions` /
  `end_positions` (0 = [CLS] when the window lacks the answer), and per row the character
  span of each context token (`offsets`, -1 elsewhere) and `max_context` flags.

Tasks read from TFDS in array_record format (no TensorFlow):
- 'topic': the embedded Wikipedia corpus (encoders/data/corpus.py), 12 topics. Pretraining trains on
  'train' and validates on 'validation'; fine-tuning trains on the part of 'train' that
  `dev_split_of(title)` puts in 'train', selects models on the rest of 'train' ('dev', a hashed
  `dev_fraction` of it, salted so it is independent of the corpus split hash) and reports on
  'test'. Both fine-tuning splits are subsets of the corpus 'train' split, so neither ever
  overlaps pretraining's 'validation' split, and 'test' is seen by neither.
- 'glue/<name>' (sst2, mnli, qnli, ...), 'conll2003', 'squad': TFDS catalog datasets prepared
  in `data_dir`; 'dev' is a hashed `dev_fraction` of 'train', results are on the dataset's
  validation split (GLUE's test labels are hidden) or 'test' (conll2003).
"""
import dataclasses
import hashlib

import numpy as np

from encoders.config import ConfigError
from encoders.data import corpus, imbalance

KINDS = ('classification', 'token_classification', 'qa')
# GLUE tasks: (text features, evaluation split). STS-B is a regression and is not supported.
GLUE = {
    'cola': (('sentence',), 'validation'),
    'sst2': (('sentence',), 'validation'),
    'mrpc': (('sentence1', 'sentence2'), 'validation'),
    'qqp': (('question1', 'question2'), 'validation'),
    'mnli': (('premise', 'hypothesis'), 'validation_matched'),
    'qnli': (('question', 'sentence'), 'validation'),
    'rte': (('sentence1', 'sentence2'), 'validation'),
    'wnli': (('sentence1', 'sentence2'), 'validation'),
}


@dataclasses.dataclass
class Split:
  """One split of a task: rows (windows) and what evaluation needs per record."""
  rows: dict[str, np.ndarray]  # Model inputs and targets; leading dim = windows.
  example_index: np.ndarray  # int32 [windows]: the record each window comes from.
  num_examples: int
  references: list  # Per record: label id | word tag ids | gold answer texts.
  contexts: list | None = None  # QA: per record, the context text.

  def __len__(self) -> int:
    return len(self.example_index)


@dataclasses.dataclass
class Task:
  kind: str
  label_names: list[str] | None  # Classes / tags; None for QA.
  splits: dict[str, Split]  # 'train', 'dev', 'test'.


# --------------------------------------------------------------------------- windows
def windows(num_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
  """[start, end) windows of at most `max_tokens` starting every `stride` tokens, covering all.

  The last window ends at `num_tokens`; a sequence that fits gives one window.
  """
  if not 0 < stride <= max_tokens:
    raise ValueError(f'doc_stride={stride} must be in [1, window length {max_tokens}].')
  result, start = [], 0
  while True:
    end = min(start + max_tokens, num_tokens)
    result.append((start, end))
    if end >= num_tokens:
      return result
    start += stride


def max_context(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
  """int32 [num_tokens]: the window where each token has the most context.

  BERT's `_check_is_max_context`: score = min(left context, right context) + 0.01 * length.
  """
  best = np.zeros(num_tokens, np.int32)
  best_score = np.full(num_tokens, -np.inf)
  for w, (start, end) in enumerate(spans):
    positions = np.arange(start, end)
    score = np.minimum(positions - start, end - 1 - positions) + 0.01 * (end - start)
    better = score > best_score[start:end]
    best[start:end][better] = w
    best_score[start:end][better] = score[better]
  return best


class _RowWriter:
  """Collects rows of (token ids, token types) and pads them to `length`."""

  def __init__(self, length: int, pad_id: int):
    self.length, self.pad_id = length, pad_id
    self.ids, self.types, self.targets, self.example_index = [], [], {}, []

  def add(self, ids: list[int], types: list[int], example: int, **targets) -> None:
    if len(ids) > self.length:
      raise AssertionError(f'row of {len(ids)} tokens > {self.length}')
    self.ids.append(ids)
    self.types.append(types)
    self.example_index.append(example)
    for name, value in targets.items():
      self.targets.setdefault(name, []).append(value)

  def rows(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
    n, L = len(self.ids), self.length
    input_ids = np.full((n, L), self.pad_id, np.int32)
    token_type_ids = np.zeros((n, L), np.int32)
    segment_ids = np.zeros((n, L), np.int32)
    for i, (ids, types) in enumerate(zip(self.ids, self.types)):
      input_ids[i, :len(ids)] = ids
      token_type_ids[i, :len(ids)] = types
      segment_ids[i, :len(ids)] = 1
    position_ids = np.where(segment_ids > 0, np.arange(L)[None, :], 0).astype(np.int32)
    rows = dict(input_ids=input_ids, segment_ids=segment_ids, position_ids=position_ids,
                token_type_ids=token_type_ids)
    for name, values in self.targets.items():
      rows[name] = np.asarray(values)
    return rows, np.asarray(self.example_index, np.int32)


def _separators(tokenizer) -> list[int]:
  """Tokens between the two texts of a pair: RoBERTa's '</s></s>', BERT's '[SEP]'."""
  return [tokenizer.sep_id] * (2 if tokenizer.kind == 'bpe' else 1)


def _encode(tokenizer, texts: list[str]):
  return tokenizer.backend.encode_batch(list(texts), add_special_tokens=False)


# --------------------------------------------------------------------------- classification
def classification_split(texts: list[str], labels, tokenizer, max_length: int, doc_stride: int,
                         max_windows: int = 0, texts_b: list[str] | None = None,
                         pair_types: bool = True) -> Split:
  """Rows for (pairs of) texts with one label each; see the module docstring."""
  labels = np.asarray(labels, np.int32)
  writer = _RowWriter(max_length, tokenizer.pad_id)
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  encoded_a = _encode(tokenizer, texts)
  if texts_b is None:
    for i, encoding in enumerate(encoded_a):
      ids = encoding.ids
      spans = windows(len(ids), max_length - 2, min(doc_stride, max_length - 2))
      for start, end in spans[:max_windows or None]:
        row = [cls] + ids[start:end] + [sep]
        writer.add(row, [0] * len(row), i, label=labels[i])
  else:
    between = _separators(tokenizer)
    budget = max_length - 2 - len(between)
    for i, (a, b) in enumerate(zip(encoded_a, _encode(tokenizer, texts_b))):
      a, b = list(a.ids), list(b.ids)
      while len(a) + len(b) > budget:  # BERT's truncate_seq_pair: trim the longer one.
        (a if len(a) > len(b) else b).pop()
      first = [cls] + a + between
      row = first + b + [sep]
      second_type = 1 if pair_types else 0
      writer.add(row, [0] * len(first) + [second_type] * (len(b) + 1), i, label=labels[i])
  rows, example_index = writer.rows()
  return Split(rows, example_index, len(texts), list(labels))


# --------------------------------------------------------------------------- token classification
def token_classification_split(words: list[list[str]], tags: list[list[int]], tokenizer,
                               max_length: int, doc_stride: int) -> Split:
  """Rows for sentences of words with one tag id per word; see the module docstring."""
  writer = _RowWriter(max_length, tokenizer.pad_id)
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  encodings = tokenizer.backend.encode_batch([list(w) for w in words], is_pretokenized=True,
                                             add_special_tokens=False)
  for i, (encoding, word_tags) in enumerate(zip(encodings, tags)):
    if len(word_tags) != len(words[i]):
      raise ValueError(f'Record {i}: {len(words[i])} words but {len(word_tags)} tags.')
    word_ids = np.asarray([-1 if w is None else w for w in encoding.word_ids])
    first = np.zeros(len(word_ids), bool)  # First sub-token of each word.
    first[np.unique(word_ids, return_index=True)[1]] = True
    first &= word_ids >= 0
    spans = windows(len(word_ids), max_length - 2, min(doc_stride, max_length - 2))
    owner = max_context(spans, len(word_ids))
    for w, (start, end) in enumerate(spans):
      row = [cls] + encoding.ids[start:end] + [sep]
      labels = np.zeros(max_length, np.int32)
      weights = np.zeros(max_length, np.float32)  # Trained on: first sub-tokens.
      word_index = np.full(max_length, -1, np.int32)  # Scored here: max-context first sub-tokens.
      for t in range(start, end):
        if first[t]:
          labels[t - start + 1] = word_tags[word_ids[t]]
          weights[t - start + 1] = 1.0
          if owner[t] == w:
            word_index[t - start + 1] = word_ids[t]
      writer.add(row, [0] * len(row), i, labels=labels, label_weights=weights,
                 word_index=word_index)
  rows, example_index = writer.rows()
  return Split(rows, example_index, len(words), [np.asarray(t, np.int32) for t in tags])


# --------------------------------------------------------------------------- extractive QA
def qa_split(questions: list[str], contexts: list[str], answers: list[list[tuple[str, int]]],
             tokenizer, max_length: int, doc_stride: int, max_query_length: int = 64,
             pair_types: bool = True) -> Split:
  """Rows for SQuAD-style records; answers[i] = [(text, start character), ...] (gold first)."""
  writer = _RowWriter(max_length, tokenizer.pad_id)
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  between = _separators(tokenizer)
  second_type = 1 if pair_types else 0
  for i, (question, context) in enumerate(zip(_encode(tokenizer, questions),
                                              _encode(tokenizer, contexts))):
    query = question.ids[:max_query_length]
    head = [cls] + query + between  # Context token t of a window sits at len(head) + t - start.
    budget = max_length - len(head) - 1
    if budget < 1:
      raise ValueError(f'max_length={max_length} leaves no room for context after a '
                       f'{len(query)}-token question: lower max_query_length.')
    offsets = np.asarray(context.offsets, np.int32).reshape(-1, 2)
    answer_tokens = None
    if answers[i]:
      text, start_char = answers[i][0]
      inside = np.nonzero((offsets[:, 1] > start_char)
                          & (offsets[:, 0] < start_char + len(text)))[0]
      if len(inside):
        answer_tokens = (inside[0], inside[-1])
    spans = windows(len(context.ids), budget, min(doc_stride, budget))
    owner = max_context(spans, len(context.ids))
    for w, (start, end) in enumerate(spans):
      row = head + context.ids[start:end] + [sep]
      row_offsets = np.full((max_length, 2), -1, np.int32)
      row_offsets[len(head):len(head) + end - start] = offsets[start:end]
      is_max = np.zeros(max_length, bool)
      is_max[len(head):len(head) + end - start] = owner[start:end] == w
      start_position = end_position = 0
      if answer_tokens and start <= answer_tokens[0] and answer_tokens[1] < end:
        start_position = len(head) + answer_tokens[0] - start
        end_position = len(head) + answer_tokens[1] - start
      writer.add(row, [0] * len(head) + [second_type] * (end - start + 1), i,
                 start_positions=start_position, end_positions=end_position,
                 offsets=row_offsets, max_context=is_max)
  rows, example_index = writer.rows()
  return Split(rows, example_index, len(questions), [[t for t, _ in a] for a in answers],
               contexts=list(contexts))


# --------------------------------------------------------------------------- TFDS records
def dev_split_of(key: str, dev_fraction: float) -> str:
  """'dev' for a hashed `dev_fraction` of keys, else 'train' (salted: independent of split_of)."""
  bucket = int.from_bytes(hashlib.md5(f'finetune-dev/{key}'.encode('utf-8')).digest()[:8],
                          'little') % 10_000
  return 'dev' if bucket < dev_fraction * 10_000 else 'train'


def _decode(value):
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.ndarray) and value.dtype.kind in 'OS':
    return [_decode(v) for v in value]
  return value


def read_records(builder, split: str) -> list[dict]:
  """All records of a TFDS split as dicts of Python values (bytes decoded)."""
  source = builder.as_data_source(split=split)
  records = source.__getitems__(range(len(source)))
  return [{k: (({kk: _decode(vv) for kk, vv in v.items()}) if isinstance(v, dict) else _decode(v))
           for k, v in r.items()} for r in records]


def carve_dev(records: list[dict], key: str, dev_fraction: float) -> dict[str, list[dict]]:
  """{'train': ..., 'dev': ...} by the hash of each record's `key` field."""
  result = {'train': [], 'dev': []}
  for record in records:
    result[dev_split_of(str(record[key]), dev_fraction)].append(record)
  if not result['dev'] or not result['train']:
    raise ValueError(f'dev_fraction={dev_fraction} leaves an empty fine-tuning train or dev split '
                     f'of {len(records)} records: choose a fraction in (0, 1).')
  return result


def _no_topics(data_config) -> ConfigError:
  return ConfigError(f'config.data.dataset={data_config.dataset!r} has no topic labels: the '
                     "topic task needs 'wiki_offline/en' (or /fr, /es).")


def topic_records(data_config, dev_fraction: float) -> tuple[dict[str, list[dict]], list[str]]:
  """{'train', 'dev', 'test'} record lists of the embedded Wikipedia topic task, and topic names."""
  builder = corpus.get_builder(data_config)
  names = corpus.topic_names(builder)
  if names is None:
    raise _no_topics(data_config)
  splits = carve_dev(read_records(builder, 'train'), 'title', dev_fraction)
  splits['test'] = read_records(builder, 'test')
  return splits, names


def catalog_task(task: str) -> tuple[str, str, str, str] | None:
  """(TFDS name, record key of the dev carve, evaluation split, text feature) of a task read from
  a prepared TFDS dataset; None for 'topic'. An unknown task raises ConfigError."""
  if task == 'topic':
    return None
  if task.startswith('glue/'):
    glue_name = task.partition('/')[2]
    if glue_name not in GLUE:
      raise ConfigError(f'config.task={task!r}: supported GLUE tasks are '
                        f'{", ".join("glue/" + n for n in GLUE)} (stsb is a regression).')
    fields, eval_split = GLUE[glue_name]
    return task, 'idx', eval_split, fields[0]
  if task == 'conll2003':
    return 'conll2003', 'id', 'test', 'tokens'
  if task == 'squad':
    return 'squad', 'title', 'validation', 'context'
  raise ConfigError(f"config.task={task!r}: choose 'topic', 'glue/<name>', 'conll2003' or "
                    "'squad'.")


def catalog_task_builder(name: str, data_dir: str, eval_split: str, text_field: str):
  """The prepared builder of a catalog task; ConfigError when it is not prepared in data_dir
  or lacks the evaluation split."""
  builder = corpus.catalog_builder(name, data_dir, text_field)
  if eval_split not in builder.info.splits:
    raise ConfigError(f'{name} in {builder.data_dir} has no {eval_split!r} split; it has '
                      f'{", ".join(builder.info.splits)}.')
  return builder


def check_task(config) -> None:
  """Raises ConfigError, reading no record, when config.task cannot be read: an unknown task,
  the topic task on a corpus without topic labels, a catalog task not prepared in
  config.data.data_dir. (encoders/data/validate.py calls it at start.)"""
  data = config.data
  source = catalog_task(config.task)
  if source is None:
    if data.dataset == 'text_files' or (
        corpus.is_catalog(data.dataset) and corpus.topic_names(corpus.catalog_builder(
            data.dataset, corpus.data_dir_of(data), data.text_field)) is None):
      raise _no_topics(data)
    return
  name, _, eval_split, text_field = source
  catalog_task_builder(name, data.data_dir, eval_split, text_field)


def catalog_records(task: str, data_dir: str, dev_fraction: float
                    ) -> tuple[dict[str, list[dict]], object]:
  """{'train', 'dev', 'test'} records of a catalog task (catalog_task), and its builder."""
  name, key, eval_split, text_field = catalog_task(task)
  builder = catalog_task_builder(name, data_dir, eval_split, text_field)
  splits = carve_dev(read_records(builder, 'train'), key, dev_fraction)
  splits['test'] = read_records(builder, eval_split)
  return splits, builder


def build_task(config, tokenizer, pair_types: bool) -> Task:
  """The Task of `config.task` ('topic', 'glue/<name>', 'conll2003', 'squad') from config.data."""
  data = config.data
  task = config.task
  catalog_task(task)  # An unknown task raises ConfigError naming it.
  common = dict(tokenizer=tokenizer, max_length=data.max_length, doc_stride=data.doc_stride)

  def limit(records, split, label_key=None):
    records = records[:data.max_examples or None]
    if split != 'train':
      return records
    records = records[:data.max_train_examples or None]
    if data.get('long_tail_ratio', 0) and label_key is not None:
      keep = imbalance.long_tailed([r[label_key] for r in records], data.long_tail_ratio, config.seed)
      records = [records[i] for i in keep]
    return records

  if task == 'topic':
    splits, names = topic_records(data, data.dev_fraction)
    made = {}
    for s, recs in splits.items():
      recs = limit(recs, s, 'topic')
      made[s] = classification_split([r['text'] for r in recs], [r['topic'] for r in recs],
                                     max_windows=data.max_windows, **common)
    return Task('classification', names, made)
  if task.startswith('glue/'):
    splits, builder = catalog_records(task, data.data_dir, data.dev_fraction)
    fields, _ = GLUE[task.partition('/')[2]]
    names = list(builder.info.features['label'].names)
    made = {}
    for s, recs in splits.items():
      recs = limit(recs, s, 'label')
      made[s] = classification_split(
          [r[fields[0]] for r in recs], [r['label'] for r in recs], max_windows=1,
          texts_b=[r[fields[1]] for r in recs] if len(fields) > 1 else None,
          pair_types=pair_types, **common)
    return Task('classification', names, made)
  if task == 'conll2003':
    splits, builder = catalog_records(task, data.data_dir, data.dev_fraction)
    names = list(builder.info.features['ner'].feature.names)
    made = {s: token_classification_split([r['tokens'] for r in limit(recs, s)],
                                          [r['ner'] for r in limit(recs, s)], **common)
            for s, recs in splits.items()}
    return Task('token_classification', names, made)
  assert task == 'squad', task
  splits, _ = catalog_records(task, data.data_dir, data.dev_fraction)
  made = {}
  for s, recs in splits.items():
    recs = limit(recs, s)
    answers = [list(zip(r['answers']['text'], map(int, r['answers']['answer_start'])))
               for r in recs]
    made[s] = qa_split([r['question'] for r in recs], [r['context'] for r in recs], answers,
                       max_query_length=data.max_query_length, pair_types=pair_types, **common)
  return Task('qa', None, made)
