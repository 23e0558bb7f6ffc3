"""The large-image example's throughput: gpuconv.signal on Dask against dask_image (scipy.ndimage), same chunks.

    python bench/dask_filter.py                       # the example's image: 20000^2 float32 in 2048^2 chunks
    python bench/dask_filter.py --size 8192 --json bench/results/dask-filter.json

Both engines compute the same edges (Sobel magnitude of the Gaussian-blurred image; scipy.signal's 'symm'
boundary is scipy.ndimage's 'reflect') through the example's own runner (row bands written to a memmap),
on the threaded scheduler and on a LocalCluster of worker processes. The results are compared on a
smaller image first; the run fails if they differ.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import filter_large_image as example  # noqa: E402
import gpuconv.signal as gs  # noqa: E402


def dask_image_edges(image):
    import dask.array as da
    from dask_image import ndfilters
    blurred = ndfilters.correlate(image, gs.GAUSSIAN_BLUR, mode="reflect")
    return da.hypot(ndfilters.correlate(blurred, gs.SOBEL_LEFT, mode="reflect"),
                    ndfilters.correlate(blurred, gs.SOBEL_TOP, mode="reflect"))


ENGINES = {"gpuconv": example.edges, "dask_image": dask_image_edges}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--schedulers", nargs="+", default=["threads", "distributed"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    check = example.synthetic_image(1024, 256)
    difference = float(np.abs(example.edges(check).compute() - dask_image_edges(check).compute()).max())
    print(f"max |gpuconv - dask_image| on a 1024^2 check: {difference:.2e}")
    if difference > 1e-4:
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in args.schedulers:
            for engine, function in ENGINES.items():
                figures = example.run(args.size, args.chunk, scheduler, args.workers, os.path.join(tmp, "out.npy"),
                                      progress=False, filter=function)
                figures.update(engine=engine)
                figures.pop("out")
                rows.append(figures)
                print(f"{engine:<11} {scheduler:<12} {figures['seconds']:7.1f} s  "
                      f"{figures['megapixels_per_s']:6.2f} megapixels/s", flush=True)
    result = dict(rows=rows, check_max_abs_difference=difference, cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
