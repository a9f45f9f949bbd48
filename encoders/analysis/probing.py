"""Linear probes per layer on frozen features, with a random-init control of the same architecture.

Two labels from the embedded corpus: the article's topic (one per text, from its mean-pooled
hidden state) and, per token, whether the token is part of a mention of the article's title
(encoders/analysis/texts.py: title_spans), sampled balanced (every mention token of a text and as
many other tokens), so chance is 0.5. Probes are trained on articles of the 'train' split and scored
on another split's articles (title-hash splits: no article is in both).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from encoders.analysis import files, forward, hidden_states
from encoders.analysis import subject as subject_lib, texts as texts_lib


def standardizer(train: np.ndarray):
  """x -> (x - mean) / std as float32, with the mean and standard deviation of the training
  features `train` [n, d] (x [..., d])."""
  mean, std = train.mean(0), train.std(0) + 1e-6
  return lambda x: ((x - mean) / std).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def fit_logistic(features, labels, num_classes: int, steps: int = 300, learning_rate: float = 0.05,
                 l2: float = 1e-3):
  """Multinomial logistic regression, full batch with Adam: features [n, d], labels int [n]
  -> (weights [d, classes], bias [classes])."""
  def loss_fn(weights_and_bias):
    weights, bias = weights_and_bias
    logits = features @ weights + bias  # [n, classes]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss + l2 * (weights ** 2).sum()

  tx = optax.adam(learning_rate)
  start = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros((num_classes,)))

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(params), state)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (start, tx.init(start)), None, length=steps)
  return params


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int) -> float:
  """Test accuracy of a logistic probe fitted on standardized training features."""
  scale = standardizer(train_x)
  weights, bias = fit_logistic(jnp.asarray(scale(train_x)), jnp.asarray(train_y), num_classes)
  predictions = np.asarray(jnp.argmax(scale(test_x) @ weights + bias, -1))
  return float((predictions == test_y).mean())


@dataclasses.dataclass
class Features:
  pooled: np.ndarray  # [layers + 1, texts, hidden], mean over real tokens.
  topics: np.ndarray  # int [texts]
  tokens: np.ndarray  # [layers + 1, sampled tokens, hidden]
  in_title: np.ndarray  # int [sampled tokens]: 1 where the token is part of a title mention.


def features(subject: subject_lib.Subject, articles: texts_lib.Articles, max_length: int = 128,
             seed: int = 0, batch_size: int = 32) -> Features:
  """Every layer's pooled states, and the states of a balanced sample of tokens."""
  rng = np.random.default_rng(seed)
  encoded = subject_lib.encode(subject.tokenizer, articles.texts, max_length, length=max_length)
  special = np.isin(encoded.input_ids, subject.tokenizer.special_ids)
  pooled, tokens, in_title = [], [], []
  for start, batch in zip(range(0, len(articles.texts), batch_size),
                          forward.batches(encoded, batch_size)):
    hidden = forward.run(subject, batch).hidden_states  # [layers + 1, batch, length, hidden]
    pooled.append(hidden_states.pool(hidden, batch.segment_ids, 'mean'))
    for row in range(len(batch.input_ids)):
      i = start + row
      real = np.flatnonzero(~special[i])
      mention = texts_lib.in_spans(batch.offsets[row][real],
                                   texts_lib.title_spans(articles.titles[i], articles.texts[i]))
      positives, negatives = real[mention], real[~mention]
      count = min(len(positives), len(negatives))
      chosen = np.concatenate([rng.choice(positives, count, replace=False),
                               rng.choice(negatives, count, replace=False)])
      tokens.append(hidden[:, row, chosen])
      in_title += [1] * count + [0] * count
  return Features(np.concatenate(pooled, 1), articles.topics, np.concatenate(tokens, 1),
                  np.asarray(in_title, np.int32))


def probe_layers(train: Features, test: Features, num_topics: int) -> list[dict]:
  """Per layer (0 = embeddings): topic and title-token probe accuracy on the test features."""
  return [dict(layer=layer,
               topic=probe_accuracy(train.pooled[layer], train.topics, test.pooled[layer],
                                    test.topics, num_topics),
               title_token=probe_accuracy(train.tokens[layer], train.in_title, test.tokens[layer],
                                          test.in_title, 2))
          for layer in range(len(train.pooled))]


def run(subject: subject_lib.Subject, num_train: int = 800, num_test: int = 0,
        test_split: str = 'test', max_length: int = 128, seed: int = 0) -> dict:
  """Probes of `subject` and of its random-init control: {'trained': rows, 'random_init': rows,
  'chance': {...}, 'sizes': {...}}."""
  train_articles = texts_lib.articles('train', num_train)
  test_articles = texts_lib.articles(test_split, num_test)
  num_topics = len(train_articles.topic_names)
  result = {}
  for name, model in (('trained', subject), ('random_init', subject_lib.reinitialized(subject, seed))):
    train = features(model, train_articles, max_length, seed)
    test = features(model, test_articles, max_length, seed + 1)
    result[name] = probe_layers(train, test, num_topics)
  majority = np.bincount(train_articles.topics, minlength=num_topics).argmax()
  result['chance'] = dict(topic=float((test_articles.topics == majority).mean()), title_token=0.5)
  result['sizes'] = dict(train_articles=len(train_articles.texts),
                         test_articles=len(test_articles.texts), test_split=test_split,
                         train_tokens=int(len(train.in_title)), test_tokens=int(len(test.in_title)))
  return result


def plot(result: dict, title: str):
  fig, axes = files.figure(size=(6.5, 4))
  ax = axes[0, 0]
  for task, colour in (('topic', 'tab:blue'), ('title_token', 'tab:orange')):
    for arm, style in (('trained', '-o'), ('random_init', ':s')):
      layers = [row['layer'] for row in result[arm]]
      ax.plot(layers, [row[task] for row in result[arm]], style, color=colour,
              label=f'{task}, {arm.replace("_", " ")}')
    ax.axhline(result['chance'][task], color=colour, lw=0.8, ls='--', alpha=0.6)
  ax.set_xlabel('layer (0 = embeddings)')
  ax.set_ylabel('probe accuracy (test articles)')
  ax.set_xticks(layers)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  return fig


def write(subject: subject_lib.Subject, out: str, **kwargs) -> dict:
  """probes.json, probes.md (one table) and probes.png into `out`."""
  folder = files.folder(out)
  result = run(subject, **kwargs)
  files.save_json(folder / 'probes.json', result)
  rows = [[t['layer'], t['topic'], r['topic'], t['title_token'], r['title_token']]
          for t, r in zip(result['trained'], result['random_init'])]
  rows.append(['chance', result['chance']['topic'], result['chance']['topic'], 0.5, 0.5])
  (folder / 'probes.md').write_text(files.markdown_table(
      ['layer', 'topic (trained)', 'topic (random init)', 'title token (trained)',
       'title token (random init)'], rows))
  files.save_figure(folder / 'probes.png', plot(result, f'{subject.name}: linear probes by layer'))
  return result
