"""experiments/validate.py: a checkpoint's validation over the whole split equals the trainer's
own validation at that step when both read the same batches."""
import json
import os

import pytest

from encoders.training import metrics, trainer
from experiments import validate
from tests import training_util


@pytest.mark.slow
def test_whole_split_validation_matches_the_trainer_s(minilm_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  config = training_util.tiny_config(
      model__vocab_size=30522, data__tokenizer_path=minilm_dir, train__synthetic_data=False,
      train__num_steps=3, train__eval_every=3, train__eval_steps=2, train__batch_size=4,
      data__input_format='sop')
  trainer.train_and_evaluate(config, workdir)
  logged = [r for r in metrics.read_jsonl(workdir) if r['step'] == 3 and 'eval/mlm_loss' in r][-1]
  step, result = validate.validate(workdir, batches=2)
  assert step == 3 and result['rows'] == 8
  for name in ('mlm_loss', 'mlm_accuracy', 'sentence_accuracy'):
    assert result[name] == pytest.approx(logged[f'eval/{name}'], rel=1e-5)
  _, whole = validate.validate(workdir)
  assert whole['rows'] > 8 and whole['rows'] % 4 == 0
