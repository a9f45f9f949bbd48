"""encoders/adaptation/retrieval.py's metrics against scikit-learn and first principles, and
experiments.embed's saved index and held-out retrieval metrics with the real MiniLM on the
corpus."""
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from encoders.adaptation import retrieval
from encoders.data import pairs
from tests import training_util


def unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_metrics_match_sklearn_and_first_principles():
  rng = np.random.default_rng(0)
  queries, documents = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(60, 8)))
  relevant = [set(rng.choice(60, rng.integers(1, 4), replace=False).tolist()) for _ in range(40)]
  result = retrieval.metrics(queries, documents, relevant, ks=(1, 5, 10, 20))
  scores = queries @ documents.T
  truth = np.zeros_like(scores)
  for row, rel in enumerate(relevant):
    truth[row, list(rel)] = 1
  assert abs(result['ndcg@10'] - ndcg_score(truth, scores, k=10)) < 1e-9
  reciprocal, recalls = [], {k: [] for k in (1, 5, 10, 20)}
  for row, rel in enumerate(relevant):
    ranking = sorted(range(60), key=lambda d: -scores[row, d])
    ranks = [ranking.index(d) + 1 for d in rel]
    reciprocal.append(1 / min(ranks) if min(ranks) <= 10 else 0.0)
    for k in recalls:
      recalls[k].append(sum(r <= k for r in ranks) / len(rel))
  assert abs(result['mrr@10'] - np.mean(reciprocal)) < 1e-12
  for k, values in recalls.items():
    assert abs(result[f'recall@{k}'] - np.mean(values)) < 1e-12
  assert (result['queries'], result['documents']) == (40, 60)


def test_one_relevant_document_at_rank_three():
  documents = np.eye(4)
  query = unit(np.array([[0.9, 0.5, 0.3, 0.1]]))  # Ranks documents 0, 1, 2, 3.
  result = retrieval.metrics(query, documents, [{2}], ks=(1, 5))
  assert result['ndcg@10'] == pytest.approx(1 / np.log2(4))
  assert result['mrr@10'] == pytest.approx(1 / 3)
  assert (result['recall@1'], result['recall@5']) == (0.0, 1.0)


def test_relevance_groups_a_shared_description():
  shared = pairs.Pairs(['American actor', 'Opera', 'American actor', 'Not indexed'],
                       ['a', 'b', 'c', 'd'], ['A', 'B', 'C', 'D'], [[], [], [], []])
  queries, relevant = retrieval.relevance(shared, ['C', 'B', 'A'])
  assert queries == ['American actor', 'Opera'] and relevant == [{2, 0}, {1}]


def run_embed(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'experiments.embed', *args], cwd=training_util.ROOT,
                        env=training_util.env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_index_is_saved_reloaded_and_scores_held_out_pairs(tmp_path):
  index = str(tmp_path / 'index')
  common = ['--index', index, '--split', 'test', '--num_articles', '60', '--eval_pairs',
            'description', '--query', 'a river in South America', '--top_k', '1']
  first = run_embed(*common, '--metrics_out', str(tmp_path / 'first.json'))
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'Embedding 60 of the 501 articles' in first.stdout
  second = run_embed(*common, '--metrics_out', str(tmp_path / 'second.json'))
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Loaded the index of 60 articles' in second.stdout and 'Embedding' not in second.stdout
  metrics = [json.loads((tmp_path / f'{name}.json').read_text()) for name in ('first', 'second')]
  assert metrics[0] == metrics[1]
  assert 50 <= metrics[0]['queries'] <= 60 and metrics[0]['documents'] == 60  # Most have a description.
  assert metrics[0]['ndcg@10'] > 0.6  # MiniLM finds most descriptions' articles among 60.
  assert 'description -> article retrieval' in first.stdout and 'a river in South America' in first.stdout

  other = run_embed('--index', index, '--split', 'test', '--num_articles', '30', '--query', 'a river')
  assert other.returncode == 0, other.stderr[-3000:]
  assert 'rebuilding it' in other.stdout and 'Embedding 30 of the 501 articles' in other.stdout
