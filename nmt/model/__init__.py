"""The Transformer: layers, attention, the incremental decoder and its cache, oneDNN kernels."""
