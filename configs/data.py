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
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Tokenizer kind trained from the corpus: 'wordpiece' (BERT), 'bpe' (RoBERTa), 'unigram' (ALBERT).
  config.tokenizer = 'wordpiece'
  # HF checkpoint dir or tokenizer.json to load instead; None -> train into <workdir>/tokenizer.
  config.tokenizer_path = ml_collections.config_dict.placeholder(str)
  # Lowercase (and strip accents) before tokenizing; BERT uncased and ALBERT do, RoBERTa does not.
  config.lowercase = True
  # Vocabulary size of a trained tokenizer; must equal config.model.vocab_size.
  config.vocab_size = 30522
  # Split names: pretraining trains on `train_split`, evaluates on `eval_split`.
  config.train_split = 'train'
  config.eval_split = 'validation'
  # A trained tokenizer learns from at most this many documents, evenly spaced over train_split.
  config.tokenizer_max_documents = 100_000
  # Where tokenized splits are cached; None -> <data_dir>/tokenized.
  config.cache_dir = ml_collections.config_dict.placeholder(str)
  # A split is tokenized and cached in shards of about this many documents. When it has at least
  # one shard per host, each host tokenizes, caches and reads only its own (shards i, i + hosts,
  # ...); a smaller split is read by every host, which takes every hosts-th example.
  config.shard_documents = 100_000

  # --- Example construction, packing, masking, batching (data/pipeline*.py) ---
  # 'full_sentences' (RoBERTa, may cross documents), 'doc_sentences' (RoBERTa, never
  # crosses), 'segment_pair_nsp' (BERT), 'sentence_pair_nsp' (RoBERTa ablation), 'sop' (ALBERT).
  config.input_format = 'full_sentences'
  config.seq_length = 128  # L: tokens per row, [CLS] and [SEP] included.
  config.short_seq_prob = 0.1  # BERT: this fraction of examples gets a random shorter target length.
  config.packing = True  # Pack short single-segment examples into one row (ignored by pair formats).
  config.packing_buffer = 256  # Examples per first-fit packing window.
  config.mask_rate = 0.15  # Fraction of non-special tokens to predict.
  config.mask_token_prob = 0.8  # Of the predicted tokens: replaced by [MASK] ...
  config.random_token_prob = 0.1  # ... by a random token (the rest keep their token).
  config.masking = 'token'  # Unit of masking: 'token', 'whole_word', 'ngram' (ALBERT), 'span' (SpanBERT).
  # P per row; None -> ceil(mask_rate * L) rounded up to a multiple of 8.
  config.max_predictions = ml_collections.config_dict.placeholder(int)
  config.static_masking = False  # BERT: dupe_factor fixed masks (epoch e uses copy e % dupe_factor).
  config.dupe_factor = 10  # Number of static mask copies.
  config.shuffle_seed = 0  # Seeds example construction, shuffling and masking: the whole batch sequence.
  config.num_workers = 0  # grain worker processes (0: build batches in the main process).
  config.prefetch = 2  # Batches prepared ahead in a background thread (0: none).

  config.update(overrides)
  return config


def get_eval_data_config() -> ml_collections.ConfigDict:
  """The `config.eval_data` section: config.data fields that validation takes instead.

  Unset (None) fields follow config.data. E.g. `--config.eval_data.mask_rate=0.15` validates a
  run trained at any masking rate at BERT's 15%, as Wettig et al. 2022 compare their rates.
  """
  placeholder = ml_collections.config_dict.placeholder
  config = ml_collections.ConfigDict()
  config.eval_split = placeholder(str)  # Split to validate on.
  config.mask_rate = placeholder(float)  # Fraction of non-special tokens to predict.
  config.mask_token_prob = placeholder(float)  # Of those: replaced by [MASK] ...
  config.random_token_prob = placeholder(float)  # ... by a random token.
  config.masking = placeholder(str)  # 'token', 'whole_word', 'ngram' or 'span'.
  config.max_predictions = placeholder(int)  # P per validation row.
  config.static_masking = placeholder(bool)  # Fixed (dupe_factor) or fresh masks.
  return config
