"""Transforms that remove quantization error beyond clipping: SmoothQuant, cross-layer
equalization, bias correction and GPTQ rounding; each a pure function of the statistics and
the weights (see ``docs/architecture.md``)."""
