"""Attention maps per layer and head, and the head statistics of Clark et al. 2019.

"What does BERT look at?" (Clark, Khandelwal, Levy, Manning 2019) describes each head by
the entropy of its attention distributions and by how much of its attention goes to [CLS],
to [SEP], to the previous and to the next token, averaged over the (real) query tokens.
"""
import numpy as np

from encoders import paths
from encoders.analysis import files, forward, subject as subject_lib

STATISTICS = ('entropy', 'cls', 'sep', 'previous', 'next')


def attention_maps(subject: subject_lib.Subject, texts: list[str], max_length: int = 128):
  """-> (weights f32 [layers, texts, heads, query, key], Encoded texts) for the given texts."""
  encoded = subject_lib.encode(subject.tokenizer, texts, max_length)
  return forward.run(subject, encoded).attention, encoded


def head_statistics(weights: np.ndarray, input_ids: np.ndarray, segment_ids: np.ndarray,
                    cls_id: int, sep_id: int) -> dict[str, np.ndarray]:
  """{statistic: [layers, heads]} averaged over every real query token of every text.

  weights [layers, batch, heads, query, key]; entropy in nats over the keys; 'cls' / 'sep'
  the weight on keys that are [CLS] / [SEP]; 'previous' / 'next' the weight on key q-1 / q+1
  (0 for the first / last position).
  """
  real = segment_ids > 0  # [batch, length]
  queries = real[None, :, None, :]  # broadcast over [layers, batch, heads, query]
  logs = np.log(np.where(weights > 0, weights, 1.0))
  per_query = {
      'entropy': -(weights * logs).sum(-1),
      'cls': (weights * (input_ids == cls_id)[None, :, None, None, :]).sum(-1),
      'sep': (weights * (input_ids == sep_id)[None, :, None, None, :]).sum(-1),
      'previous': np.pad(np.diagonal(weights, offset=-1, axis1=-2, axis2=-1), [(0, 0)] * 3 + [(1, 0)]),
      'next': np.pad(np.diagonal(weights, offset=1, axis1=-2, axis2=-1), [(0, 0)] * 3 + [(0, 1)]),
  }  # each [layers, batch, heads, query]
  count = queries.sum(axis=(1, 3))  # [1, 1]
  return {name: (value * queries).sum(axis=(1, 3)) / count for name, value in per_query.items()}


def uniform_weights(segment_ids: np.ndarray) -> np.ndarray:
  """[1, batch, 1, query, key]: every query's weight spread evenly over its text's real keys,
  the attention a head has before it learns anything (its head_statistics are the baseline)."""
  real = (segment_ids > 0).astype(np.float32)  # [batch, key]
  weights = real / np.maximum(real.sum(-1, keepdims=True), 1.0)  # An empty row: all zero.
  return np.broadcast_to(weights[:, None, :], real.shape + real.shape[-1:])[None, :, None]


def plot_grid(weights: np.ndarray, tokens: list[str], title: str):
  """One text's weights [layers, heads, query, key] as a layers x heads grid of heat maps."""
  num_layers, num_heads = weights.shape[:2]
  length = len(tokens)
  panel = 2.6 if num_heads <= 4 else 1.4  # Inches per map: MiniLM's 6 x 12 stays readable.
  fig, axes = files.figure(num_layers, num_heads, size=(panel * num_heads + 1, panel * num_layers + 0.6))
  for layer in range(num_layers):
    for head in range(num_heads):
      ax = axes[layer, head]
      ax.imshow(weights[layer, head, :length, :length], cmap='viridis', vmin=0.0, vmax=1.0)
      ax.set_title(f'layer {layer} head {head}', fontsize=8 if num_heads <= 4 else 6)
      ticks = range(length) if length <= 24 and num_heads <= 4 else []
      ax.set_xticks(ticks, [tokens[i] for i in ticks], rotation=90, fontsize=6)
      ax.set_yticks(ticks, [tokens[i] for i in ticks], fontsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def plot_statistics(statistics: dict[str, np.ndarray], title: str):
  """Each statistic as a [layers, heads] heat map with its values written in."""
  fig, axes = files.figure(1, len(statistics), size=(2.4 * len(statistics) + 1, 2.8))
  for ax, (name, value) in zip(axes[0], statistics.items()):
    image = ax.imshow(value, cmap='magma', aspect='auto')
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('head')
    ax.set_ylabel('layer')
    ax.set_xticks(range(value.shape[1]))
    ax.set_yticks(range(value.shape[0]))
    if value.size <= 64:
      for (layer, head), v in np.ndenumerate(value):
        ax.text(head, layer, f'{v:.2f}', ha='center', va='center', fontsize=7, color='gray')
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def corpus_statistics(subject: subject_lib.Subject, texts: list[str], max_length: int = 128,
                      batch_size: int = 16) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """head_statistics over many texts, a batch at a time: ({statistic: [layers, heads]},
  {statistic: its value under uniform attention over the same texts})."""
  tokenizer = subject.tokenizer
  encoded = subject_lib.encode(tokenizer, texts, max_length, length=max_length)
  totals, uniform_totals, count = {}, {}, 0
  for batch in forward.batches(encoded, batch_size):
    weights = forward.run(subject, batch).attention
    queries = int((batch.segment_ids > 0).sum())
    for sums, batch_weights in ((totals, weights), (uniform_totals, uniform_weights(batch.segment_ids))):
      for name, value in head_statistics(batch_weights, batch.input_ids, batch.segment_ids,
                                         tokenizer.cls_id, tokenizer.sep_id).items():
        sums[name] = sums.get(name, 0.0) + value * queries
    count += queries
  uniform = {name: float(total.item()) / count for name, total in uniform_totals.items()}
  return {name: total / count for name, total in totals.items()}, uniform


def write(subject: subject_lib.Subject, texts: list[str], out: str, max_length: int = 128,
          statistics_texts: list[str] = ()) -> dict:
  """attention.npy, input_ids.npy, tokens.json and a grid PNG per text of `texts`, and the head
  statistics over `texts` + `statistics_texts` (head_statistics.json / .png) into `out`."""
  folder = files.folder(out)
  weights, encoded = attention_maps(subject, texts, max_length)
  paths.save_npy(folder / 'attention.npy', weights)
  paths.save_npy(folder / 'input_ids.npy', encoded.input_ids)
  row_tokens = [subject_lib.tokens(subject.tokenizer, row) for row in encoded.input_ids]
  files.save_json(folder / 'tokens.json', dict(texts=texts, tokens=row_tokens))
  for i, tokens in enumerate(row_tokens):
    files.save_figure(folder / f'attention_{i}.png',
                      plot_grid(weights[:, i], tokens, f'{subject.name}: "{texts[i][:70]}"'))
  all_texts = list(texts) + list(statistics_texts)
  statistics, uniform = corpus_statistics(subject, all_texts, max_length)
  files.save_figure(folder / 'head_statistics.png', plot_statistics(
      statistics, f'{subject.name}: head statistics over {len(all_texts)} texts (uniform '
      f'attention: entropy {uniform["entropy"]:.2f}, previous {uniform["previous"]:.3f})'))
  result = {name: value.round(4).tolist() for name, value in statistics.items()}
  result['uniform'] = {name: round(value, 4) for name, value in uniform.items()}
  files.save_json(folder / 'head_statistics.json', result)
  return result
