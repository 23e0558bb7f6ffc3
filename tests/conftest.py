import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import gpuconv

# The CUDA simulator tests need a process of their own (test_cuda_simulator.py starts them).
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]

settings.register_profile("ci", deadline=None, max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def cpu_backend():
    """Tests in this directory run on the CPU backend unless they choose otherwise."""
    with gpuconv.use_backend("cpu"):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def poison_gpu_outputs(monkeypatch):
    """Fill every array the 'numba' backend allocates with NaN (-7 for integers) before its kernel runs.

    A kernel that skips an element then fails the comparison, instead of passing on
    memory that happened to hold the right value or zeros.
    """
    from gpuconv.kernels import numba_cuda
    allocate = numba_cuda._new

    def poisoned(shape, dtype, what):
        array = allocate(shape, dtype, what)
        array.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
        return array

    monkeypatch.setattr(numba_cuda, "_new", poisoned)
