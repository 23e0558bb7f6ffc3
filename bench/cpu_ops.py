"""CPU op benchmark: our Numba CPU kernels against PyTorch CPU (when importable) in one run.

    python bench/cpu_ops.py                 # all shapes, 20 repeats
    python bench/cpu_ops.py --repeats 50 --json bench/results/cpu.json

Reports, per shape: the first call (JIT compile or cache load) separately, then
the median (and min-max spread) of timed repeats after warm-up, GFLOP/s for
conv (2*N*K*OH*OW*C*R*S per pass) and GB/s for pooling (bytes read + written),
and the ratio PyTorch time / ours (> 1 means we are faster). PyTorch runs a
float64 conv first, because its small-channel float32 convs are slow until then:
we compare against its best.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from gpuconv.kernels import cpu as kern

# name: (N, C, H, W, K), 3x3 kernel, 'same' padding, stride 1
CONV_SHAPES = {
    "mnist_conv1": (128, 1, 28, 28, 32),
    "mnist_conv2": (128, 32, 14, 14, 64),
    "neu_conv1": (16, 1, 200, 200, 32),
    "neu_conv3": (16, 64, 50, 50, 128),
}
# name: (N, C, H, W), 2x2 window, stride 2, 'valid'
POOL_SHAPES = {"mnist_pool1": (128, 32, 28, 28)}

STRIDE, PAD, DIL = (1, 1), ((1, 1), (1, 1)), (1, 1)
POOL, POOL_PAD = (2, 2), ((0, 0), (0, 0))


def timed(fn, repeats, warmup=3):
    """(first call s, median s, min s, max s) of ``fn``."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times)), min(times), max(times)


def conv_cases(torch, repeats, rng):
    rows = []
    for name, (N, C, H, W, K) in CONV_SHAPES.items():
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
        b = rng.standard_normal(K).astype(np.float32)
        dy = rng.standard_normal((N, K, H, W)).astype(np.float32)
        flops = 2.0 * N * K * H * W * C * 9
        ours = {
            "forward": lambda: kern.conv2d_forward(x, w, b, STRIDE, PAD, DIL),
            "backward": lambda: (kern.conv2d_backward_input(dy, w, x.shape, STRIDE, PAD, DIL),
                                 kern.conv2d_backward_weight(dy, x, w.shape, STRIDE, PAD, DIL)),
        }
        theirs = {}
        if torch is not None:
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
            conv = torch.nn.functional.conv2d
            backward = torch.ops.aten.convolution_backward
            theirs = {
                "forward": lambda: conv(tx, tw, tb, padding=1),
                "backward": lambda: backward(tdy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                             [True, True, False]),
            }
        for op, fn in ours.items():
            first, med, lo, hi = timed(fn, repeats)
            pass_flops = flops * (2 if op == "backward" else 1)
            row = dict(op=f"conv2d_{op}", shape=name, first_call_s=first, median_ms=med * 1e3,
                       min_ms=lo * 1e3, max_ms=hi * 1e3, gflops=pass_flops / med / 1e9)
            if op in theirs:
                _, tmed, _, _ = timed(theirs[op], repeats)
                row.update(torch_ms=tmed * 1e3, torch_gflops=pass_flops / tmed / 1e9, ratio=tmed / med)
            rows.append(row)
        # forward + backward together, the bar's second figure
        f, bw = next(r for r in rows[-2:] if r["op"] == "conv2d_forward"), rows[-1]
        if "torch_ms" in f:
            total, ttotal = f["median_ms"] + bw["median_ms"], f["torch_ms"] + bw["torch_ms"]
            rows.append(dict(op="conv2d_fwd+bwd", shape=name, median_ms=total, torch_ms=ttotal,
                             gflops=3 * flops / total / 1e6, ratio=ttotal / total))
    return rows


def pool_cases(torch, repeats, rng):
    rows = []
    for name, (N, C, H, W) in POOL_SHAPES.items():
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        start = time.perf_counter()  # the first call, JIT compile included, is timed here
        y, argmax = kern.pool2d_forward(x, "max", POOL, POOL, POOL_PAD)
        first_forward = time.perf_counter() - start
        dy = np.ones_like(y)
        moved = {"forward": x.nbytes + y.nbytes + argmax.nbytes,
                 "backward": dy.nbytes + argmax.nbytes + x.nbytes}
        ours = {"forward": lambda: kern.pool2d_forward(x, "max", POOL, POOL, POOL_PAD),
                "backward": lambda: kern.pool2d_backward(dy, argmax, x.shape, "max", POOL, POOL, POOL_PAD)}
        theirs = {}
        if torch is not None:
            tx = torch.from_numpy(x)
            ty, tidx = torch.nn.functional.max_pool2d(tx, 2, return_indices=True)
            tdy = torch.from_numpy(dy)
            theirs = {"forward": lambda: torch.nn.functional.max_pool2d(tx, 2, return_indices=True),
                      "backward": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                          tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx)}
        for op, fn in ours.items():
            first, med, lo, hi = timed(fn, repeats)
            first = first_forward if op == "forward" else first
            row = dict(op=f"max_pool2d_{op}", shape=name, first_call_s=first, median_ms=med * 1e3,
                       min_ms=lo * 1e3, max_ms=hi * 1e3, gbps=moved[op] / med / 1e9)
            if op in theirs:
                _, tmed, _, _ = timed(theirs[op], repeats)
                row.update(torch_ms=tmed * 1e3, ratio=tmed / med)
            rows.append(row)
    return rows


def load_torch():
    try:
        import torch
    except ImportError:
        return None
    # warm its float convs up to their best (see module docstring)
    torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8, dtype=torch.float64),
                               torch.ones(1, 1, 3, 3, dtype=torch.float64))
    return torch


def format_table(rows):
    head = f"{'op':<22}{'shape':<13}{'first s':>8}{'ours ms':>10}{'spread ms':>16}{'GFLOP/s|GB/s':>14}" \
           f"{'torch ms':>10}{'ratio':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{r['min_ms']:.2f}-{r['max_ms']:.2f}" if "min_ms" in r else ""
        rate = r.get("gflops", r.get("gbps", float("nan")))
        first = f"{r['first_call_s']:.2f}" if "first_call_s" in r else ""
        torch_ms = f"{r['torch_ms']:.2f}" if "torch_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"{r['op']:<22}{r['shape']:<13}{first:>8}{r['median_ms']:>10.2f}{spread:>16}{rate:>14.1f}"
                     f"{torch_ms:>10}{ratio:>8}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ops", default="conv,pool", help="comma-separated subset of: conv, pool")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch anchor")
    parser.add_argument("--json", help="also write the rows and machine description here (and the table beside it as .md)")
    args = parser.parse_args(argv)
    torch = None if args.no_torch else load_torch()
    rng = np.random.default_rng(0)
    rows = []
    if "conv" in args.ops:
        rows += conv_cases(torch, args.repeats, rng)
    if "pool" in args.ops:
        rows += pool_cases(torch, args.repeats, rng)
    import numba
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                python=sys.version.split()[0], numpy=np.__version__, numba=numba.__version__,
                numba_threads=numba.get_num_threads(),
                torch=None if torch is None else torch.__version__,
                torch_threads=None if torch is None else torch.get_num_threads(),
                date=time.strftime("%Y-%m-%d"))
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(format_table(rows))
    if args.json:  # written atomically: a temp file, then a rename
        for path, text in ((args.json, json.dumps(dict(meta=meta, rows=rows), indent=1)),
                           (os.path.splitext(args.json)[0] + ".md",
                            "```\n" + " ".join(f"{k}={v}" for k, v in meta.items()) + "\n"
                            + format_table(rows) + "\n```\n")):
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
    return rows


if __name__ == "__main__":
    main()
