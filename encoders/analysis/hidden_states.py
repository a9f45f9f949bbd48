"""Hidden states of any layer for a corpus split, pooled or per token, and a 2-D PCA plot."""
import matplotlib
import numpy as np

from encoders import paths
from encoders.analysis import files, forward, subject as subject_lib, texts as texts_lib

POOLINGS = ('mean', 'cls', 'tokens')


def pool(hidden: np.ndarray, segment_ids: np.ndarray, pooling: str) -> np.ndarray:
  """[..., batch, length, hidden] -> [..., batch, hidden]: the mean over real tokens, or [CLS]."""
  if pooling == 'cls':
    return hidden[..., 0, :]
  real = (segment_ids > 0)[..., None].astype(hidden.dtype)  # [batch, length, 1]
  return (hidden * real).sum(-2) / real.sum(-2)


def states(subject: subject_lib.Subject, encoded: subject_lib.Encoded, pooling: str,
           batch_size: int = 32, layers: list[int] | None = None) -> np.ndarray:
  """Hidden states of `layers` (default: all, 0 = embeddings) for every encoded text.

  pooling 'mean' / 'cls' -> [layers, texts, hidden]; 'tokens' -> [layers, texts, length,
  hidden] (padding positions included: encoded.segment_ids says which are real).
  """
  if pooling not in POOLINGS:
    raise ValueError(f'pooling={pooling!r}: choose one of {POOLINGS}.')
  chosen = slice(None) if layers is None else list(layers)
  parts = []
  for batch in forward.batches(encoded, batch_size):
    hidden = forward.run(subject, batch).hidden_states[chosen]  # [layers, batch, length, hidden]
    parts.append(hidden if pooling == 'tokens' else pool(hidden, batch.segment_ids, pooling))
  return np.concatenate(parts, axis=1)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[n, d] -> (the centred rows' coordinates on the top-2 principal axes [n, 2],
  the fraction of variance each axis explains [2])."""
  centred = x - x.mean(0)
  _, singular, axes = np.linalg.svd(centred, full_matrices=False)
  return centred @ axes[:2].T, singular[:2] ** 2 / (singular ** 2).sum()


def plot_projection(points: np.ndarray, labels: np.ndarray, names: list[str],
                    explained: np.ndarray, title: str):
  fig, axes = files.figure(size=(7.5, 5.5))
  ax = axes[0, 0]
  colours = matplotlib.colormaps['tab20']
  for label in np.unique(labels):
    chosen = labels == label
    ax.scatter(points[chosen, 0], points[chosen, 1], s=7, alpha=0.75, color=colours(label % 20),
               label=names[label])
  ax.set_xlabel(f'PC 1 ({explained[0]:.0%} of variance)')
  ax.set_ylabel(f'PC 2 ({explained[1]:.0%})')
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, markerscale=2, bbox_to_anchor=(1.01, 1), loc='upper left')
  return fig


def write(subject: subject_lib.Subject, split: str, out: str, layer: int = -1,
          pooling: str = 'mean', count: int = 0, max_length: int = 128) -> dict:
  """hidden_<split>_layer<k>_<pooling>.npy (+ segment_ids for 'tokens'), the texts' titles and
  topics (texts.json, topics.npy) and a PCA plot of the pooled states coloured by topic."""
  folder = files.folder(out)
  layer = layer % (subject.num_layers + 1)
  articles = texts_lib.articles(split, count)
  encoded = subject_lib.encode(subject.tokenizer, articles.texts, max_length, length=max_length)
  hidden = states(subject, encoded, pooling, layers=[layer])[0]
  stem = f'hidden_{split}_layer{layer}_{pooling}'
  paths.save_npy(folder / f'{stem}.npy', hidden)
  if pooling == 'tokens':
    paths.save_npy(folder / f'{stem}_segment_ids.npy', encoded.segment_ids)
  paths.save_npy(folder / f'topics_{split}.npy', articles.topics)
  files.save_json(folder / f'texts_{split}.json', dict(
      split=split, titles=articles.titles, topic_names=articles.topic_names))
  pooled = pool(hidden, encoded.segment_ids, 'mean') if pooling == 'tokens' else hidden
  points, explained = pca_2d(pooled)
  files.save_figure(folder / f'pca_{split}_layer{layer}.png', plot_projection(
      points, articles.topics, articles.topic_names, explained,
      f'{subject.name}: layer {layer} ({pooling}), {len(articles.texts)} {split} articles'))
  return dict(file=f'{stem}.npy', shape=list(hidden.shape), explained=explained.round(4).tolist())
