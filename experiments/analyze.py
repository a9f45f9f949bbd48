"""Look inside a trained encoder: one subcommand per analysis (analysis/ holds the code).

--model is one of our workdirs (--step: any saved step, default the latest) or an HF
checkpoint directory (default: the installed all-MiniLM-L6-v2). Outputs go to --out.

  python -m experiments.analyze attention --model workdirs/bert_tiny --out OUT/attention
  python -m experiments.analyze hidden --model workdirs/bert_tiny --split validation --layer -1
  python -m experiments.analyze probe --model workdirs/bert_tiny --num_train 800
  python -m experiments.analyze token_loss --model workdirs/bert_tiny --baseline_step 3200
  python -m experiments.analyze health --model workdirs/bert_tiny --baseline_step 3200
  python -m experiments.analyze word_order --model workdirs/bert_tiny

health writes the norms per layer over every saved step of --model (a workdir, without --step)
and, with a baseline, the comparison of the two checkpoints and the loss between them.
word_order scores a workdir's checkpoint on its own validation batches as they are and with each
row's words shuffled (a pretraining workdir only: it needs the run's objective and data).
"""
import json

from absl import app, flags, logging

from encoders import hf_interop
from encoders.analysis import (attention, health, hidden_states, probing, subject, texts,
                               token_loss, word_order)
from experiments import cli

COMMANDS = ('attention', 'hidden', 'probe', 'token_loss', 'health', 'word_order')
DEFAULT_SENTENCES = (
    'The river flows through the capital of France and into the sea.',
    'He was a famous American singer and songwriter.',
)
_MODEL = flags.DEFINE_string('model', None, 'A pretraining workdir or an HF checkpoint '
                             'directory (default: all-MiniLM-L6-v2).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step of a workdir (default: the latest).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (local or gs://...).')
_TEXT = flags.DEFINE_multi_string('text', list(DEFAULT_SENTENCES), 'attention: sentences to map.')
_STATS_TEXTS = flags.DEFINE_integer('stats_texts', 64, 'attention: head statistics also over this '
                                    'many validation articles (0: over --text only).')
_SPLIT = flags.DEFINE_enum('split', 'validation', ('train', 'validation', 'test'),
                           'hidden, token_loss, health: the corpus split of the texts.')
_NUM_TEXTS = flags.DEFINE_integer('num_texts', 0, 'hidden: articles (0: the whole split); '
                                  'token_loss: 12; health: 64.')
_LAYER = flags.DEFINE_integer('layer', -1, 'hidden: layer (0 = embeddings, -1 = last).')
_POOLING = flags.DEFINE_enum('pooling', 'mean', hidden_states.POOLINGS, 'hidden: pooling.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 800, 'probe: training articles.')
_BASELINE = flags.DEFINE_string('baseline', None, 'token_loss, health: the other checkpoint '
                                '(default: --model itself, at --baseline_step).')
_BASELINE_STEP = flags.DEFINE_integer('baseline_step', None, 'token_loss, health: its step.')
_MAX_LENGTH = flags.DEFINE_integer('max_length', 128, 'Tokens per text, [CLS] and [SEP] included.')


def baseline(model_path: str) -> subject.Subject | None:
  if _BASELINE.value is None and _BASELINE_STEP.value is None:
    return None
  return subject.load(_BASELINE.value or model_path, _BASELINE_STEP.value)


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Give one command: {" | ".join(COMMANDS)}.')
  command, out = argv[1], _OUT.value or f'analysis_out/{argv[1]}'
  model_path = _MODEL.value or hf_interop.installed_minilm_dir()
  if command == 'word_order':
    if subject.is_hf_dir(model_path):
      raise app.UsageError('word_order needs a pretraining workdir (--model): it reads the run\'s '
                           'objective and validation batches, which an HF directory does not have.')
    print(json.dumps(word_order.write(model_path, out, _STEP.value), indent=1))
    return
  model = subject.load(model_path, _STEP.value)
  count = lambda default: _NUM_TEXTS.value or default
  if command == 'attention':
    corpus = texts.articles('validation', _STATS_TEXTS.value).texts if _STATS_TEXTS.value else []
    result = attention.write(model, list(_TEXT.value), out, _MAX_LENGTH.value, corpus)
  elif command == 'hidden':
    result = hidden_states.write(model, _SPLIT.value, out, _LAYER.value, _POOLING.value,
                                 _NUM_TEXTS.value, _MAX_LENGTH.value)
  elif command == 'probe':
    result = probing.write(model, out, num_train=_NUM_TRAIN.value, max_length=_MAX_LENGTH.value)
  elif command == 'token_loss':
    articles = texts.articles(_SPLIT.value, count(12))
    result = token_loss.write(model, articles.texts, out, articles.titles, baseline(model_path),
                              _MAX_LENGTH.value)
  else:
    other = baseline(model_path)
    if other is None and subject.is_hf_dir(model_path):
      raise app.UsageError('health of an HF directory needs --baseline to compare it with.')
    if not subject.is_hf_dir(model_path) and _STEP.value is None:  # Norms over every saved step.
      health.write_run(model_path, out)
    if other is not None:
      articles = texts.articles(_SPLIT.value, count(64))
      result = health.write_comparison(other, model, out, articles.texts,
                                       max_length=_MAX_LENGTH.value)
  print(json.dumps(result, indent=1) if command != 'health' else f'Wrote {out}.')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
