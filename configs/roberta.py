"""RoBERTa (Liu et al. 2019): BERT's modules with BPE, one token type and offset positions.

  python -m experiments.pretrain --config configs/roberta.py:base --workdir DIR

Argument: `size` (tiny, mini, small, medium, base, large).
"""
import ml_collections

from encoders.configs import bert, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = common.parse_arg(arg, size='base').size
  config = bert.get_config(size)
  config.model.family = 'roberta'
  # GPT-2's byte-level BPE plus RoBERTa's specials (tiny trains a small BPE on the corpus).
  config.model.vocab_size = common.TINY_VOCAB_SIZE if size == 'tiny' else 50265
  config.model.type_vocab_size = 1
  config.model.pad_token_id = 1  # <s>=0, <pad>=1, </s>=2, <unk>=3.
  config.model.position_offset = 2  # fairseq counts positions from pad_token_id + 1.
  config.model.max_position_embeddings = 514  # 512 usable positions after the offset.
  config.model.layer_norm_eps = 1e-5
  config.data.tokenizer = 'bpe'  # Byte-level BPE, cased.
  config.data.lowercase = False
  config.data.input_format = 'full_sentences'  # RoBERTa Table 2: no NSP, rows may cross documents.
  config.data.short_seq_prob = 0.0  # RoBERTa always trains on full-length rows.
  config.data.static_masking = False  # Dynamic masking (RoBERTa Table 1).
  return config
