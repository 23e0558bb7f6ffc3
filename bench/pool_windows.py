"""Pooling beyond the suite's 2x2 windows: gpuconv's CPU kernels against PyTorch's, side by side.

    python bench/pool_windows.py --repeats 40 --json bench/results/pool-windows-cpu-2cores-<date>-<commit>.json

The suite (``python -m bench``) pools 2x2 windows at stride 2, Keras's default, on the seeds' shapes;
this covers the other windows users meet: 3x3 at stride 2 (a ResNet stem's, padded or not), 3x3 at
stride 1 (overlapping by two), 3x3 at stride 3 (windows that tile the input). For each case and mode
(max, average) it times forward and backward: our kernels as the layers call them
(``pool2d_forward`` / ``pool2d_backward``), PyTorch's ATen ops with its default threads (average
pooling without the padding in the count, as Keras's 'same' does). Results are checked against
PyTorch's before timing; the method is the suite's (``timing.measure_interleaved``: warm-up, targets
interleaved in rounds after a pause, medians). PyTorch is needed: it is the yardstick.
"""
import argparse
import json
import os
import datetime
import platform
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.suite import torch_pool_ops  # noqa: E402
from bench.timing import WallClock, measure_interleaved  # noqa: E402

# name: (N, C, H, W), window, stride, padding (each side)
CASES = {
    "resnet_stem": ((32, 64, 56, 56), 3, 2, 1),
    "mnist_conv1_3x3s2": ((128, 32, 28, 28), 3, 2, 1),
    "neu_conv3_3x3s2": ((16, 128, 50, 50), 3, 2, 0),
    "overlap_3x3s1": ((64, 64, 32, 32), 3, 1, 1),
    "tiled_3x3s3": ((128, 32, 27, 27), 3, 3, 0),
}
BUFFERS = 3
TOLERANCE = 1e-5  # max |ours - PyTorch| / max |PyTorch|, float32


def _relative_error(ours, theirs):
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def run_case(name, mode, repeats, rng):
    import torch

    from gpuconv.kernels.cpu import backend as cpu
    shape, window, stride, pad = CASES[name]
    pool, strides, padding = (window, window), (stride, stride), ((pad, pad), (pad, pad))
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(BUFFERS)]
    ys = [cpu.pool2d_forward(x, mode, pool, strides, padding) for x in xs]
    dys = [rng.standard_normal(y.shape).astype(np.float32) for y, _ in ys]
    forward, backward = torch_pool_ops(torch, mode, window, stride, pad)
    txs = [torch.from_numpy(x) for x in xs]
    tys = [forward(t) for t in txs]
    tdys = [torch.from_numpy(dy) for dy in dys]
    errors = {
        "forward": _relative_error(ys[0][0], tys[0][0].numpy()),
        "backward": _relative_error(cpu.pool2d_backward(dys[0], ys[0][1], shape, mode, pool, strides, padding),
                                    backward(tdys[0], txs[0], tys[0][1]).numpy()),
    }
    for direction, error in errors.items():
        if not error <= TOLERANCE:
            raise AssertionError(f"{name} {mode} {direction}: relative error {error:.2e} against PyTorch")
    ours_forward = [lambda x=x: cpu.pool2d_forward(x, mode, pool, strides, padding) for x in xs]
    ours_backward = [lambda dy=dy, a=a: cpu.pool2d_backward(dy, a, shape, mode, pool, strides, padding)
                     for dy, (_, a) in zip(dys, ys)]
    torch_forward = [lambda t=t: forward(t) for t in txs]
    torch_backward = [lambda dy=dy, t=t, ty=ty: backward(dy, t, ty[1]) for dy, t, ty in zip(tdys, txs, tys)]
    clock = WallClock()
    timed = measure_interleaved([(calls, clock, None) for calls in
                                 (ours_forward, torch_forward, ours_backward, torch_backward)], repeats, warmup=3)
    ms = [t["median_s"] * 1e3 for t in timed]
    return dict(case=name, mode=mode, shape=list(shape), window=window, stride=stride, padding=pad,
                forward_ms=ms[0], torch_forward_ms=ms[1], forward_ratio=ms[1] / ms[0],
                backward_ms=ms[2], torch_backward_ms=ms[3], backward_ratio=ms[3] / ms[2],
                relative_error=errors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--modes", nargs="+", choices=["max", "avg"], default=["max", "avg"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import torch
    rng = np.random.default_rng(0)
    rows = []
    table = ["| case | mode | forward ms (ours / PyTorch) | ratio | backward ms (ours / PyTorch) | ratio |",
             "|---|---|---|---|---|---|"]
    print("\n".join(table), flush=True)
    for name in args.cases:
        for mode in args.modes:
            row = run_case(name, mode, args.repeats, rng)
            rows.append(row)
            table.append(f"| {name} {tuple(row['shape'])} {row['window']}x{row['window']}/{row['stride']} "
                         f"pad {row['padding']} | {mode} | {row['forward_ms']:.3f} / {row['torch_forward_ms']:.3f} "
                         f"| {row['forward_ratio']:.2f} | {row['backward_ms']:.3f} / {row['torch_backward_ms']:.3f} "
                         f"| {row['backward_ratio']:.2f} |")
            print(table[-1], flush=True)
    results = dict(rows=rows, ratio="PyTorch time / ours (above 1: gpuconv faster)", repeats=args.repeats,
                   cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                   machine=platform.processor() or platform.machine(), commit=_commit(),
                   date=datetime.date.today().isoformat())
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write(f"Pooling beyond 2x2/2, CPU, {results['date']}, commit {results['commit']}, PyTorch "
                    f"{results['torch']} ({results['torch_threads']} threads), medians of {args.repeats}; "
                    f"ratio = PyTorch time / ours.\n\n" + "\n".join(table) + "\n")
    return results


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
