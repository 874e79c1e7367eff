"""qviz: an interactive visualizer for quantization error."""

__version__ = "0.1.0"
