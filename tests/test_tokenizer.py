"""Tokenizers: HF parity on the MiniLM checkpoint, trained kinds, whole-word boundaries."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tokenizers
import transformers

from encoders import hf_interop
from encoders.configs.data import get_data_config
from encoders.data import corpus
from encoders.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = hf_interop.installed_minilm_dir()
SENTENCES = [
    'Hello, world! The quick brown fox jumps over the lazy dog.',
    'Ça va très bien à Montréal; él está en España, mañana.',
    '東京は日本の首都です。北京 and 서울 too.',
    'Emoji 😀👍🏽 and symbols © ™ — “quoted” text… 3.14%',
    "Don't stop: unbelievable, re-enter, naïve café coöperation.",
    ' '.join(['A long sentence about tokenization and transformers'] * 60),
]
# Letters only (no digits, no CJK): a run of letters is never cut into two words.
WORDS_TEXTS = [
    'Hello, world! The quick brown fox jumps over the lazy dog.',
    "Ça va très bien à Montréal; él está en España, mañana. Don't re-enter, naïve café.",
    'Unbelievably, internationalization hyperparameters 42x faster 😀 than tokenizers.',
]


def _articles(n):
  return [a['extract'] for a in list(corpus.wiki_offline_articles('en').values())[:n]]


@pytest.fixture(scope='module')
def trained():
  texts = _articles(400) + WORDS_TEXTS
  return {kind: tokenizer_lib.train(kind, texts, 800, lowercase=kind != 'bpe')
          for kind in tokenizer_lib.KINDS}


@pytest.mark.parametrize('from_vocab_txt', [False, True])
def test_minilm_matches_transformers(tmp_path, from_vocab_txt):
  path = MINILM
  if from_vocab_txt:
    shutil.copy(os.path.join(MINILM, 'vocab.txt'), tmp_path)
    path = str(tmp_path)
  ours = tokenizer_lib.load(path)
  slow = transformers.BertTokenizer(os.path.join(MINILM, 'vocab.txt'), do_lower_case=True)
  fast = transformers.AutoTokenizer.from_pretrained(MINILM)
  for sentence, (ids, _) in zip(SENTENCES, ours.encode_batch(SENTENCES)):
    expected = slow.encode(sentence, add_special_tokens=False)
    assert ids.tolist() == expected
    assert fast(sentence, add_special_tokens=False, truncation=False)['input_ids'] == expected
  assert len(ours.encode_batch(SENTENCES)[-1][0]) > 128  # No truncation.
  assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
      slow.pad_token_id, slow.unk_token_id, slow.cls_token_id, slow.sep_token_id,
      slow.mask_token_id)
  assert ours.vocab_size == slow.vocab_size == 30522
  assert ours.backend.encode('a b').ids == slow.encode('a b')  # [CLS] ... [SEP] template.
  ids = ours.encode_batch([SENTENCES[1]])[0][0]
  assert ours.decode(ids) == slow.decode(ids)
  assert ours.id_to_token(ids[0]) == slow.convert_ids_to_tokens(int(ids[0]))


def test_trained_special_tokens_and_templates(trained, tmp_path):
  expected = {'wordpiece': ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'],
              'bpe': ['<s>', '<pad>', '</s>', '<unk>', '<mask>'],
              'unigram': ['<pad>', '<unk>', '[CLS]', '[SEP]', '[MASK]']}
  for kind, tok in trained.items():
    assert [tok.id_to_token(i) for i in range(5)] == expected[kind]
    assert tok.vocab_size == 800
    tokens = tok.backend.encode('Hello world', 'Bye').tokens
    if kind == 'bpe':  # RoBERTa: <s> A </s></s> B </s>, no prefix space.
      assert tokens[0] == '<s>' and tokens[1] == 'H' and tokens[-1] == '</s>'
      assert tokens.count('</s>') == 3
    else:
      assert tokens[0] == '[CLS]' and tokens.count('[SEP]') == 2
    tok.save(str(tmp_path / kind))
    loaded = tokenizer_lib.load(str(tmp_path / kind))
    assert loaded.kind == kind and loaded.fingerprint == tok.fingerprint
    assert loaded.encode_batch(WORDS_TEXTS)[1][0].tolist() == tok.encode_batch(WORDS_TEXTS)[1][0].tolist()
  assert trained['bpe'].decode(trained['bpe'].encode_batch([SENTENCES[3]])[0][0]) == SENTENCES[3]
  assert trained['unigram'].backend.pre_tokenizer.pre_tokenize_str('a b')[0][0] == '▁a'


@pytest.mark.parametrize('kind', tokenizer_lib.KINDS)
def test_training_prints_nothing(kind, capfd):
  """stdout may be a job list (`ablate_* --mode=print > jobs.txt`): HF's progress bars wrote
  empty lines to it when it is not a terminal."""
  tokenizer_lib.train(kind, _articles(50), 300, True)
  out, _ = capfd.readouterr()
  assert out == ''


@pytest.mark.parametrize('kind', tokenizer_lib.KINDS + ('minilm',))
def test_whole_words_are_never_split(trained, kind):
  """Tokens of one run of letters share a word id; a word id never spans whitespace."""
  tok = tokenizer_lib.load(MINILM) if kind == 'minilm' else trained[kind]
  for text, (ids, word_ids) in zip(WORDS_TEXTS, tok.encode_batch(WORDS_TEXTS)):
    offsets = tok.backend.encode(text, add_special_tokens=False).offsets
    assert len(offsets) == len(ids) and (word_ids >= 0).all()
    assert (np.diff(word_ids) >= 0).all()
    for run in re.finditer(r'[^\W\d_]+', text):
      inside = {w for (a, b), w in zip(offsets, word_ids) if a < run.end() and b > run.start()}
      assert len(inside) == 1, (kind, run.group(), inside)
    for w in set(word_ids.tolist()):
      start = min(a for (a, _), v in zip(offsets, word_ids) if v == w)
      end = max(b for (_, b), v in zip(offsets, word_ids) if v == w)
      assert ' ' not in text[start:end].strip(), (kind, text[start:end])
  if kind in ('wordpiece', 'minilm'):  # BERT's own rule: '##' marks a continuation.
    ids, word_ids = tok.encode_batch(WORDS_TEXTS)[2]
    starts = np.concatenate([[True], word_ids[1:] != word_ids[:-1]])
    assert starts.tolist() == [not tok.id_to_token(i).startswith('##') for i in ids]


def test_get_tokenizer_trains_once_and_reuses(tmp_path, monkeypatch):
  (tmp_path / 'a.txt').write_text('\n\n'.join(_articles(200)))
  config = get_data_config(dataset='text_files', text_files=str(tmp_path / 'a.txt'),
                           text_files_split_by='paragraph', data_dir=str(tmp_path / 'tfds'),
                           tokenizer='unigram', vocab_size=500)
  with pytest.raises(ValueError, match='config.data.tokenizer='):
    tokenizer_lib.train('sentencepiece', ['a'], 10, True)
  first = tokenizer_lib.get_tokenizer(config, str(tmp_path / 'work'))
  assert first.kind == 'unigram' and first.vocab_size == 500
  monkeypatch.setattr(tokenizer_lib, 'train', lambda *a, **k: pytest.fail('trained twice'))
  again = tokenizer_lib.get_tokenizer(config, str(tmp_path / 'work'))
  assert again.fingerprint == first.fingerprint
  config.tokenizer = 'bpe'
  with pytest.raises(ValueError, match='is a unigram tokenizer'):
    tokenizer_lib.get_tokenizer(config, str(tmp_path / 'work'))
  config.tokenizer_path = str(tmp_path / 'nothing')
  with pytest.raises(ValueError, match='holds no tokenizer'):
    tokenizer_lib.get_tokenizer(config, None)


def test_roberta_files_match_transformers(trained, tmp_path):
  """vocab.json + merges.txt load as RoBERTa's byte-level BPE (reference: the Python tokenizer)."""
  trained['bpe'].backend.model.save(str(tmp_path))
  ours = tokenizer_lib.load(str(tmp_path))
  reference = transformers.RobertaTokenizer(str(tmp_path / 'vocab.json'),
                                            str(tmp_path / 'merges.txt'))
  assert ours.kind == 'bpe' and (ours.cls_id, ours.pad_id, ours.sep_id, ours.unk_id) == (
      reference.cls_token_id, reference.pad_token_id, reference.sep_token_id,
      reference.unk_token_id)
  for sentence, (ids, _) in zip(SENTENCES, ours.encode_batch(SENTENCES)):
    assert ids.tolist() == reference.encode(sentence, add_special_tokens=False)
    assert ids.tolist() == trained['bpe'].encode_batch([sentence])[0][0].tolist()
  assert ours.backend.encode('Hi there', 'Bye').ids == reference.encode('Hi there', 'Bye')


def _train_in_child(texts_file: str, out_dir: str) -> subprocess.Popen:
  """A fresh process trains each kind on the texts of `texts_file` (a JSON list) into out_dir."""
  code = ('import json, sys\nfrom encoders.data import tokenizer as t\n'
          'texts = json.load(open(sys.argv[1]))\n'
          'for k in t.KINDS:\n'
          '  t.train(k, texts, 800, lowercase=k != "bpe").save(f"{sys.argv[2]}/{k}")\n')
  return subprocess.Popen([sys.executable, '-c', code, texts_file, out_dir], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope='module')
def trained_in_two_processes(tmp_path_factory):
  """{kind: (tokenizer.json bytes of the first process, of the second)}."""
  folder = tmp_path_factory.mktemp('two_processes')
  texts_file = folder / 'texts.json'
  texts_file.write_text(json.dumps(_articles(400) + WORDS_TEXTS))
  children = [_train_in_child(str(texts_file), str(folder / str(i))) for i in range(2)]
  for child in children:
    output = child.communicate(timeout=300)[0]
    assert child.returncode == 0, output[-3000:]
  return {kind: tuple((folder / str(i) / kind / tokenizer_lib.FILENAME).read_bytes()
                      for i in range(2)) for kind in tokenizer_lib.KINDS}


# Rust hash maps are seeded per process, so the two trainings run in two processes. (HF's
# Unigram trainer failed here: it sums its EM statistics in hash-map order.)
@pytest.mark.parametrize('kind', tokenizer_lib.KINDS)
def test_training_is_the_same_in_two_processes(trained_in_two_processes, kind):
  first, second = trained_in_two_processes[kind]
  assert first == second
  added = tokenizers.Tokenizer.from_str(first.decode()).get_added_tokens_decoder()
  assert [added[i].content for i in sorted(added)] == list(
      tokenizer_lib.SPECIAL_TOKENS[kind].values())  # Training's seed tokens are gone.


@pytest.mark.slow
def test_two_fresh_runs_of_one_command_log_the_same_losses(tmp_path):
  """The same pretraining command twice, each in a fresh process and workdir that trains its own
  WordPiece vocabulary on the embedded corpus: every logged loss is identical. With the
  trainer's hash-map order (before _wordpiece_initial_vocab) the ids differed from step 1."""
  from tests import training_util  # pylint: disable=g-import-not-at-top
  from tests.test_checkpointing import _finish  # pylint: disable=g-import-not-at-top
  real_corpus = dict(train__synthetic_data=False, data__dataset='wiki_offline/en',
                     data__vocab_size=600, model__vocab_size=600,
                     data__tokenizer_max_documents=300, train__num_steps=6,
                     checkpoint__every_steps=1000)
  workdirs = [str(tmp_path / f'run{i}') for i in range(2)]
  for workdir in workdirs:  # One after the other: the second must not find the first's files.
    _finish(training_util.pretrain(workdir, **real_corpus))
  first, second = (training_util.train_losses(w) for w in workdirs)
  assert sorted(first) == list(range(1, 7)) and first == second
  vocabularies = [(tmp_path / f'run{i}' / 'tokenizer' / tokenizer_lib.FILENAME).read_bytes()
                  for i in range(2)]
  assert vocabularies[0] == vocabularies[1]


@pytest.mark.parametrize('lowercase', [True, False])
def test_unigram_segments_as_sentencepiece_does(lowercase):
  """The trained 'unigram' tokenizer (a `tokenizers` Unigram model over SentencePiece's pieces
  and scores) cuts text into the pieces SentencePiece's own encoder gives for the same model,
  on our normalized, whitespace-split words."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  texts = _articles(300)
  specials = list(tokenizer_lib.SPECIAL_TOKENS['unigram'].values())
  reference = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_lib.sentencepiece_unigram(
      texts, specials, 1000, lowercase))
  ours = tokenizer_lib.train('unigram', texts, 1000, lowercase)
  assert ours.vocab_size == reference.get_piece_size()
  backend = ours.backend
  for text in SENTENCES + _articles(340)[300:]:  # Unseen articles too.
    words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(
        backend.normalizer.normalize_str(text))]
    expected = reference.encode(' '.join(w.removeprefix('▁') for w in words), out_type=str)
    assert backend.encode(text, add_special_tokens=False).tokens == expected
