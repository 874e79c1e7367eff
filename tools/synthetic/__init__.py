"""Synthetic models for tests and benchmarks: a Llama-style decoder of any size and a
planted-outlier transformer block, with their data (``tools/make_decoder.py`` is the CLI)."""
