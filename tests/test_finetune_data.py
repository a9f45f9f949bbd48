"""Fine-tuning rows: windows cover every token with the right offsets; the topic split is clean."""
import numpy as np
import pytest

from encoders.configs import finetune as finetune_configs
from encoders.data import corpus, finetune_data
from encoders.data import tokenizer as tokenizer_lib


@pytest.fixture(scope='module')
def tokenizer(minilm_dir):
  return tokenizer_lib.load(minilm_dir)


@pytest.mark.parametrize('num_tokens,max_tokens,stride', [
    (0, 5, 2), (3, 5, 2), (5, 5, 5), (6, 5, 5), (17, 5, 2), (17, 5, 3), (100, 16, 16), (9, 4, 1)])
def test_windows_cover_every_token_in_order(num_tokens, max_tokens, stride):
  spans = finetune_data.windows(num_tokens, max_tokens, stride)
  covered = np.zeros(num_tokens, int)
  for i, (start, end) in enumerate(spans):
    assert 0 < end - start <= max_tokens or num_tokens == 0
    assert start == i * stride
    covered[start:end] += 1
  assert (covered >= 1).all()
  assert spans[-1][1] == num_tokens
  assert len(spans) == 1 or spans[-2][1] < num_tokens  # No window past the one that reaches the end.


def test_windows_reject_stride_longer_than_window():
  with pytest.raises(ValueError, match='doc_stride'):
    finetune_data.windows(10, 4, 5)


def test_max_context_matches_bert_definition():
  spans = finetune_data.windows(23, 8, 3)
  owner = finetune_data.max_context(spans, 23)
  for token in range(23):
    best_score, best_window = None, None
    for w, (start, end) in enumerate(spans):  # BERT's _check_is_max_context, first best wins.
      if not start <= token < end:
        continue
      score = min(token - start, end - 1 - token) + 0.01 * (end - start)
      if best_score is None or score > best_score:
        best_score, best_window = score, w
    assert owner[token] == best_window


def test_classification_windows_reassemble_the_text(tokenizer):
  text = ' '.join(f'word{i} alpha beta' for i in range(40))
  ids = tokenizer.backend.encode(text, add_special_tokens=False).ids
  split = finetune_data.classification_split([text, 'short one'], [3, 1], tokenizer,
                                             max_length=16, doc_stride=6)
  rows = split.rows
  first = split.example_index == 0
  spans = finetune_data.windows(len(ids), 14, 6)
  assert first.sum() == len(spans)
  for row, (start, end) in zip(np.nonzero(first)[0], spans):
    length = rows['segment_ids'][row].sum()
    assert rows['input_ids'][row, 0] == tokenizer.cls_id
    assert rows['input_ids'][row, length - 1] == tokenizer.sep_id
    np.testing.assert_array_equal(rows['input_ids'][row, 1:length - 1], ids[start:end])
    assert (rows['input_ids'][row, length:] == tokenizer.pad_id).all()
    np.testing.assert_array_equal(rows['position_ids'][row, :length], np.arange(length))
  assert (rows['label'][first] == 3).all() and (rows['label'][~first] == 1).all()
  capped = finetune_data.classification_split([text], [0], tokenizer, 16, 6, max_windows=2)
  assert len(capped) == 2


def test_pairs_truncate_longest_first_with_token_types(tokenizer):
  a, b = 'one two three four five six seven eight nine ten', 'red green'
  split = finetune_data.classification_split([a], [0], tokenizer, 10, 10, texts_b=[b])
  row, types = split.rows['input_ids'][0], split.rows['token_type_ids'][0]
  ids_b = tokenizer.backend.encode(b, add_special_tokens=False).ids
  ids_a = tokenizer.backend.encode(a, add_special_tokens=False).ids
  keep_a = 10 - 3 - len(ids_b)
  expected = [tokenizer.cls_id, *ids_a[:keep_a], tokenizer.sep_id, *ids_b, tokenizer.sep_id]
  np.testing.assert_array_equal(row, expected)
  np.testing.assert_array_equal(types, [0] * (keep_a + 2) + [1] * (len(ids_b) + 1))


def test_token_classification_labels_first_subtokens_and_scores_each_word_once(tokenizer):
  words = [f'tok{i}' if i % 3 else 'antidisestablishmentarianism' for i in range(30)]
  tags = [i % 5 for i in range(30)]
  split = finetune_data.token_classification_split([words, ['a', 'b']], [tags, [1, 2]], tokenizer,
                                                   max_length=12, doc_stride=4)
  encoding = tokenizer.backend.encode(words, is_pretokenized=True, add_special_tokens=False)
  first_token = {}
  for t, w in enumerate(encoding.word_ids):
    first_token.setdefault(w, t)
  rows = np.nonzero(split.example_index == 0)[0]
  spans = finetune_data.windows(len(encoding.ids), 10, 4)
  scored = []
  for row, (start, end) in zip(rows, spans):
    for t in range(start, end):
      position = t - start + 1
      is_first = first_token[encoding.word_ids[t]] == t
      assert split.rows['label_weights'][row, position] == float(is_first)
      if is_first:
        assert split.rows['labels'][row, position] == tags[encoding.word_ids[t]]
    scored += [w for w in split.rows['word_index'][row] if w >= 0]
  assert sorted(scored) == list(range(30))  # Every word scored in exactly one window.


def test_qa_windows_locate_the_answer_by_offsets(tokenizer):
  context = ' '.join(f'filler{i}' for i in range(30)) + ' The capital is Paris indeed. ' + \
      ' '.join(f'more{i}' for i in range(30))
  answer = 'Paris'
  start_char = context.index(answer)
  split = finetune_data.qa_split(['What is the capital?', 'Unanswerable?'], [context, 'tiny'],
                                 [[(answer, start_char)], []], tokenizer, max_length=24,
                                 doc_stride=5, max_query_length=8)
  rows = split.rows
  context_ids = tokenizer.backend.encode(context, add_special_tokens=False).ids
  seen = []
  found = 0
  for row in np.nonzero(split.example_index == 0)[0]:
    offsets = rows['offsets'][row]
    inside = offsets[:, 0] >= 0
    seen += [tuple(o) for o in offsets[inside]]
    assert (rows['token_type_ids'][row][inside] == 1).all()
    s, e = rows['start_positions'][row], rows['end_positions'][row]
    if s:
      found += 1
      assert context[offsets[s, 0]:offsets[e, 1]] == answer
    else:
      assert e == 0
  assert found >= 1
  assert len(set(seen)) == len(context_ids)  # Every context token is in some window.
  assert (rows['start_positions'][split.example_index == 1] == 0).all()
  assert split.references == [[answer], []]


def test_topic_split_never_overlaps_pretraining_validation():
  config = finetune_configs.get_config('topic')
  splits, names = finetune_data.topic_records(config.data, config.data.dev_fraction)
  assert len(names) == 12
  titles = {s: {r['title'] for r in records} for s, records in splits.items()}
  builder = corpus.get_builder(config.data)
  validation = {r['title'] for r in finetune_data.read_records(builder, 'validation')}
  assert not (titles['train'] | titles['dev'] | titles['test']) & validation
  assert not titles['train'] & titles['dev'] and not titles['dev'] & titles['test']
  assert all(corpus.split_of(t) == 'train' for t in titles['train'] | titles['dev'])
  assert all(corpus.split_of(t) == 'test' for t in titles['test'])
  fraction = len(titles['dev']) / (len(titles['dev']) + len(titles['train']))
  assert 0.08 < fraction < 0.12


def test_max_train_examples_limits_only_the_training_records(tokenizer):
  config = finetune_configs.get_config('topic')
  config.data.update(max_length=32, max_windows=1, max_examples=60, max_train_examples=20)
  task = finetune_data.build_task(config, tokenizer, pair_types=False)
  assert {s: split.num_examples for s, split in task.splits.items()} == {
      'train': 20, 'dev': 60, 'test': 60}


def test_glue_without_prepared_data_names_the_fix(tmp_path, tokenizer):
  config = finetune_configs.get_config('task=glue/sst2')
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match='not prepared|Unknown dataset'):
    finetune_data.build_task(config, tokenizer, pair_types=True)
  config.task = 'glue/stsb'
  with pytest.raises(ValueError, match='regression'):
    finetune_data.build_task(config, tokenizer, pair_types=True)
