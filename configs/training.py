"""The training sections of a config (`train`, `optimizer`, `mesh`, `checkpoint`). Filled in by the trainer."""
import ml_collections


def get_training_config(size: str, runlocal: bool = False) -> ml_collections.ConfigDict:
  del size, runlocal
  return ml_collections.ConfigDict()
