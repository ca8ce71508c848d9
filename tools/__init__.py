"""Tools beside the library: the PyTorch twin of the model, benchmarks, the results report."""
