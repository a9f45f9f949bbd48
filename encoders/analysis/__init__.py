"""Look inside trained encoders: attention, hidden states, probes, per-token loss, checkpoint health,
word order.

Everything but word order works on a `Subject` (encoders/analysis/subject.py): the model, params and
tokenizer of one of our workdirs (any saved step) or of an HF checkpoint directory, rebuilt unrolled
and without remat so that every layer's attention weights and hidden states can be read. Word order
reads a pretraining workdir's own objective and validation batches instead
(`word_order.measure(workdir, step)`).

  from encoders.analysis import attention, subject
  model = subject.load('workdirs/bert_tiny')            # or subject.load(hf_dir), step=...
  weights, tokens = attention.attention_maps(model, ['paris is the capital of france.'])
  attention.head_statistics(weights, ...)

`experiments/analyze.py` runs each analysis as one command and writes its files.
"""
