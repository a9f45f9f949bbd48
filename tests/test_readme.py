"""The README's Python snippets run as written (in a directory holding the workdir they name)."""
import os
import re

import numpy as np
import pytest

from encoders.training import trainer
from tests import training_util

README = os.path.join(training_util.ROOT, 'README.md')


def python_snippets() -> list[str]:
  with open(README) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)


def test_readme_has_python_snippets():
  assert len(python_snippets()) >= 2


@pytest.mark.slow
def test_python_snippets_run_as_written(minilm_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # What the main command leaves: a BERT-tiny workdir (here a few synthetic steps, with the
  # MiniLM tokenizer standing in for a trained one).
  trainer.train_and_evaluate(training_util.tiny_config(
      model__vocab_size=30522, data__tokenizer_path=minilm_dir, train__num_steps=2,
      data__input_format='full_sentences'), 'workdirs/bert_tiny')
  for snippet in python_snippets():
    namespace = {}
    exec(compile(snippet, README, 'exec'), namespace)  # pylint: disable=exec-used
    if 'outputs' in namespace:  # The reload snippet: logits for every token of the text.
      assert namespace['outputs']['mlm_logits'].shape[:2] == namespace['batch']['input_ids'].shape
      assert np.isfinite(np.asarray(namespace['outputs']['mlm_logits'])).all()
  assert os.path.exists('out_dir/model.safetensors') and os.path.exists('out_dir/config.json')
