"""Training-step benchmarks of our encoder against HF Flax and PyTorch BERT (issue 5)."""
