"""Run with NUMBA_ENABLE_CUDASIM=1 or GPUCONV_CUDA_EMULATOR=1 set before import (tests/backends/test_simulated_gpu.py does).

The same tests serve both GPU backends (see gpu_under_test.py). Every launcher
here picks from tiny tiles, so each case spans several blocks per axis with
ragged edges, and the grid cap is small, so every kernel's loop over its blocks
or elements runs more than one round.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # gpu_under_test (tests/ itself comes with tests/conftest.py)

import gpu_under_test  # noqa: E402,F401  (refuses to run without a simulated GPU)
from gpuconv.kernels.gpu import tiling  # noqa: E402
from gpuconv.kernels.gpu.tiling import ConvTile, WeightGradTile  # noqa: E402

TINY_CONV_TILES = (ConvTile(2, 4, 2, 2, 2), ConvTile(3, 2, 1, 3, 1))
TINY_WEIGHT_GRAD_TILES = (WeightGradTile(4, 4, 4, 2, 2), WeightGradTile(2, 6, 2, 2, 3))

tiling.CONV_TILES = TINY_CONV_TILES
tiling.WEIGHT_GRAD_TILES = TINY_WEIGHT_GRAD_TILES
tiling.THREADS_1D = 8
tiling.MAX_BLOCKS = 6
tiling.TARGET_BLOCKS = 5


@pytest.fixture(autouse=True)
def every_output_poisoned(poison_gpu_outputs):
    """See tests/conftest.py: outputs start as NaN, so an unwritten element fails its test."""
