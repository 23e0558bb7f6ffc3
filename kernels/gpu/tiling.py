"""Tiles and launch planning shared by the GPU backends (Numba CUDA and CUDA C): plain Python, no GPU needed.

Both backends implement the same tiled algorithms with the same tile parameters,
so one planner serves both: tile choice by shape, grid sizes, and the split of
the dW reduction. Tests replace the tile lists and limits with tiny ones.
"""
import functools
from collections import namedtuple

ConvTile = namedtuple("ConvTile", "rows cols cols_per_thread filters channels")
ConvTile.__doc__ = """Conv block: ``rows x cols`` threads; each computes ``filters`` output channels at
``cols_per_thread`` output columns (``cols`` apart), staging ``channels`` input channels at a time."""
WeightGradTile = namedtuple("WeightGradTile", "filters taps chunk threads_k threads_j")
WeightGradTile.__doc__ = """dW block: a ``filters x taps`` tile of dW (taps = C*R*S index), reducing ``chunk``
positions of N*OH*OW at a time over ``threads_k x threads_j`` threads."""

# The launcher picks among these by shape (tests replace them with tiny tiles).
CONV_TILES = (
    ConvTile(8, 16, 4, 8, 4),   # 8 x 64 outputs: wide images
    ConvTile(8, 16, 2, 8, 4),   # 8 x 32
    ConvTile(8, 8, 2, 8, 4),    # 8 x 16: small images
    ConvTile(8, 16, 2, 8, 1),   # few input channels (first layers)
    ConvTile(8, 8, 2, 16, 1),
)
WEIGHT_GRAD_TILES = (
    WeightGradTile(64, 64, 16, 16, 16),  # 256 threads, 4 x 4 outputs each
    WeightGradTile(32, 32, 16, 8, 8),    # 64 threads, 4 x 4 outputs each
)
THREADS_1D = 256            # elementwise kernels (pooling, ReLU, reductions)
MAX_BLOCKS = 1 << 16        # grid cap: kernels loop over the rest
TARGET_BLOCKS = 4 * 132     # blocks that fill the GPU a few times over (the launcher uses 4 x its SMs)
SHARED_LIMIT = 48 << 10     # static shared memory per block


def conv_shared_bytes(tile, geometry, itemsize):
    """Shared memory of a conv block: the input tile with halo plus the filter slice."""
    R, S, sh, sw, dh, dw = geometry[:6]
    in_h = (tile.rows - 1) * sh + (R - 1) * dh + 1
    in_w = (tile.cols * tile.cols_per_thread - 1) * sw + (S - 1) * dw + 1
    return itemsize * tile.channels * (in_h * in_w + tile.filters * R * S)


@functools.lru_cache(maxsize=1024)
def choose_conv_tile(C, K, OH, OW, geometry, itemsize, tiles=None):
    """The tile that wastes the least work on this shape (ragged edges, padded channel and filter chunks).

    Ties go to the earlier (larger) tile. Tiles whose shared memory exceeds
    ``SHARED_LIMIT`` are skipped.
    """
    best, best_cost = None, None
    for tile in CONV_TILES if tiles is None else tiles:
        if conv_shared_bytes(tile, geometry, itemsize) > SHARED_LIMIT:
            continue
        out_w = tile.cols * tile.cols_per_thread
        padded = (ceil_div(OH, tile.rows) * tile.rows * ceil_div(OW, out_w) * out_w
                  * ceil_div(C, tile.channels) * tile.channels * ceil_div(K, tile.filters) * tile.filters)
        cost = padded / (OH * OW * C * K)
        if best_cost is None or cost < best_cost * 0.999:
            best, best_cost = tile, cost
    if best is None:
        raise ValueError(f"no conv tile fits {SHARED_LIMIT} bytes of shared memory for kernel geometry "
                         f"(R, S, stride, dilation) = {geometry[:6]}; use a smaller dilation or stride")
    return best


@functools.lru_cache(maxsize=1024)
def choose_weight_grad_tile(K, CRS, tiles=None):
    """The dW tile that wastes the least of its ``filters x taps`` block on this K x C*R*S."""
    tiles = WEIGHT_GRAD_TILES if tiles is None else tiles
    return min(tiles, key=lambda t: ceil_div(K, t.filters) * t.filters * ceil_div(CRS, t.taps) * t.taps)


def weight_grad_splits(k_tiles, j_tiles, chunks, target_blocks=None):
    """Split the reduction into contiguous chunk ranges: ``(splits, chunks_per_split)``.

    Enough splits to give about ``TARGET_BLOCKS`` blocks; depends only on the
    shape, so the summation order is the same on every run.
    """
    target = TARGET_BLOCKS if target_blocks is None else target_blocks
    wanted = max(1, min(chunks, target // max(1, k_tiles * j_tiles)))
    per_split = ceil_div(chunks, wanted)
    return ceil_div(chunks, per_split), per_split


def grid_blocks(work_items, per_block):
    """Blocks to launch for ``work_items`` split ``per_block`` a block; kernels loop past the cap."""
    return int(max(1, min(ceil_div(work_items, per_block), MAX_BLOCKS)))


def ceil_div(a, b):
    return -(-a // b)


def conv_tile_count(N, K, OH, OW, tile):
    """Work items of the conv kernel: one per (image, filter slice, output tile)."""
    return (N * ceil_div(K, tile.filters) * ceil_div(OH, tile.rows)
            * ceil_div(OW, tile.cols * tile.cols_per_thread))


