"""The `config.data` section: corpus, tokenizer and input pipeline.

Family configs call `get_data_config(...)` and may override fields; every field can be
overridden on the command line as `--config.data.<field>=...`.
"""
import ml_collections


def get_data_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Corpus and tokenizer (data/corpus*.py, data/tokenizer*.py) ---

  # --- Example construction, packing, masking, batching (data/pipeline*.py) ---

  config.update(overrides)
  return config
