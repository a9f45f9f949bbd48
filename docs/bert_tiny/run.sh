#!/bin/bash
# The README's main command, as it was run for metrics.jsonl here (the progress bar off, so the
# log holds only the validation lines; it does not change what is trained). On this 2-core
# machine, sharing it with experiments.benchmark_data_scale and the test suite.
set -euo pipefail
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m experiments.pretrain --config configs/bert.py:tiny \
    --workdir workdirs/bert_tiny --config.train.progress_bar=False
cp workdirs/bert_tiny/metrics.jsonl docs/bert_tiny/metrics.jsonl
