"""Subword tokenizers (HF `tokenizers`): train, save, load, and a small wrapper.

Three kinds, each set up as its paper's released tokenizer:
- 'wordpiece' (BERT): BertNormalizer (lowercase + strip accents by default), BertPreTokenizer,
  '##' continuations; [PAD]=0, [UNK], [CLS], [SEP], [MASK].
- 'bpe' (RoBERTa, GPT-2 style byte-level BPE): no prefix space, so a document's first word
  has no 'Ġ'; <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>.
- 'unigram' (ALBERT / DeBERTa, trained by SentencePiece): NFKD + strip accents + lowercase,
  Metaspace pre-tokenizer; <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4 (ALBERT's order).

A tokenizer is a `tokenizer.json` in a directory: trained once and reused (it is never retrained
behind a run's back), or loaded from an HF checkpoint directory (`tokenizer.json`, `vocab.txt`
for BERT, `vocab.json` + `merges.txt` for RoBERTa). Training gives the same file in every
process: WordPiece's trainer is given its initial tokens in a fixed order
(_wordpiece_initial_vocab), and Unigram is trained by SentencePiece, not by HF's trainer,
which sums its EM statistics in the order of a hash map seeded per process.
"""
import hashlib
import io
import json
import logging
import os
from typing import Iterable

import jax
import numpy as np
import sentencepiece
import tokenizers
from etils import epath
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from encoders import paths

KINDS = ('wordpiece', 'bpe', 'unigram')
# Special tokens in vocabulary order (ids 0, 1, ...), keyed by role.
SPECIAL_TOKENS = {
    'wordpiece': dict(pad='[PAD]', unk='[UNK]', cls='[CLS]', sep='[SEP]', mask='[MASK]'),
    'bpe': dict(cls='<s>', pad='<pad>', sep='</s>', unk='<unk>', mask='<mask>'),
    'unigram': dict(pad='<pad>', unk='<unk>', cls='[CLS]', sep='[SEP]', mask='[MASK]'),
}
_MODEL_KINDS = {'WordPiece': 'wordpiece', 'BPE': 'bpe', 'Unigram': 'unigram'}
FILENAME = 'tokenizer.json'


def _set_pipeline(tok: tokenizers.Tokenizer, kind: str, lowercase: bool) -> None:
  """Normalizer, pre-tokenizer, decoder and [CLS]/[SEP] template of each kind."""
  special = SPECIAL_TOKENS[kind]
  if kind == 'wordpiece':
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix='##')
  elif kind == 'bpe':
    tok.normalizer = normalizers.Lowercase() if lowercase else None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
  else:
    steps = [normalizers.Replace('``', '"'), normalizers.Replace("''", '"')]
    if lowercase:
      steps += [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
    steps.append(normalizers.Replace(tokenizers.Regex(' {2,}'), ' '))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme='always')])
    tok.decoder = decoders.Metaspace(prepend_scheme='always')
  cls, sep = special['cls'], special['sep']
  ids = {t: tok.token_to_id(t) for t in (cls, sep)}
  if None in ids.values():
    return  # Untrained yet: the template is set after training.
  if kind == 'bpe':
    tok.post_processor = processors.RobertaProcessing(
        sep=(sep, ids[sep]), cls=(cls, ids[cls]), add_prefix_space=False, trim_offsets=True)
  else:
    tok.post_processor = processors.TemplateProcessing(
        single=f'{cls}:0 $A:0 {sep}:0', pair=f'{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1',
        special_tokens=list(ids.items()))


def train(kind: str, texts: Iterable[str], vocab_size: int, lowercase: bool,
          num_texts: int | None = None) -> 'Tokenizer':
  """Trains a tokenizer of `kind` on `texts`; the special tokens take ids 0..4."""
  if kind not in KINDS:
    raise ValueError(f'config.data.tokenizer={kind!r}: use one of {", ".join(KINDS)}.')
  specials = list(SPECIAL_TOKENS[kind].values())
  # HF's progress bars print empty lines to stdout when it is not a terminal, and stdout may be
  # a job list (`ablate_* --mode=print > jobs.txt`); training takes seconds.
  if kind == 'unigram':
    tok = _sentencepiece_unigram(texts, specials, vocab_size, lowercase)
  else:
    if kind == 'wordpiece':
      texts = texts if isinstance(texts, (list, tuple)) else list(texts)  # Read twice.
      seeds = _wordpiece_initial_vocab(texts, specials, lowercase, num_texts)
      tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
      trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=seeds,
                                          show_progress=False)
    else:
      tok = tokenizers.Tokenizer(models.BPE())
      trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                    min_frequency=2,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                    show_progress=False)
    _set_pipeline(tok, kind, lowercase)
    tok.train_from_iterator(texts, trainer, length=num_texts)
  _set_pipeline(tok, kind, lowercase)
  if kind == 'bpe':  # BPE has no <unk> at work (bytes cover everything) but keeps its id.
    tok.model.unk_token = None
  saved = json.loads(tok.to_str())
  # The seeds were special tokens for training only; the model's vocabulary keeps them.
  saved['added_tokens'] = [t for t in saved['added_tokens'] if t['content'] in specials]
  # Reloaded so that its fingerprint equals that of the saved file (float printing differs).
  return Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(saved)))


# SentencePiece splits its EM sums over this many threads and adds them in thread order: a fixed
# count (not the machine's cores) gives the same vocabulary on every machine.
_SENTENCEPIECE_THREADS = 8


def _sentencepiece_unigram(texts: Iterable[str], specials: list[str], vocab_size: int,
                           lowercase: bool) -> tokenizers.Tokenizer:
  """A `tokenizers` Unigram model with the pieces and scores of `sentencepiece_unigram`."""
  trained = sentencepiece.SentencePieceProcessor(
      model_proto=sentencepiece_unigram(texts, specials, vocab_size, lowercase))
  vocab = [(trained.id_to_piece(i), trained.get_score(i)) for i in range(trained.get_piece_size())]
  tok = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=1, byte_fallback=False))
  tok.add_special_tokens(specials)
  return tok


def sentencepiece_unigram(texts: Iterable[str], specials: list[str], vocab_size: int,
                          lowercase: bool) -> bytes:
  """The model (serialized proto) SentencePiece's unigram trainer learns from `texts`, run
  through our unigram normalizer and pre-tokenizer first (SentencePiece then only splits at
  the spaces, marking each word's start with its '▁' as Metaspace does).

  The special tokens take ids 0..4: pad and unk as SentencePiece's own, the others as its
  user-defined symbols. SentencePiece gives the same pieces and scores in every process and on
  every machine (it sums its EM statistics in a fixed order over _SENTENCEPIECE_THREADS
  threads); HF's UnigramTrainer does not.
  """
  tok = tokenizers.Tokenizer(models.Unigram())
  _set_pipeline(tok, 'unigram', lowercase)

  def word_runs():  # Words of each text, 256 at a time: SentencePiece only counts words.
    for text in texts:
      words = [w.removeprefix('▁') for w, _ in
               tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]
      for start in range(0, len(words), 256):
        yield ' '.join(words[start:start + 256])

  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=word_runs(), model_writer=model, model_type='unigram',
      vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
      pad_id=0, pad_piece=specials[0], unk_id=1, unk_piece=specials[1], bos_id=-1, eos_id=-1,
      user_defined_symbols=specials[2:], normalization_rule_name='identity',
      add_dummy_prefix=True, split_by_whitespace=True, remove_extra_whitespaces=True,
      max_sentence_length=1 << 20, num_threads=_SENTENCEPIECE_THREADS, minloglevel=2)
  return model.getvalue()


def _wordpiece_initial_vocab(texts, specials: list[str], lowercase: bool,
                             num_texts: int | None) -> list[str]:
  """The tokens WordPiece training starts from, in a fixed order: the special tokens, the
  alphabet, then the '##' continuation of each character seen inside a word, sorted.

  HF's trainer (a BPE trainer with a '##' prefix) sorts the alphabet but numbers the
  continuations as it meets them while iterating over its word counts, a Rust hash map
  whose order is seeded anew in each process; merges of equal count are then taken in
  order of those ids, so two trainings on the same texts gave different ids, and at
  times different tokens (huggingface/tokenizers#1794). Training with vocab_size=0 (no
  merges) lists exactly these tokens; given first, as special tokens, they keep this order.
  """
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
  _set_pipeline(tok, 'wordpiece', lowercase)
  tok.train_from_iterator(texts, trainers.WordPieceTrainer(
      vocab_size=0, special_tokens=specials, show_progress=False), length=num_texts)
  vocab = tok.get_vocab(with_added_tokens=False)
  alphabet = sorted(t for t in vocab if t not in specials and not t.startswith('##'))
  continuations = sorted(t for t in vocab if t.startswith('##'))
  return specials + alphabet + continuations


def _lines(path: epath.Path) -> list[str]:
  """A vocabulary file's lines as HF's Rust readers split them (on '\n' only)."""
  return path.read_text().removesuffix('\n').split('\n')


def load(path: str, lowercase: bool = True) -> 'Tokenizer':
  """Loads a `tokenizer.json` file, or an HF checkpoint directory (local or a URL)."""
  path = epath.Path(paths.absolute(path))
  if path.is_file():
    return Tokenizer(tokenizers.Tokenizer.from_str(path.read_text()))
  files = {p.name for p in path.iterdir()} if path.is_dir() else set()
  if FILENAME in files:
    return Tokenizer(tokenizers.Tokenizer.from_str((path / FILENAME).read_text()))
  if 'vocab.txt' in files:
    lowercase = _hf_lowercase(path, lowercase)
    vocab = {token.rstrip(): i for i, token in enumerate(_lines(path / 'vocab.txt'))}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
    _set_pipeline(tok, 'wordpiece', lowercase)
    return Tokenizer(tok)
  if {'vocab.json', 'merges.txt'} <= files:
    merges = [tuple(line.split(' ')) for line in _lines(path / 'merges.txt')
              if line and not line.startswith('#version')]
    tok = tokenizers.Tokenizer(models.BPE(paths.read_json(path / 'vocab.json'), merges))
    _set_pipeline(tok, 'bpe', lowercase=False)
    return Tokenizer(tok)
  raise ValueError(f'config.data.tokenizer_path={os.fspath(path)!r} holds no tokenizer: expected '
                   'a tokenizer.json file, or a directory with tokenizer.json, vocab.txt '
                   '(WordPiece) or vocab.json + merges.txt (byte-level BPE).')


def _hf_lowercase(path: epath.Path, default: bool) -> bool:
  config = path / 'tokenizer_config.json'
  if config.exists():
    return paths.read_json(config).get('do_lower_case', default)
  return default


def get_tokenizer(data_config, workdir: str | None) -> 'Tokenizer':
  """config.data.tokenizer_path if set; else <workdir>/tokenizer, trained there on first use."""
  if data_config.get('tokenizer_path'):
    return load(data_config.tokenizer_path, data_config.lowercase)
  if not workdir:
    raise ValueError('No tokenizer: set config.data.tokenizer_path, or give a workdir to '
                     'train one into.')
  folder = os.path.join(workdir, 'tokenizer')
  if epath.Path(folder, FILENAME).exists():
    tok = load(folder)
    if tok.kind != data_config.tokenizer:
      raise ValueError(f'{folder}/{FILENAME} is a {tok.kind} tokenizer but config.data.tokenizer'
                       f'={data_config.tokenizer!r}: use another workdir or delete it.')
    return tok
  if jax.process_count() > 1:
    raise ValueError(f'No tokenizer in {folder}, and training one on each of '
                     f'{jax.process_count()} hosts could give different vocabularies (HF Unigram '
                     'training is not deterministic). Train it once: `python -m '
                     'experiments.train_tokenizer --config ... --workdir DIR`, then set '
                     'config.data.tokenizer_path=DIR/tokenizer.')
  from encoders.data import corpus  # pylint: disable=g-import-not-at-top
  split = data_config.get('train_split', 'train')
  texts, _ = corpus.read_documents(data_config, split,
                                   max_documents=data_config.get('tokenizer_max_documents'))
  logging.info('Training a %s tokenizer (vocab %d) on %d documents of %s (of %d).',
               data_config.tokenizer, data_config.vocab_size, len(texts), data_config.dataset,
               corpus.num_documents(data_config, split))
  tok = train(data_config.tokenizer, texts, data_config.vocab_size, data_config.lowercase,
              num_texts=len(texts))
  if tok.vocab_size < data_config.vocab_size:
    logging.warning('The corpus only supports %d of the %d requested tokens: set '
                    'config.model.vocab_size=%d, or use a larger corpus.', tok.vocab_size,
                    data_config.vocab_size, tok.vocab_size)
  tok.save(folder)
  return tok


class Tokenizer:
  """An HF tokenizer without padding or truncation, with the ids the pipeline needs."""

  def __init__(self, backend: tokenizers.Tokenizer):
    backend.no_padding()
    backend.no_truncation()
    self.backend = backend
    self.kind = _MODEL_KINDS[json.loads(backend.to_str())['model']['type']]
    for role, token in SPECIAL_TOKENS[self.kind].items():
      token_id = backend.token_to_id(token)
      if token_id is None:
        raise ValueError(f'This {self.kind} tokenizer has no {role} token {token!r}.')
      setattr(self, f'{role}_id', token_id)
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    self.fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]

  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int

  @property
  def special_ids(self) -> list[int]:
    return [self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id]

  def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, word_ids) per text, int32, without special tokens; word_ids count words from 0.

    Tokens of one word (as the pre-tokenizer splits words) share a word id, so masking
    whole words never splits one.
    """
    encodings = self.backend.encode_batch(texts, add_special_tokens=False)
    return [(np.asarray(e.ids, np.int32),
             np.asarray([-1 if w is None else w for w in e.word_ids], np.int32))
            for e in encodings]

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

  def id_to_token(self, token_id: int) -> str | None:
    return self.backend.id_to_token(int(token_id))

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def save(self, folder: str) -> None:
    """Writes <folder>/tokenizer.json atomically (readers never see a partial file)."""
    paths.write_atomic(os.path.join(folder, FILENAME), self.backend.to_str(pretty=True))
