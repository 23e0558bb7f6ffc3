"""The library's random source: initializers, dropout masks and shuffling all draw from it.

``gpuconv.set_seed(s)`` makes a run reproducible: on the CPU backend the same seed gives the
same weights, bit for bit (the CPU kernels are deterministic).
"""
import numpy as np

_generator = np.random.default_rng()


def set_seed(seed):
    """Reseed the generator behind weight initialization, dropout and shuffling."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator():
    """The current ``numpy.random.Generator`` (host side; GPU backends copy what they draw)."""
    return _generator
