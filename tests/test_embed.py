"""experiments.embed with the real MiniLM weights: batching is invisible and the ranking is sensible."""
import re
import subprocess
import sys

import numpy as np
import pytest
import transformers

from encoders.data import corpus
from experiments import embed
from tests import training_util

TITLES = ('Albert Einstein', 'Amazon River', 'Cello', 'Influenza', 'Chess', 'Volcano')


@pytest.mark.slow
def test_embedder_ranks_and_batches(minilm_dir):
  embedder = embed.Embedder(minilm_dir, max_length=32, batch_size=4)  # One bucket: one compile.
  articles = {a['title']: a for a in embed.read_articles(10_033)}
  texts = [articles[title]['extract'] for title in TITLES]

  together = embedder(texts)  # Two batches, sorted by length.
  alone = np.concatenate([embedder([text]) for text in texts[:2]])
  np.testing.assert_allclose(together[:2], alone, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)

  queries = ['a famous physicist who developed relativity', 'a river in South America',
             'an instrument with strings played with a bow']
  best = np.argmax(embedder(queries) @ together.T, axis=1)
  assert [TITLES[i] for i in best] == ['Albert Einstein', 'Amazon River', 'Cello']


def test_tokenizer_matches_the_reference(minilm_dir):
  texts = ['Café crème à la française.', '東京は日本の首都です。 🍕', 'word ' * 300]
  reference = transformers.AutoTokenizer.from_pretrained(minilm_dir)(
      texts, truncation=True, max_length=128)['input_ids']
  ours = [e.ids for e in embed.load_tokenizer(minilm_dir, 128).encode_batch(texts)]
  assert ours == reference
  assert len(ours[2]) == 128 and len(ours[0]) < 128  # Truncated, and not padded.


@pytest.mark.slow
def test_command_says_how_many_articles_and_shows_progress():
  result = subprocess.run([sys.executable, '-m', 'experiments.embed', '--num_articles=8',
                           '--query=a river', '--top_k=1'], cwd=training_util.ROOT,
                          env=training_util.env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  total = len(corpus.wiki_offline_articles('en'))
  assert f'Embedding 8 of the {total:,} articles (--num_articles={total} for all).' in result.stdout
  assert '8/8 [' in result.stderr  # The bar, at its end.
  assert not re.findall(r'^I\d{4} ', result.stderr, flags=re.M), result.stderr[-3000:]  # No INFO logs.


def test_progress_bar_counts_the_texts(minilm_dir, capsys):
  embedder = embed.Embedder(minilm_dir, max_length=32, batch_size=4)
  embedder(['one', 'two', 'three', 'four', 'five'], progress=True)  # Two batches.
  assert '5/5 [' in capsys.readouterr().err
  embedder(['one'])
  assert capsys.readouterr().err == ''  # No bar unless asked for.
