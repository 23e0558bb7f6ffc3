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
