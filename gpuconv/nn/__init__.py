"""The Keras-style stack over gpuconv's autograd: ``layers``, ``model`` (``Sequential``), ``losses``,
``optimizers`` and ``callbacks``. Users reach them as ``gpuconv.layers``, ``gpuconv.Sequential``, ...
"""
from gpuconv.nn import callbacks, layers, losses, optimizers
from gpuconv.nn.model import Sequential

__all__ = ["Sequential", "callbacks", "layers", "losses", "optimizers"]
