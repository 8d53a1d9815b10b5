"""Offline tooling: CSV frames, training, evaluation, detection over frames, plots, ONNX export, synthetic data, replay."""
