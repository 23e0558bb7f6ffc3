"""GPU op benchmark: the 'numba' backend's kernels against cuDNN (PyTorch, when importable) on one GPU.

    python bench/gpu_ops.py                        # every shape, 30 repeats
    python bench/gpu_ops.py --repeats 50 --out bench/results
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_ops.py --smoke --out /tmp/x   # harness check, no GPU

Per op and shape: the first call (JIT compile) separately, then after warm-up
the median and interquartile spread of timed repeats, CUDA events on the stream
each side launches on, inputs rotating over several buffers so repeats do not
hit a warm L2. Every result is checked against cuDNN fp32 (TF32 off) before it
is timed. Conv rows report GFLOP/s (2*N*K*OH*OW*C*R*S per pass) and the ratio
cuDNN time / ours (> 1: we are faster), with TF32 off and on; pooling and ReLU
rows report GB/s against the copy bandwidth measured at the start.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_ops import CONV_SHAPES as CORE_CONV_SHAPES  # noqa: E402

import gpuconv  # noqa: E402
from gpuconv.kernels import numba_cuda as kern  # noqa: E402

# name: (N, C, H, W, K), 3x3 kernel, 'same' padding, stride 1
CONV_SHAPES = dict(CORE_CONV_SHAPES, cifar_conv=(128, 64, 32, 32, 64), large=(64, 64, 56, 56, 64))
# at least 256 MB of float32 input, as the bandwidth target asks
ELEMENTWISE_SHAPE = (128, 64, 112, 112)
SMOKE_CONV_SHAPES = {"tiny": (2, 3, 9, 7, 4)}
SMOKE_ELEMENTWISE_SHAPE = (2, 3, 8, 6)
STRIDE, PAD, DIL = (1, 1), ((1, 1), (1, 1)), (1, 1)
POOL, POOL_STRIDE, POOL_PAD = (2, 2), (2, 2), ((0, 0), (0, 0))
BUFFERS = 3  # rotating input sets


class CupyEvents:
    """Seconds of ``fn()`` by CUDA events on CuPy's current stream (where our kernels launch)."""

    def __init__(self):
        import cupy
        self.cupy = cupy

    def __call__(self, fn):
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end) / 1e3

    def synchronize(self):
        self.cupy.cuda.get_current_stream().synchronize()


class TorchEvents:
    """Seconds of ``fn()`` by CUDA events on PyTorch's current stream."""

    def __init__(self, torch):
        self.torch = torch

    def __call__(self, fn):
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def synchronize(self):
        self.torch.cuda.synchronize()


class WallClock:
    """The simulator has no events: wall-clock seconds (``--smoke`` only)."""

    def __call__(self, fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def synchronize(self):
        pass


def measure(fns, timer, repeats, warmup):
    """Time ``fns[i % len(fns)]()``: first call (compile) s, then median, quartiles and min over repeats."""
    start = time.perf_counter()
    fns[0]()
    timer.synchronize()
    first = time.perf_counter() - start
    for i in range(warmup):
        fns[i % len(fns)]()
    times = [timer(fns[i % len(fns)]) for i in range(repeats)]
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return dict(first_call_s=first, median_s=float(median), q25_s=float(q25), q75_s=float(q75),
                min_s=float(min(times)))


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def conv_rows(xp, torch, timer, shapes, repeats, warmup, rng):
    rows = []
    for name, (N, C, H, W, K) in shapes.items():
        sets = [dict(x=rng.standard_normal((N, C, H, W)).astype(np.float32),
                     w=(rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32),
                     b=rng.standard_normal(K).astype(np.float32),
                     dy=rng.standard_normal((N, K, H, W)).astype(np.float32)) for _ in range(BUFFERS)]
        ours = [{k: xp.asarray(v) for k, v in s.items()} for s in sets]
        flops = 2.0 * N * K * H * W * C * 9
        ops = {
            "conv2d_forward": lambda a: kern.conv2d_forward(a["x"], a["w"], a["b"], STRIDE, PAD, DIL, relu=True),
            "conv2d_backward_input": lambda a: kern.conv2d_backward_input(a["dy"], a["w"], a["x"].shape, STRIDE,
                                                                          PAD, DIL),
            "conv2d_backward_weight": lambda a: kern.conv2d_backward_weight(a["dy"], a["x"], a["w"].shape, STRIDE,
                                                                            PAD, DIL),
        }
        anchors = torch_conv_ops(torch, sets, repeats, warmup) if torch else {}
        for op, fn in ops.items():
            row = dict(op=op, shape=name, dims=[N, C, H, W, K], backend="numba",
                       **measure([lambda a=a: fn(a) for a in ours], timer, repeats, warmup))
            row["gflops"] = flops / row["median_s"] / 1e9
            if op in anchors:
                reference, timings = anchors[op]
                row["rel_error_vs_cudnn"] = relative_error(to_host(fn(ours[0])), reference)
                for mode, t in timings.items():
                    row[f"cudnn_{mode}_median_s"] = t["median_s"]
                    row[f"ratio_cudnn_{mode}"] = t["median_s"] / row["median_s"]
            rows.append(row)
    return rows


def torch_conv_ops(torch, sets, repeats, warmup):
    """cuDNN results (TF32 off) and timings with TF32 off and on, per op."""
    F, grad = torch.nn.functional, torch.nn.grad
    dev = [{k: torch.from_numpy(v).cuda() for k, v in s.items()} for s in sets]
    fns = {
        "conv2d_forward": lambda a: torch.relu(F.conv2d(a["x"], a["w"], a["b"], padding=1)),
        "conv2d_backward_input": lambda a: grad.conv2d_input(a["x"].shape, a["w"], a["dy"], padding=1),
        "conv2d_backward_weight": lambda a: grad.conv2d_weight(a["x"], a["w"].shape, a["dy"], padding=1),
    }
    timer, out = TorchEvents(torch), {}
    for op, fn in fns.items():
        timings = {}
        for mode, tf32 in (("fp32", False), ("tf32", True)):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            timings[mode] = measure([lambda a=a: fn(a) for a in dev], timer, repeats, warmup)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        out[op] = (fn(dev[0]).cpu().numpy(), timings)
    return out


def elementwise_rows(xp, timer, shape, repeats, warmup, rng, copy_bandwidth):
    n = int(np.prod(shape))
    xs = [xp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(BUFFERS)]
    y, argmax = kern.pool2d_forward(xs[0], "max", POOL, POOL_STRIDE, POOL_PAD)
    out_n = y.size
    # bytes moved: float32 data, int32 argmax
    ops = {
        "max_pool_forward": (lambda x: kern.pool2d_forward(x, "max", POOL, POOL_STRIDE, POOL_PAD),
                             4 * (n + 2 * out_n)),
        "max_pool_backward": (lambda x: kern.pool2d_backward(y, argmax, x.shape, "max", POOL, POOL_STRIDE,
                                                             POOL_PAD), 4 * (2 * out_n + n)),
        "avg_pool_forward": (lambda x: kern.pool2d_forward(x, "avg", POOL, POOL_STRIDE, POOL_PAD), 4 * (n + out_n)),
        "avg_pool_backward": (lambda x: kern.pool2d_backward(y, None, x.shape, "avg", POOL, POOL_STRIDE,
                                                             POOL_PAD), 4 * (out_n + n)),
        "relu_forward": (lambda x: kern.relu_forward(x), 8 * n),
        "relu_backward": (lambda x: kern.relu_backward(x, x), 12 * n),
    }
    rows = []
    for op, (fn, nbytes) in ops.items():
        row = dict(op=op, shape="x".join(map(str, shape)), backend="numba",
                   **measure([lambda x=x: fn(x) for x in xs], timer, repeats, warmup))
        row["gbps"] = nbytes / row["median_s"] / 1e9
        row["fraction_of_copy_bandwidth"] = row["gbps"] / copy_bandwidth if copy_bandwidth else None
        rows.append(row)
    return rows


def copy_bandwidth(xp, timer, nbytes, repeats):
    """Device-to-device copy GB/s (read + write) of ``nbytes``."""
    src = xp.ones(nbytes // 4, np.float32)
    dst = xp.empty_like(src)
    t = measure([lambda: dst.__setitem__(Ellipsis, src)], timer, repeats, 3)
    return 2 * nbytes / t["median_s"] / 1e9


def to_host(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def load_torch():
    try:
        import torch
        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def environment(torch):
    info = dict(date=datetime.date.today().isoformat(), python=platform.python_version(),
                numpy=np.__version__, gpuconv=getattr(gpuconv, "__version__", None),
                simulator=kern.SIMULATOR)
    import numba
    info["numba"] = numba.__version__
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        pass
    if not kern.SIMULATOR:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info.update(device=props["name"].decode(), cupy=cupy.__version__,
                    driver=cupy.cuda.runtime.driverGetVersion(), cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
    else:
        info["device"] = "CUDA simulator"
    if torch:
        info.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    return info


def markdown(info, rows):
    lines = [f"# GPU ops: {info['device']}, {info['date']}", "",
             ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("device", "date")), "",
             "| op | shape | median ms | IQR ms | first call s | GFLOP/s or GB/s | vs cuDNN fp32 | vs cuDNN TF32 "
             "| % copy BW |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['gflops']:.0f} GFLOP/s" if "gflops" in r else f"{r['gbps']:.0f} GB/s"
        fp32 = f"{r['ratio_cudnn_fp32']:.2f}x" if "ratio_cudnn_fp32" in r else "-"
        tf32 = f"{r['ratio_cudnn_tf32']:.2f}x" if "ratio_cudnn_tf32" in r else "-"
        bw = f"{100 * r['fraction_of_copy_bandwidth']:.0f}%" if r.get("fraction_of_copy_bandwidth") else "-"
        lines.append(f"| {r['op']} | {r['shape']} | {1e3 * r['median_s']:.3f} | "
                     f"{1e3 * (r['q75_s'] - r['q25_s']):.3f} | {r['first_call_s']:.2f} | {rate} | {fp32} | "
                     f"{tf32} | {bw} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, wall clock: checks the harness on the "
                                                              "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    parser.add_argument("--no-torch", action="store_true", help="skip the cuDNN anchor")
    args = parser.parse_args(argv)
    if args.smoke != kern.SIMULATOR:
        parser.error("--smoke runs on the CUDA simulator only, and the simulator only with --smoke")
    xp = kern.xp
    torch = None if args.no_torch or args.smoke else load_torch()
    timer = WallClock() if args.smoke else CupyEvents()
    rng = np.random.default_rng(0)
    info = environment(torch)
    bandwidth = copy_bandwidth(xp, timer, 1 << 10 if args.smoke else 1 << 30, args.repeats)
    info["copy_bandwidth_gbps"] = bandwidth
    rows = conv_rows(xp, torch, timer, SMOKE_CONV_SHAPES if args.smoke else CONV_SHAPES, args.repeats,
                     args.warmup, rng)
    rows += elementwise_rows(xp, timer, SMOKE_ELEMENTWISE_SHAPE if args.smoke else ELEMENTWISE_SHAPE,
                             args.repeats, args.warmup, rng, bandwidth)
    bad = [r for r in rows if r.get("rel_error_vs_cudnn", 0) > 1e-3]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"gpu-{info['device'].replace(' ', '_')}-{info['date']}")
    from gpuconv.fileio import atomic_write
    atomic_write(stem + ".json", lambda f: f.write(json.dumps(dict(environment=info, rows=rows), indent=1).encode()))
    table = markdown(info, rows)
    atomic_write(stem + ".md", lambda f: f.write(table.encode()))
    print(table)
    if bad:
        print(f"results differ from cuDNN: {[(r['op'], r['shape']) for r in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
