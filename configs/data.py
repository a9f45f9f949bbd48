"""The `config.data` section: corpus, tokenizer and input pipeline.

Family configs call `get_data_config(...)` and may override fields; every field can be
overridden on the command line as `--config.data.<field>=...`.
"""
import ml_collections


def get_data_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Corpus and tokenizer (data/corpus*.py, data/tokenizer*.py) ---
  # 'wiki_offline/en' (embedded Wikipedia summaries; also /fr, /es), 'text_files', or a
  # TFDS catalog name prepared in array_record format under data_dir, e.g. 'c4/en'.
  config.dataset = 'wiki_offline/en'
  # Feature holding the text, for TFDS catalog datasets ('text' for c4 and wiki40b).
  config.text_field = 'text'
  # For dataset='text_files': a directory or glob of UTF-8 text files.
  config.text_files = ''
  # For dataset='text_files': 'file' (one document per file) or 'paragraph' (blank-line separated).
  config.text_files_split_by = 'file'
  # TFDS data dir where datasets are built / read; None -> TFDS default (~/tensorflow_datasets).
  config.data_dir = None
  # Tokenizer kind trained from the corpus: 'wordpiece' (BERT), 'bpe' (RoBERTa), 'unigram' (ALBERT).
  config.tokenizer = 'wordpiece'
  # HF checkpoint dir or tokenizer.json to load instead; None -> train into <workdir>/tokenizer.
  config.tokenizer_path = None
  # Lowercase (and strip accents) before tokenizing; BERT uncased and ALBERT do, RoBERTa does not.
  config.lowercase = True
  # Vocabulary size of a trained tokenizer; must equal config.model.vocab_size.
  config.vocab_size = 30522
  # Split names: pretraining trains on `train_split`, evaluates on `eval_split`.
  config.train_split = 'train'
  config.eval_split = 'validation'
  # Where tokenized splits are cached; None -> <data_dir>/tokenized.
  config.cache_dir = None

  # --- Example construction, packing, masking, batching (data/pipeline*.py) ---

  config.update(overrides)
  return config
