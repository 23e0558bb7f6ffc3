import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import gpuconv

# The simulated-GPU tests need a process of their own (test_simulated_gpu.py starts them).
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("GPUCONV_CUDA_EMULATOR") == "1"
collect_ignore = [] if SIMULATED else ["simulated"]

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
    """Fill every array a GPU backend allocates with NaN (-7 for integers) before its kernel runs.

    A kernel that skips an element then fails the comparison, instead of passing on
    memory that happened to hold the right value or zeros.
    """
    from gpuconv.kernels.gpu_ops import GpuOps
    allocate = GpuOps._new

    def poisoned(self, shape, dtype, what):
        array = allocate(self, shape, dtype, what)
        array.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
        return array

    monkeypatch.setattr(GpuOps, "_new", poisoned)
