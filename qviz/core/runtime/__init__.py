"""Everything that talks to ONNX Runtime.

``sessions``: every session qviz builds (float, simulation, native int8) and runs; ``cpu``:
whether this machine's int8 kernels saturate, with its override; ``defaults``: the settings a
new session starts from on this machine; ``fusion``: which layers ORT turned into integer
kernels, and why not; ``latency``: two sessions timed side by side.
"""
