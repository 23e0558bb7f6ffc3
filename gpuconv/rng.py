"""The library's random source: initializers, dropout masks and shuffling all draw from it.

``gpuconv.set_seed(s)`` makes a run reproducible: on the CPU backend the same seed gives the
same weights, bit for bit (the CPU kernels are deterministic).
"""
import contextlib

import numpy as np

_generator = np.random.default_rng()


def set_seed(seed):
    """Reseed the generator behind weight initialization, dropout and shuffling."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator():
    """The current ``numpy.random.Generator`` (host side; GPU backends copy what they draw)."""
    return _generator


@contextlib.contextmanager
def preserved():
    """Run a block without moving the generator on (e.g. building a model whose weights are then loaded)."""
    state = _generator.bit_generator.state
    try:
        yield
    finally:
        _generator.bit_generator.state = state
