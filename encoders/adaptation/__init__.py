"""Adapting a pretrained encoder: fine-tuning with task heads, LoRA and bottleneck adapters,
Sentence-BERT embedding training, retrieval metrics and the offline evaluation suite.

Pretraining's machinery (sharding, optimizer, checkpointing, train state) is shared from
encoders/training; examples come from encoders/data.
"""
