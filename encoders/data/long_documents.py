"""Documents longer than 512 tokens whose label is read at their end: the topic task's articles
(encoders/data/finetune_data.py's title-hash splits) concatenated, a lead of other topics first.

Each document is a lead of articles of random other topics, together at least `lead_tokens`
tokens, then `evidence` articles of the labelled topic (the first is the split's record, so every
record of a split gives one document and no article crosses splits). A model reading only the
first 512 tokens never sees the evidence when lead_tokens >= 510: at best it rules out the lead's
topics. That is what makes truncation, sliding windows and extended positions differ
(encoders/adaptation/long_inputs.py, experiments/long_inputs.py).
"""
import dataclasses

import numpy as np

@dataclasses.dataclass
class Documents:
  texts: list[str]
  labels: list[int]
  lead_tokens: list[int]  # Tokens before the evidence, per document.
  num_tokens: list[int]  # Tokens of the whole document (no specials).


def build(records: list[dict], tokenizer, num_documents: int, lead_tokens: int, evidence: int,
          max_tokens: int, seed: int) -> Documents:
  """`num_documents` documents of at most `max_tokens` tokens from `records` (dicts with 'text'
  and 'topic' ids); a draw that comes out longer is dropped for the split's next record."""
  rng = np.random.default_rng(seed)
  lengths = [len(e.ids) for e in tokenizer.backend.encode_batch(
      [r['text'] for r in records], add_special_tokens=False)]
  by_topic = {}
  for i, record in enumerate(records):
    by_topic.setdefault(record['topic'], []).append(i)
  topics = sorted(by_topic)
  texts, labels, leads, totals = [], [], [], []
  for i in rng.permutation(len(records)):
    if len(texts) == num_documents:
      break
    label = records[i]['topic']
    others = [t for t in topics if t != label]
    lead, lead_length = [], 0
    while lead_length < lead_tokens:
      j = rng.choice(by_topic[others[rng.integers(len(others))]])
      lead.append(j)
      lead_length += lengths[j]
    same = [j for j in by_topic[label] if j != i]
    chosen = [i] + list(rng.choice(same, size=evidence - 1, replace=False))
    total = lead_length + sum(lengths[j] for j in chosen)  # Joined by spaces: no new tokens.
    if total > max_tokens:
      continue
    texts.append(' '.join(records[j]['text'] for j in lead + chosen))
    labels.append(int(label))
    leads.append(lead_length)
    totals.append(total)
  if len(texts) < num_documents:
    raise ValueError(f'{len(texts)} of {num_documents} documents fit in {max_tokens} tokens: '
                     'raise max_tokens or lower lead_tokens / evidence.')
  return Documents(texts, labels, leads, totals)

