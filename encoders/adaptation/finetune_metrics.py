"""Fine-tuning metrics on the host (numpy): accuracy, macro-F1, entity F1, SQuAD EM / F1.

Model outputs arrive per window; `aggregate_*` turn them into one prediction per record
(averaged logits for classification, max-context tokens for tagging, the best span over
all windows for QA), the way the papers' evaluation scripts score them.
"""
import collections
import re
import string

import numpy as np


# --------------------------------------------------------------------------- classification
def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
  """Unweighted mean over classes of F1 (a class absent from both gold and predictions is skipped)."""
  scores = [class_f1(predictions, labels, c) for c in range(num_labels)]
  return float(np.mean([s for s in scores if s is not None]))


def class_f1(predictions: np.ndarray, labels: np.ndarray, c: int) -> float | None:
  """F1 of class `c` (2 TP / (predicted + actual)); None when it is absent from both."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  true_positive = np.sum((predictions == c) & (labels == c))
  predicted, actual = np.sum(predictions == c), np.sum(labels == c)
  if predicted + actual == 0:
    return None
  return float(2 * true_positive / (predicted + actual))


def aggregate_windows(logits: np.ndarray, example_index: np.ndarray, num_examples: int) -> np.ndarray:
  """Mean logits over each record's windows: [windows, C] -> [records, C]."""
  total = np.zeros((num_examples, logits.shape[-1]), np.float64)
  np.add.at(total, example_index, logits)
  counts = np.bincount(example_index, minlength=num_examples)[:, None]
  return total / np.maximum(counts, 1)


def classification_metrics(logits, example_index, labels, num_labels: int) -> dict[str, float]:
  predictions = aggregate_windows(logits, example_index, len(labels)).argmax(-1)
  return {'accuracy': accuracy(predictions, labels),
          'macro_f1': macro_f1(predictions, labels, num_labels)}


# --------------------------------------------------------------------------- tagging
def chunks(tags: list[str]) -> set[tuple[str, int, int]]:
  """(type, first, last) entity spans of an IOB1/IOB2 tag sequence (as conlleval reads them).

  An entity starts at B-X, or at I-X after O or after a tag of another type; it continues
  over I-X.
  """
  result, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ['O']):
    prefix, _, tag_type = tag.partition('-')
    continues = prefix == 'I' and kind == tag_type
    if start is not None and not continues:
      result.add((kind, start, i - 1))
      start = kind = None
    if prefix == 'B' or (prefix == 'I' and not continues):
      start, kind = i, tag_type
  return result


def entity_f1(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
  """Micro-averaged entity precision / recall / F1 over sentences (exact span and type)."""
  correct = num_predicted = num_gold = 0
  for p, g in zip(predicted, gold):
    p_chunks, g_chunks = chunks(p), chunks(g)
    correct += len(p_chunks & g_chunks)
    num_predicted += len(p_chunks)
    num_gold += len(g_chunks)
  precision = correct / num_predicted if num_predicted else 0.0
  recall = correct / num_gold if num_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'entity_precision': precision, 'entity_recall': recall, 'entity_f1': f1}


def aggregate_tags(logits: np.ndarray, word_index: np.ndarray, example_index: np.ndarray,
                   references: list[np.ndarray]) -> list[np.ndarray]:
  """Per record, the predicted tag id of each word from its max-context window."""
  predictions = [np.zeros(len(r), np.int32) for r in references]
  rows, positions = np.nonzero(word_index >= 0)
  for row, position in zip(rows, positions):
    predictions[example_index[row]][word_index[row, position]] = logits[row, position].argmax()
  return predictions


def tagging_metrics(logits, word_index, example_index, references, tag_names) -> dict[str, float]:
  predictions = aggregate_tags(logits, word_index, example_index, references)
  names = lambda ids: [tag_names[i] for i in ids]
  result = entity_f1([names(p) for p in predictions], [names(r) for r in references])
  result['token_accuracy'] = accuracy(np.concatenate(predictions), np.concatenate(references))
  return result


# --------------------------------------------------------------------------- QA (SQuAD v1.1)
def normalize_answer(text: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
  text = ''.join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def span_f1(prediction: str, gold: str) -> float:
  """Bag-of-tokens F1 between normalised answers (SQuAD's `f1_score`)."""
  predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
  common = collections.Counter(predicted) & collections.Counter(truth)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(predicted), overlap / len(truth)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], answers: list[list[str]]) -> dict[str, float]:
  """EM and F1 in percent, each the max over a record's gold answers, averaged over records."""
  em = [max(exact_match(p, g) for g in golds) for p, golds in zip(predictions, answers)]
  f1 = [max(span_f1(p, g) for g in golds) for p, golds in zip(predictions, answers)]
  return {'exact_match': 100 * float(np.mean(em)), 'f1': 100 * float(np.mean(f1))}


def best_answers(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray,
                 is_max_context: np.ndarray, example_index: np.ndarray, contexts: list[str],
                 max_answer_length: int = 30, n_best: int = 20) -> list[str]:
  """Per record, the context text of the highest start + end logit span over its windows.

  As BERT's `write_predictions`: candidates are the `n_best` starts x `n_best` ends of a
  window, inside the context, start <= end < start + max_answer_length, start max-context.
  """
  best = [(-np.inf, '') for _ in contexts]
  for row in range(len(example_index)):
    starts = np.argsort(start_logits[row])[::-1][:n_best]
    ends = np.argsort(end_logits[row])[::-1][:n_best]
    for s in starts:
      if offsets[row, s, 0] < 0 or not is_max_context[row, s]:
        continue
      for e in ends:
        if e < s or e - s + 1 > max_answer_length or offsets[row, e, 0] < 0:
          continue
        score = start_logits[row, s] + end_logits[row, e]
        i = example_index[row]
        if score > best[i][0]:
          best[i] = (score, contexts[i][offsets[row, s, 0]:offsets[row, e, 1]])
  return [text for _, text in best]


def qa_metrics(start_logits, end_logits, split, max_answer_length: int = 30) -> dict[str, float]:
  predictions = best_answers(start_logits, end_logits, split.rows['offsets'],
                             split.rows['max_context'], split.example_index, split.contexts,
                             max_answer_length)
  return squad_scores(predictions, split.references)
