"""The `config.distill` section: a frozen teacher for any MLM student
(encoders/training/distillation.py).

Added to a family config (configs/distilbert.py has it); a run distils when `teacher` is set:

  python -m experiments.pretrain --config configs/bert.py:tiny --workdir DIR \
      --config.distill.teacher=/path/to/teacher --config.data.tokenizer_path=/path/to/teacher

Defaults are the released DistilBERT recipe (HF examples/research_projects/distillation:
--alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0 --temperature 2.0, KL over every real token).
"""
import ml_collections
from ml_collections import config_dict


def get_distill_config(teacher: str | None = None) -> ml_collections.ConfigDict:
  distill = ml_collections.ConfigDict()
  # One of our pretraining workdirs or an HF checkpoint directory; None: no distillation.
  distill.teacher = config_dict.placeholder(str) if teacher is None else teacher
  distill.alpha_ce = 5.0  # KL between the temperature-softened teacher and student MLM outputs.
  distill.alpha_mlm = 2.0  # The student's own MLM loss.
  distill.alpha_cos = 1.0  # 1 - cosine between student and teacher last hidden states.
  distill.temperature = 2.0  # T: both softmaxes at logits / T; the KL is scaled by T^2.
  distill.kl_positions = 'all'  # 'all' real tokens (the release), or only the 'masked' ones.
  distill.init_from_teacher = True  # Student embeddings, MLM head and layers from the teacher's.
  # Teacher layer of each student layer; None: evenly spread (12 -> 6: [0, 2, 4, 7, 9, 11]).
  distill.teacher_layers = config_dict.placeholder(tuple)
  return distill
