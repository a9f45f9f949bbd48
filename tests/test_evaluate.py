"""The offline GLUE-style suite (encoders/data/suite.py, encoders/adaptation/suite.py,
experiments/evaluate.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import optax
import pytest
import transformers

from encoders.adaptation import suite
from encoders.analysis import probing
from encoders.data import corpus, finetune_data, pairs, suite as suite_data
from encoders.data import tokenizer as tokenizer_lib

ALBERT = dict(title='Albert Einstein (physicist)', topic='People', description='German physicist',
              extract='Albert Einstein was born in Ulm. Later, Einstein moved to Bern.')
BIZET = dict(title='Carmen', topic='People', description='1875 opera by Georges Bizet',
             extract='Carmen is an opera in four acts by the French composer Georges Bizet.')


@pytest.fixture(scope='module')
def splits():
  return suite_data.article_splits()


@pytest.fixture(scope='module')
def tokenizer(splits):
  texts = [a['extract'] for a in splits['train'][::40]] + [ALBERT['extract'], BIZET['extract']]
  return tokenizer_lib.train('wordpiece', texts, 600, lowercase=True)


def test_splits_are_disjoint_by_title_and_hold_no_pretraining_validation_or_test_article(splits):
  titles = {name: {a['title'] for a in articles} for name, articles in splits.items()}
  assert not titles['train'] & titles['dev'] and not titles['train'] & titles['test']
  assert not titles['dev'] & titles['test']
  for name, articles in splits.items():
    expected = 'test' if name == 'test' else 'train'  # Pretraining's own split of each article.
    assert {corpus.split_of(a['title']) for a in articles} == {expected}
  # Every English article with a summary that pretraining does not validate on is in one split.
  usable = [a for a in corpus.wiki_offline_articles('en').values() if a['extract'].strip()
            and corpus.split_of(a['title']) != 'validation']
  assert sum(len(t) for t in titles.values()) == len(usable)
  assert 0.07 < len(titles['dev']) / (len(titles['train']) + len(titles['dev'])) < 0.13
  # Capped splits are subsets, spread over the topic-ordered split.
  capped = suite_data.article_splits(max_train=120, max_eval=30)
  assert len(capped['train']) == 120 and len({a['topic'] for a in capped['train']}) == 12
  assert {a['title'] for a in capped['test']} <= titles['test']


def test_mention_tags_follow_the_title_mentions_in_the_text():
  words, tags = suite_data.mention_tags(ALBERT['title'], ALBERT['extract'])
  assert words == ['Albert', 'Einstein', 'was', 'born', 'in', 'Ulm', '.', 'Later', ',', 'Einstein',
                   'moved', 'to', 'Bern', '.']
  names = [suite_data.TAGS[t] for t in tags]
  assert names == ['B-TITLE', 'I-TITLE'] + ['O'] * 7 + ['B-TITLE'] + ['O'] * 4


def test_token_rows_tag_the_first_sub_token_of_each_mention_word(tokenizer):
  task = suite_data.build_task('mention', {'test': [ALBERT]}, tokenizer, 64)
  split = task.splits['test']
  tagged = np.flatnonzero(split.rows['label_weights'][0])
  ids = split.rows['input_ids'][0]
  tokens = [tokenizer.id_to_token(t) for t in ids]
  # The first sub-token of every word carries its tag; its text starts the word in lower case.
  words, tags = suite_data.mention_tags(ALBERT['title'], ALBERT['extract'])
  assert len(tagged) == len(words)
  for position, word, tag in zip(tagged, words, tags):
    assert word.lower().startswith(tokens[position].removeprefix('##'))
    assert split.rows['labels'][0, position] == tag


def test_qa_answer_is_the_first_title_mention_at_its_character_position(tokenizer):
  questions, contexts, answers = suite_data.qa_records([ALBERT, BIZET])
  assert questions == [ALBERT['description'], BIZET['description']]
  for context, ((text, start),), article in zip(contexts, answers, [ALBERT, BIZET]):
    assert context[start:start + len(text)] == text
    # The article's own summary holds it at its first mention, the other one is the distractor.
    own = context.index(article['extract'])
    assert start - own == article['extract'].lower().index(text.lower())
    both = ALBERT['extract'] + ' ' + BIZET['extract']
    assert sorted(context.split(' ')) == sorted(both.split(' '))
  assert [a[0][0] for a in answers] == ['Albert Einstein', 'Carmen']
  # In the rows, the answer tokens' character offsets cover exactly the answer.
  split = finetune_data.qa_split(questions, contexts, answers, tokenizer, 24, 8, 8)
  found = 0
  for row in range(len(split)):
    start, end = split.rows['start_positions'][row], split.rows['end_positions'][row]
    if start:
      i = split.example_index[row]
      offsets = split.rows['offsets'][row]
      assert contexts[i][offsets[start, 0]:offsets[end, 1]] == answers[i][0][0]
      found += 1
  assert found >= 2 and len(split) > 2  # Contexts longer than a row: several windows.


def test_pair_negatives_are_other_descriptions_of_the_same_topic(splits):
  articles = splits['test']
  descriptions, summaries, labels = suite_data.pair_records(articles)
  described = {a['extract']: a for a in articles if (a.get('description') or '').strip()}
  assert 0.4 < labels.mean() < 0.6
  for description, summary, label in zip(descriptions, summaries, labels):
    article = described[summary]
    assert (description == article['description']) == bool(label)
    if not label:
      topics = {a['topic'] for a in described.values() if a['description'] == description}
      assert article['topic'] in topics


def test_summary_is_the_mean_and_sample_std_over_seeds_and_tasks():
  runs = [dict(seed=s, tasks={'topic': {'macro_f1': f}, 'qa': {'f1': q}})
          for s, (f, q) in enumerate([(0.5, 40.0), (0.6, 50.0), (0.7, 90.0)])]
  summary = suite.summarize(runs, ['topic', 'qa'])
  assert summary['topic']['mean'] == pytest.approx(60.0)
  assert summary['topic']['std'] == pytest.approx(10.0)  # sqrt(((-10)^2 + 0 + 10^2) / 2)
  assert summary['qa']['mean'] == pytest.approx(60.0)
  assert summary['qa']['std'] == pytest.approx(np.sqrt((20 ** 2 + 10 ** 2 + 30 ** 2) / 2))
  # Per seed macro: 45, 55, 80 -> mean 60, std sqrt((15^2 + 5^2 + 20^2) / 2).
  assert summary['macro']['values'] == pytest.approx([45.0, 55.0, 80.0])
  assert summary['macro']['mean'] == pytest.approx(60.0)
  assert summary['macro']['std'] == pytest.approx(np.sqrt((225 + 25 + 400) / 2))


def _planted_split(labels: np.ndarray) -> finetune_data.Split:
  example_index = np.arange(len(labels), dtype=np.int32)
  return finetune_data.Split(dict(label=labels), example_index, len(labels), list(labels))


@pytest.mark.parametrize('shuffled', [False, True])
def test_probe_finds_a_planted_label_and_stays_at_chance_on_shuffled_ones(shuffled):
  rng = np.random.default_rng(0)
  labels = {s: rng.integers(0, 4, 800).astype(np.int32) for s in ('train', 'test')}
  features = {s: rng.normal(size=(800, 16)).astype(np.float32) for s in labels}
  for s in labels:
    features[s][:, :4] += 3 * np.eye(4)[labels[s]]  # The label, in four dimensions.
  if shuffled:
    labels['train'] = rng.permutation(labels['train'])
  task = finetune_data.Task('classification', list('abcd'),
                            {s: _planted_split(labels[s]) for s in labels})
  by_split = {id(task.splits[s]): features[s] for s in labels}
  result = suite.probe_task(lambda split, pooled: by_split[id(split)], task, seed=0)
  if shuffled:
    assert abs(result['accuracy'] - 0.25) < 0.07
  else:
    assert result['accuracy'] > 0.95 and result['macro_f1'] > 0.95


def test_seeds_change_the_head_not_the_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  weights = np.ones(300, np.float32)
  fit = lambda seed: suite.fit_head(suite.classification_loss, [x, y, weights], 2, seed, 32, 50)
  assert np.array_equal(fit(0)[0], fit(0)[0])
  assert not np.array_equal(fit(0)[0], fit(1)[0])
  assert suite_data.pair_records(suite_data.article_splits(0, 40)['test'])[0] == \
      suite_data.pair_records(suite_data.article_splits(0, 40)['test'])[0]


def _reference_fit(x, labels, weights, num_classes, seed, batch_size, steps):
  """fit_head(classification_loss, ...) as a Python loop of optax Adam steps on numpy gradients
  of the weighted cross-entropy plus L2, with fit_head's draws: the kernel, then permutations."""
  rng = np.random.default_rng(seed)
  kernel = rng.normal(0, 0.01, (x.shape[1], num_classes)).astype(np.float32)
  params = (kernel, np.zeros(num_classes, np.float32))
  order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-steps * batch_size // len(x)))])
  optimizer = optax.adam(suite.PROBE_LEARNING_RATE)
  state = optimizer.init(params)
  for step in range(steps):
    chosen = order[step * batch_size:(step + 1) * batch_size]
    logits = x[chosen] @ params[0] + params[1]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    row_weights = weights[chosen] / weights[chosen].sum()
    logit_grads = row_weights[:, None] * (probabilities - np.eye(num_classes)[labels[chosen]])
    grads = (x[chosen].T @ logit_grads + 2 * suite.PROBE_L2 * params[0], logit_grads.sum(0))
    updates, state = optimizer.update(grads, state)
    params = tuple(np.asarray(p) for p in optax.apply_updates(params, updates))
  return params


def test_fit_head_trains_as_a_loop_of_adam_steps_on_the_seeds_minibatches():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 6)).astype(np.float32)
  labels = rng.integers(0, 3, 50).astype(np.int32)
  weights = rng.uniform(0.5, 2.0, 50).astype(np.float32)
  # 16-row minibatches over 50 rows for 20 steps: 7 epochs, batches across epoch boundaries.
  kernel, bias = suite.fit_head(suite.classification_loss, [x, labels, weights], 3, seed=4,
                                batch_size=16, steps=20)
  expected_kernel, expected_bias = _reference_fit(x, labels, weights, 3, 4, 16, 20)
  assert np.abs(expected_kernel).max() > 0.03  # It moved well past the initial std of 0.01.
  np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bias, expected_bias, rtol=1e-4, atol=1e-6)


def test_standardizer_scales_any_features_by_the_training_statistics():
  rng = np.random.default_rng(0)
  train = rng.normal(3.0, 2.0, size=(500, 4))
  scale = probing.standardizer(train)
  np.testing.assert_allclose(scale(train).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(scale(train).std(0), 1, atol=1e-5)
  states = rng.normal(size=(2, 5, 4))  # Token states [rows, L, d] scale per feature too.
  assert scale(states).dtype == np.float32
  np.testing.assert_allclose(scale(states), (states - train.mean(0)) / train.std(0), rtol=1e-4)


def test_topic_longtail_reuses_the_frozen_features_of_topics_rows(tokenizer, monkeypatch):
  splits = suite_data.article_splits(max_train=120, max_eval=30)
  topic, longtail = (suite_data.build_task(name, splits, tokenizer, 64)
                     for name in ('topic', 'topic_longtail'))
  computed = []

  def fake_row_features(subject, rows):
    computed.append(len(rows['input_ids']))
    return rows['input_ids'][:, :8].astype(np.float32) + rows['segment_ids'].sum(1, keepdims=True)

  monkeypatch.setattr(suite, 'row_features', fake_row_features)
  features = suite.FrozenFeatures(subject=None)
  for split in topic.splits.values():
    features(split, True)
  assert sum(computed) == sum(len(split) for split in topic.splits.values())
  assert len(longtail.splits['train']) < len(topic.splits['train'])  # A subsample.
  computed.clear()
  for name, split in longtail.splits.items():
    np.testing.assert_array_equal(features(split, True),
                                  fake_row_features(None, split.rows), err_msg=name)
  assert computed == [len(split) for split in longtail.splits.values()]  # Only the checks above.


@pytest.fixture(scope='module')
def tiny_hf_dir(tmp_path_factory, tokenizer):
  """A random 2-layer BERT (hidden 32) with the test tokenizer, as an HF directory."""
  path = tmp_path_factory.mktemp('tiny_bert')
  config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128,
                                   pad_token_id=tokenizer.pad_id)
  transformers.BertModel(config).save_pretrained(str(path), safe_serialization=True)
  tokenizer.save(str(path))
  return str(path)


def test_the_command_runs_the_suite_and_compares_runs(tiny_hf_dir, tmp_path):
  out = tmp_path / 'random'
  command = [sys.executable, '-m', 'experiments.evaluate', '--init_from=none',
             f'--shape_from={tiny_hf_dir}', '--seeds=2', '--max_train=40', '--max_eval=24',
             '--max_length=64', f'--out={out}']
  subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                 capture_output=True)
  results = json.loads((out / 'results.json').read_text())
  assert [r['mode'] for r in results] == ['probe']
  summary = results[0]['summary']
  assert set(summary) == set(suite_data.TASKS) | {'macro'}
  assert all(0 <= summary[t]['mean'] <= 100 for t in summary)
  assert len(summary['macro']['values']) == 2
  table = (out / 'results.md').read_text()
  assert 'macro average' in table and table.count('| probe |') == 1
  assert (out / 'results.png').stat().st_size > 0
  header, row = (out / 'results.csv').read_text().splitlines()
  assert header.split(',')[-2:] == ['macro_mean', 'macro_std']
  compared = tmp_path / 'compared'
  subprocess.run([sys.executable, '-m', 'experiments.evaluate', f'--compare={out}',
                  f'--compare={out}', f'--out={compared}'], check=True, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  assert (compared / 'results.md').read_text().count('| probe |') == 2


def test_versus_random_init_adds_the_same_architecture_at_random_init(tiny_hf_dir, tmp_path):
  out = tmp_path / 'versus'
  command = [sys.executable, '-m', 'experiments.evaluate', f'--init_from={tiny_hf_dir}',
             '--versus_random_init', '--seeds=1', '--max_train=40', '--max_eval=24',
             '--max_length=64', '--tasks=topic,search', f'--out={out}']
  subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                 capture_output=True)
  trained, random = json.loads((out / 'results.json').read_text())
  assert (trained['init_from'], trained['shape_from']) == (tiny_hf_dir, None)
  assert (random['init_from'], random['shape_from']) == ('none', tiny_hf_dir)
  # Different weights, so different retrieval scores (search has no trained head to blur them).
  assert trained['summary']['search']['mean'] != random['summary']['search']['mean']
  assert (out / 'results.md').read_text().count('| probe |') == 2


def test_finetune_mode_trains_through_the_fine_tuning_loop(tiny_hf_dir, tmp_path):
  config = suite.finetune_config('none', tiny_hf_dir, 'topic_longtail', 1, 1e-3, 64, 1000)
  assert (config.init_from, config.reinit, config.seed) == (tiny_hf_dir, True, 1)
  assert config.head.pooling == 'mean' and config.head.class_weights == 'balanced'
  assert config.train.num_epochs == 5.0  # FINETUNE_MIN_ROWS rows from 1,000.
  splits = suite_data.article_splits(max_train=24, max_eval=12)
  result = suite.run('none', 'finetune', 1, ['pair'], splits, tiny_hf_dir, max_length=64,
                     workdir=str(tmp_path))
  accuracy = result['runs'][0]['tasks']['pair']['accuracy']
  assert 0.0 <= accuracy <= 1.0
  assert result['summary']['macro']['mean'] == pytest.approx(100 * accuracy)
  assert os.path.exists(tmp_path / 'pair_seed0' / 'results.json')
