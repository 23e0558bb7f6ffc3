"""Run with NUMBA_ENABLE_CUDASIM=1 set before numba is imported (tests/test_cuda_simulator.py does).

Every launcher here picks from tiny tiles, so each case spans several blocks per
axis with ragged edges, and the grid cap is small, so every kernel's loop over
its blocks or elements runs more than one round.
"""
import os
import sys

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    raise RuntimeError("tests/cudasim needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported; "
                       "run it through tests/test_cuda_simulator.py")

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: reference, case lists

from gpuconv.kernels import numba_cuda_kernels as cuda_kernels  # noqa: E402
from gpuconv.kernels.numba_cuda_kernels import ConvTile, WeightGradTile  # noqa: E402

TINY_CONV_TILES = (ConvTile(2, 4, 2, 2, 2), ConvTile(3, 2, 1, 3, 1))
TINY_WEIGHT_GRAD_TILES = (WeightGradTile(4, 4, 4, 2, 2), WeightGradTile(2, 6, 2, 2, 3))

cuda_kernels.CONV_TILES = TINY_CONV_TILES
cuda_kernels.WEIGHT_GRAD_TILES = TINY_WEIGHT_GRAD_TILES
cuda_kernels.THREADS_1D = 8
cuda_kernels.MAX_BLOCKS = 6
cuda_kernels.TARGET_BLOCKS = 5


@pytest.fixture(autouse=True)
def every_output_poisoned(poison_gpu_outputs):
    """See tests/conftest.py: outputs start as NaN, so an unwritten element fails its test."""
