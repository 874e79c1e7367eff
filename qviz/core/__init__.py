"""Qt-free engine: formats, statistics, calibrators, metrics, model loading, execution, export."""
