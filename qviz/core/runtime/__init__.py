"""Everything that talks to ONNX Runtime.

``sessions``: every session qviz builds (float, simulation, native int8) and runs; ``cpu``:
whether this machine's int8 kernels saturate, with its override; ``fusion``: which layers ORT
turned into integer kernels, and why not; ``latency``: two sessions timed side by side.
"""
