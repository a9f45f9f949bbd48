"""encoders/data/pairs.py on the embedded corpus: splits by title hash, the three kinds of pair,
topic hard negatives, and tokenization against transformers' tokenizer of all-MiniLM-L6-v2."""
import hashlib

import numpy as np
import pytest
import transformers

from encoders.data import corpus, pairs
from experiments import embed


def md5_split(title: str) -> str:
  """corpus.split_of from first principles: the first 8 md5 bytes, little-endian, mod 100: 90/5/5."""
  bucket = int.from_bytes(hashlib.md5(title.encode()).digest()[:8], 'little') % 100
  return 'train' if bucket < 90 else 'validation' if bucket < 95 else 'test'


@pytest.mark.parametrize('kind', pairs.PAIR_KINDS)
def test_splits_share_no_article_and_follow_the_title_hash(kind):
  titles = {split: pairs.make_pairs(kind, split).titles for split in corpus.SPLITS}
  for split, split_titles in titles.items():
    assert split_titles and all(md5_split(t) == split for t in split_titles)
  assert not set(titles['train']) & (set(titles['validation']) | set(titles['test']))
  assert not set(titles['validation']) & set(titles['test'])
  everything = [a for a in corpus.wiki_offline_articles('en').values()]
  expected_test = [a['title'] for a in everything if md5_split(a['title']) == 'test'
                   and (kind != 'description' or a.get('description'))]
  if kind != 'sentences':  # Every test article with a query is there, once.
    assert sorted(titles['test']) == sorted(expected_test)


def test_each_kind_pairs_parts_of_one_article():
  articles = {a['title']: a for a in corpus.wiki_offline_articles('en').values()}
  described = pairs.make_pairs('description', 'validation')
  for query, document, title in zip(described.queries, described.documents, described.titles):
    assert query == articles[title]['description'].strip() and document == articles[title]['extract']
  titled = pairs.make_pairs('title', 'validation')
  assert titled.queries == titled.titles
  assert len(titled) == len(pairs.articles('validation'))  # Every article has a title.
  two = pairs.make_pairs('sentences', 'validation', seed=3)
  for query, document, title in zip(two.queries, two.documents, two.titles):
    assert query != document and query in articles[title]['extract'] and document in articles[title]['extract']
  assert two.queries != pairs.make_pairs('sentences', 'validation', seed=4).queries  # The seed draws.


def test_sentences_cut_at_sentence_ends_only():
  text = 'Paris is the capital of France. It has 2.1 million people! Is it big? "Yes," they say. (It is.)'
  assert pairs.sentences(text) == ['Paris is the capital of France.', 'It has 2.1 million people!',
                                   'Is it big?', '"Yes," they say.', '(It is.)']


def test_topic_negatives_are_other_articles_of_the_same_topic_and_split():
  articles = {a['title']: a for a in corpus.wiki_offline_articles('en').values()}
  by_extract = {a['extract']: a for a in articles.values()}
  held_out = pairs.make_pairs('description', 'test', hard_negatives='topic', num_negatives=2)
  for title, negatives in zip(held_out.titles, held_out.negatives):
    assert len(negatives) == 2 and len(set(negatives)) == 2
    for text in negatives:
      negative = by_extract[text]
      assert negative['title'] != title and negative['topic'] == articles[title]['topic']
      assert md5_split(negative['title']) == 'test'
  assert all(n == [] for n in pairs.make_pairs('description', 'test').negatives)
  with pytest.raises(ValueError, match='too few'):
    pairs.make_pairs('title', 'test', hard_negatives='topic', num_negatives=500)


def test_pair_arrays_match_the_reference_tokenizer(minilm_dir):
  held_out = pairs.make_pairs('description', 'test', hard_negatives='topic')
  held_out = pairs.Pairs(held_out.queries[:6], held_out.documents[:6], held_out.titles[:6],
                         held_out.negatives[:6])
  backend = embed.load_tokenizer(minilm_dir, 512)
  arrays = pairs.pair_arrays(held_out, backend, 16, 64, pad_id=0)
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  expected = {
      'query': reference(held_out.queries, truncation=True, max_length=16, padding='max_length'),
      'document': reference(held_out.documents, truncation=True, max_length=64, padding='max_length'),
      'negative': reference([n[0] for n in held_out.negatives], truncation=True, max_length=64,
                            padding='max_length')}
  for role, encoded in expected.items():
    ids, segments = arrays[f'{role}_input_ids'], arrays[f'{role}_segment_ids']
    if role == 'negative':
      assert ids.shape == (6, 1, 64)
      ids, segments = ids[:, 0], segments[:, 0]
    np.testing.assert_array_equal(ids, encoded['input_ids'])
    np.testing.assert_array_equal(segments, encoded['attention_mask'])
  assert arrays['document_segment_ids'].sum(axis=1).max() == 64  # Some extracts fill the row.


def test_unknown_kinds_raise():
  with pytest.raises(ValueError, match='pairs='):
    pairs.make_pairs('abstract', 'test')
  with pytest.raises(ValueError, match='hard_negatives='):
    pairs.make_pairs('title', 'test', hard_negatives='bm25')
  with pytest.raises(ValueError, match='split='):
    pairs.articles('dev')
