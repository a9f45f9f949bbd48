"""The offline GLUE-style suite: six tasks built from the embedded English Wikipedia summaries.

Every task reads the same articles, split by title hash as the topic task is
(encoders/data/finetune_data.py): 'train' and 'dev' are the hashed `dev_fraction` carve of the
corpus 'train' split, 'test' is the corpus 'test' split. Pretraining's 'validation' articles are
never read, and 'test' is seen by neither pretraining nor model selection. The records are fixed
(`DATA_SEED`): seeds of a run change only its heads' initialisation and data order.

- topic: the summary -> its topic (12 classes), macro-F1.
- topic_longtail: the same with a long-tailed training subsample (encoders/data/imbalance.py,
  largest / smallest class = LONG_TAIL_RATIO), macro-F1; dev and test keep every class.
- pair (QNLI/MRPC style): (description, summary) -> does the description belong to the summary;
  the negative's description comes from another article of the same topic. Accuracy (and F1).
- mention (CoNLL style): B-/I-TITLE tags on the summary's words that mention the article's title
  (encoders/analysis/texts.py: title_spans), entity-level F1.
- qa (SQuAD style): question = the description, context = the summaries of the article and of
  another article of its topic, in random order; answer = the first mention of the article's
  title in its own summary. The distractor makes it a question about which entity the
  description means (with one summary, the answer is nearly always its first words), and
  contexts longer than a row need the sliding windows. Exact match / F1.
- search: description -> summary retrieval over the test articles
  (encoders/adaptation/retrieval.py): nDCG@10, MRR@10, recall@k. No training: mean-pooled embeddings
  in every mode.

Cross-lingual retrieval is left out: the fr/es JSON files have no key that aligns an article
with its English version (keys are the language's own titles; the 2,467 fr and 1,378 es titles
equal to an English one are mostly names spelled alike, not an alignment).
"""
import re

import numpy as np

from encoders.analysis import texts
from encoders.data import corpus, finetune_data, imbalance, pairs

# name -> (finetune_data kind or 'search', the metric the suite's table and average use).
TASKS = {'topic': ('classification', 'macro_f1'),
         'topic_longtail': ('classification', 'macro_f1'),
         'pair': ('classification', 'accuracy'),
         'mention': ('token_classification', 'entity_f1'),
         'qa': ('qa', 'f1'),
         'search': ('search', 'ndcg@10')}
TAGS = ['O', 'B-TITLE', 'I-TITLE']
PAIR_LABELS = ['other', 'same']
LONG_TAIL_RATIO = 50.0  # As experiments/class_imbalance.py.
DATA_SEED = 0
_WORD = re.compile(r'\w+|[^\w\s]')


def article_splits(max_train: int = 0, max_eval: int = 0, dev_fraction: float = 0.1
                   ) -> dict[str, list[dict]]:
  """{'train', 'dev', 'test'} English articles (0: all; else evenly spaced over the split,
  which is ordered by topic); see the module docstring for where each comes from."""
  carved = finetune_data.carve_dev(pairs.articles('train'), 'title', dev_fraction)
  return {'train': pairs.evenly_spaced(carved['train'], max_train),
          'dev': pairs.evenly_spaced(carved['dev'], max_eval),
          'test': pairs.evenly_spaced(pairs.articles('test'), max_eval)}


def topic_names() -> list[str]:
  return sorted({a['topic'] for a in corpus.wiki_offline_articles('en').values()})


def _described(articles: list[dict]) -> list[dict]:
  return [a for a in articles if (a.get('description') or '').strip()]


def _same_topic_other(articles: list[dict], rng: np.random.Generator, field: str) -> list[int]:
  """For each article, the index of a random other article of its topic whose `field` differs
  (of any topic when its topic has none)."""
  by_topic = {}
  for i, article in enumerate(articles):
    by_topic.setdefault(article['topic'], []).append(i)
  chosen = []
  for i, article in enumerate(articles):
    differs = lambda j: articles[j][field] != article[field]
    others = ([j for j in by_topic[article['topic']] if differs(j)]
              or [j for j in range(len(articles)) if differs(j)])
    chosen.append(int(rng.choice(others)))
  return chosen


def pair_records(articles: list[dict], seed: int = DATA_SEED):
  """(descriptions, summaries, labels): each described article's summary with its own
  description (label 1) or, half of the time, another same-topic article's (label 0)."""
  articles = _described(articles)
  rng = np.random.default_rng(seed)
  other = _same_topic_other(articles, rng, 'description')
  labels = (rng.random(len(articles)) < 0.5).astype(np.int32)
  descriptions = [a['description'] if label else articles[j]['description']
                  for a, j, label in zip(articles, other, labels)]
  return descriptions, [a['extract'] for a in articles], labels


def words_and_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
  """CoNLL-style words of a text (runs of word characters, single punctuation marks) and
  their character spans."""
  matches = list(_WORD.finditer(text))
  return [m.group() for m in matches], [m.span() for m in matches]


def mention_tags(title: str, text: str) -> tuple[list[str], list[int]]:
  """(words of `text`, tag ids of TAGS): B-TITLE on the first word of each title mention,
  I-TITLE on the words after it in the same mention, O elsewhere. Overlapping mentions
  ('Albert Einstein' and 'Einstein') merge into one."""
  words, spans = words_and_spans(text)
  mention = np.zeros(len(text) + 1, np.int32)  # Character -> 1 + index of its merged mention.
  merged = []
  for start, end in sorted(texts.title_spans(title, text)):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  for m, (start, end) in enumerate(merged):
    mention[start:end] = m + 1
  tags, previous = [], 0
  for start, end in spans:
    current = mention[start:end].max()
    tags.append(0 if current == 0 else (2 if current == previous else 1))
    previous = current
  return words, tags


def first_mention(title: str, text: str) -> tuple[str, int] | None:
  """(text, start character) of the earliest (then longest) title mention; None without one."""
  spans = sorted(texts.title_spans(title, text), key=lambda s: (s[0], -s[1]))
  if not spans:
    return None
  start, end = spans[0]
  return text[start:end], start


def qa_records(articles: list[dict], seed: int = DATA_SEED):
  """(questions, contexts, answers [[(text, start)]]) of the described articles whose summary
  mentions their title; see the module docstring."""
  articles = [a for a in _described(articles) if first_mention(a['title'], a['extract'])]
  rng = np.random.default_rng(seed)
  other = _same_topic_other(articles, rng, 'title')
  questions, contexts, answers = [], [], []
  for article, j in zip(articles, other):
    text, start = first_mention(article['title'], article['extract'])
    target_first = rng.random() < 0.5
    parts = [article['extract'], articles[j]['extract']]
    if not target_first:
      parts.reverse()
      start += len(parts[0]) + 1
    questions.append(article['description'])
    contexts.append(' '.join(parts))
    answers.append([(text, start)])
  return questions, contexts, answers


def build_task(name: str, splits: dict[str, list[dict]], tokenizer, max_length: int,
               pair_types: bool = True) -> finetune_data.Task:
  """The finetune_data.Task of suite task `name` (not 'search') over `splits` of articles."""
  common = dict(tokenizer=tokenizer, max_length=max_length, doc_stride=max_length // 2)
  made = {}
  if name in ('topic', 'topic_longtail'):
    names = topic_names()
    for split, articles in splits.items():
      labels = np.asarray([names.index(a['topic']) for a in articles], np.int32)
      if name == 'topic_longtail' and split == 'train':
        keep = imbalance.long_tailed(labels, LONG_TAIL_RATIO, DATA_SEED)
        articles, labels = [articles[i] for i in keep], labels[keep]
      made[split] = finetune_data.classification_split([a['extract'] for a in articles], labels,
                                                       max_windows=1, **common)
    return finetune_data.Task('classification', names, made)
  if name == 'pair':
    for split, articles in splits.items():
      descriptions, summaries, labels = pair_records(articles)
      made[split] = finetune_data.classification_split(
          descriptions, labels, texts_b=summaries, pair_types=pair_types, **common)
    return finetune_data.Task('classification', PAIR_LABELS, made)
  if name == 'mention':
    for split, articles in splits.items():
      words, tags = zip(*[mention_tags(a['title'], a['extract']) for a in articles])
      made[split] = finetune_data.token_classification_split(list(words), list(tags), **common)
    return finetune_data.Task('token_classification', TAGS, made)
  if name == 'qa':
    for split, articles in splits.items():
      made[split] = finetune_data.qa_split(*qa_records(articles), max_query_length=32,
                                           pair_types=pair_types, **common)
    return finetune_data.Task('qa', None, made)
  raise ValueError(f'task={name!r}: choose one of {[t for t in TASKS if t != "search"]}.')
