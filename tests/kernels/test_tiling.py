"""Host-side planning of the GPU launches (tile choice, grid sizes, splits), on the CPU without a GPU."""
import itertools

import pytest

from gpuconv.kernels.gpu import tiling as plan
from gpuconv.kernels.gpu.tiling import ConvTile

THREE_BY_THREE = (3, 3, 1, 1, 1, 1, 1, 1)


def test_conv_tile_follows_the_shape():
    first_layer = plan.choose_conv_tile(1, 32, 28, 28, THREE_BY_THREE, 4)
    assert first_layer.channels == 1  # no wasted channel chunk for a 1-channel image
    wide = plan.choose_conv_tile(64, 64, 56, 128, THREE_BY_THREE, 4)
    assert wide.cols * wide.cols_per_thread == 64 and wide.channels == 4
    small = plan.choose_conv_tile(32, 64, 14, 14, THREE_BY_THREE, 4)
    assert small.cols * small.cols_per_thread == 16


def test_conv_tile_respects_shared_memory():
    huge = (9, 9, 4, 4, 3, 3, 1, 1)  # stride 4, dilation 3: wide halos
    tile = plan.choose_conv_tile(64, 64, 50, 50, huge, 8)
    assert plan.conv_shared_bytes(tile, huge, 8) <= plan.SHARED_LIMIT
    with pytest.raises(ValueError, match=r"no conv tile fits .* shared memory .*\(31, 31, 8, 8, 4, 4\)"):
        plan.choose_conv_tile(64, 64, 50, 50, (31, 31, 8, 8, 4, 4, 1, 1), 8)


def test_shared_bytes_formula():
    tile = ConvTile(rows=8, cols=16, cols_per_thread=4, filters=8, channels=4)
    # input tile (8-1)*1 + 2 + 1 = 10 rows, (64-1) + 2 + 1 = 66 columns, 4 channels; filters 8 x 4 x 9
    assert plan.conv_shared_bytes(tile, THREE_BY_THREE, 4) == 4 * (4 * 10 * 66 + 8 * 4 * 9)


def test_weight_grad_splits_cover_every_chunk_once():
    for k_tiles, j_tiles, chunks, target in itertools.product([1, 2, 7], [1, 3, 40], [1, 2, 5, 97, 10**6],
                                                              [1, 8, 528]):
        splits, per_split = plan.weight_grad_splits(k_tiles, j_tiles, chunks, target)
        assert splits >= 1 and per_split >= 1
        assert (splits - 1) * per_split < chunks <= splits * per_split  # no empty split, none left over
        assert splits * k_tiles * j_tiles <= max(target, k_tiles * j_tiles) + k_tiles * j_tiles


def test_grids_stay_within_limits_for_huge_tensors():
    assert plan.grid_blocks(0, 256) == 1
    assert plan.grid_blocks(2**40, 256) == plan.MAX_BLOCKS <= 2**31 - 1
    tiles = plan.conv_tile_count(2**20, 4096, 4096, 4096, plan.CONV_TILES[0])  # far past 2**31 work items
    assert tiles > 2**31 and plan.grid_blocks(tiles, 1) == plan.MAX_BLOCKS
