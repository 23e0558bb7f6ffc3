"""Filter an image larger than memory: gpuconv.signal on a chunked Dask array, written to a NumPy memmap.

    python examples/filter_large_image.py                              # 20000 x 20000 float32, 2048^2 chunks
    python examples/filter_large_image.py --size 4096 --chunk 512 --scheduler distributed --workers 2

A synthetic grey image (smooth blobs plus noise) is generated lazily, chunk by chunk, so it is never whole
in memory. It is smoothed with the lectures' Gaussian blur, then its edges are found with the Sobel pair
(left and top), all with scipy.signal's 'same' mode and 'symm' boundary: edges = hypot(Sobel_left * blur,
Sobel_top * blur). The result goes to a .npy file (a memmap, written block by block, renamed into place
when complete). Prints the throughput in megapixels of input per second and the peak memory.
Needs the dask extra: pip install -e '.[dask]'.

Memory: a stencil computed in one Dask graph keeps a front of intermediate chunks that grew with the
image's area here (22, 57 and 133 MiB traced for 2048^2, 4096^2 and 8192^2 images in 512^2 chunks), so
the output is written in bands of ``--band`` chunk rows, one graph each: the peak then grows with the
image's width only (21, 36 and 61 MiB), at the price of recomputing the blurred rows at band edges.
With ``--scheduler distributed`` the worker processes hold the intermediates, and one graph is sent.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np

import gpuconv
import gpuconv.signal as gs


def synthetic_image(size, chunk, seed=0):
    """A lazy (size, size) float32 image: smooth blobs plus noise, each chunk made where it is needed."""
    import dask.array as da

    def make(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        rng = np.random.default_rng([seed, r0, c0])
        blobs = np.sin(rows / 97.0) * np.cos(cols / 61.0) + 0.5 * np.sin((rows + cols) / 23.0)
        return (blobs + 0.2 * rng.standard_normal(blobs.shape, np.float32)).astype(np.float32)

    return da.map_blocks(make, chunks=da.core.normalize_chunks(chunk, (size, size)), dtype=np.float32,
                         meta=np.empty((0, 0), np.float32))


def edges(image):
    """Sobel edge magnitude of the Gaussian-blurred image (lazy, same shape)."""
    import dask.array as da
    blurred = gs.correlate2d(image, gs.GAUSSIAN_BLUR, mode="same", boundary="symm")
    left = gs.correlate2d(blurred, gs.SOBEL_LEFT, mode="same", boundary="symm")
    top = gs.correlate2d(blurred, gs.SOBEL_TOP, mode="same", boundary="symm")
    return da.hypot(left, top)


class MemmapTarget:
    """A .npy file that Dask's ``store`` writes block by block, from threads or worker processes.

    It pickles as its path: each writer maps the file itself (a memmap would pickle as a copy).
    """

    def __init__(self, path, shape, dtype):
        self.path = path
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()

    def __setitem__(self, index, block):
        target = np.load(self.path, mmap_mode="r+")
        target[index] = block
        target.flush()


def run(size=20000, chunk=2048, scheduler="threads", workers=2, out=None, progress=True, band=2, filter=None):
    """Filter a synthetic size x size image with ``filter`` (default ``edges``); returns a dict of figures
    (seconds, megapixels/s, peak MB)."""
    import dask
    import dask.array as da
    result = (filter or edges)(synthetic_image(size, chunk))
    rows = band * chunk
    out = out or os.path.join("out", f"edges-{size}.npy")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = f"{out}.partial.npy"
    target = MemmapTarget(partial, result.shape, result.dtype)
    start = time.perf_counter()  # for the distributed scheduler: once its cluster is up
    bands = [da.store(result[r0:r0 + rows], target, regions=(slice(r0, r0 + rows), slice(None)), lock=False,
                      compute=False) for r0 in range(0, size, rows)]
    try:
        if scheduler == "distributed":
            # the workers hold the intermediates, not this process: one graph, no recomputed band edges
            from distributed import Client, LocalCluster, progress as show
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                start = time.perf_counter()
                future = client.compute(da.store(result, target, lock=False, compute=False))
                if progress:
                    show(future)
                future.result()
        else:
            with dask.config.set(scheduler="threads", num_workers=workers):
                for stored in _bar(bands, progress):
                    dask.compute(stored)
        os.replace(partial, out)  # complete: only now under its name
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    seconds = time.perf_counter() - start
    return dict(size=size, chunk=chunk, scheduler=scheduler, workers=workers, seconds=seconds,
                megapixels_per_s=size * size / seconds / 1e6, out=out,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _bar(bands, show):
    if not show:
        return bands
    from tqdm import tqdm
    return tqdm(bands, desc="row bands", unit="band", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000, help="image side in pixels")
    parser.add_argument("--chunk", type=int, default=2048, help="chunk side in pixels")
    parser.add_argument("--scheduler", choices=["threads", "distributed"], default="threads")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads or worker processes")
    parser.add_argument("--band", type=int, default=2, help="chunk rows per Dask graph (bounds the memory)")
    parser.add_argument("--out", default=None, help="the .npy file to write (default out/edges-SIZE.npy)")
    parser.add_argument("--backend", default=None, help="auto, cpu, numba or cupy")
    args = parser.parse_args(argv)
    if args.backend:
        gpuconv.set_backend(args.backend)
    figures = run(args.size, args.chunk, args.scheduler, args.workers, args.out, progress=sys.stderr.isatty(),
                  band=args.band)
    print(f"{args.size}x{args.size} float32 in {args.chunk}^2 chunks, {args.scheduler} scheduler, "
          f"{args.workers} workers: {figures['seconds']:.1f} s, {figures['megapixels_per_s']:.1f} megapixels/s, "
          f"peak memory {figures['peak_rss_mb']:.0f} MB (this process); wrote {figures['out']}")
    return figures


if __name__ == "__main__":
    main()
