import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import gpuconv
from gpuconv import backend

# The simulated-GPU tests need a process of their own (backends/test_simulated_gpu.py starts them).
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or os.environ.get("GPUCONV_CUDA_EMULATOR") == "1"
collect_ignore = [] if SIMULATED else ["backends/simulated"]

settings.register_profile("ci", deadline=None, max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def cpu_backend():
    """Tests in this directory run on the CPU backend unless they choose otherwise."""
    with gpuconv.use_backend("cpu"):
        yield


def available_backends():
    """'cpu', and each GPU backend this process can run: on a real GPU, or on its host stand-in (the simulated
    processes of backends/test_simulated_gpu.py, with the simulator or the emulator switched on)."""
    return ["cpu"] + [name for name in ("numba", "cupy") if backend.gpu_present() or backend.is_simulated(name)]


@pytest.fixture(params=available_backends())
def backend_name(request):
    """Runs the test once per available backend, inside ``use_backend``; move inputs with ``backend.to_device``."""
    with gpuconv.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def poison_gpu_outputs(monkeypatch):
    """Fill every array a GPU backend allocates with NaN (-7 for integers) before its kernel runs.

    A kernel that skips an element then fails the comparison, instead of passing on
    memory that happened to hold the right value or zeros.
    """
    from gpuconv.kernels.gpu.ops import GpuOps
    allocate = GpuOps._new

    def poisoned(self, shape, dtype, what):
        array = allocate(self, shape, dtype, what)
        array.fill(np.nan if np.dtype(dtype).kind == "f" else -7)
        return array

    monkeypatch.setattr(GpuOps, "_new", poisoned)
