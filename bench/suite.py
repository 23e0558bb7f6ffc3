"""gpuconv's benchmark suite: every backend against the anchors, one command.

    python -m bench                                  # everything available here
    python -m bench --ops conv2d_forward relu_forward --shapes mnist_conv2 --repeats 20
    python -m bench --backends cpu --anchors torch --no-end-to-end

For each available backend (cpu; numba and cupy with a CUDA GPU) and each shape,
times conv2d forward / backward-input / backward-weight, max and average
pooling forward / backward and ReLU forward / backward, and the MNIST model's
training and inference throughput. Anchors run in the same process whenever
importable: scipy.signal (conv forward, small cases), PyTorch CPU and PyTorch
GPU (cuDNN with TF32 off and on). Peaks are measured first: copy bandwidth and
SGEMM rate of each device.

Method: the first call (JIT compile) is timed apart, then warm-up calls, then
the median and interquartile range of ``--repeats`` timed calls over rotating
input buffers, the targets of an op interleaved in rounds of a few calls each (a
slow spell of the machine falls on all alike; each round starts after a pause, so
no target's idle threads still spin, then 20 ms of untimed calls of the target, so
it is timed as a run of calls keeps it, not recovering from the pause); CUDA events
on the GPU.
Each result is checked against the CPU backend before it is timed. Output:
bench/results/<device>-<date>/ with
results.json, results.md, throughput.png and roofline.png.
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

import gpuconv
from gpuconv import backend
from gpuconv.kernels.cpu import runtime as cpu_runtime

from . import counts, report
from .timing import CupyEvents, TorchEvents, WallClock, measure, measure_interleaved

BUFFERS = 3  # rotating input sets: repeats do not find their inputs in cache
STRIDE, PAD, DIL = (1, 1), ((1, 1), (1, 1)), (1, 1)
POOL, POOL_PAD = (counts.POOL, counts.POOL), ((0, 0), (0, 0))
SCIPY_MAX_CORRELATIONS = 8192  # scipy's conv is N*K*C correlate2d calls: small cases only
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2}  # max |ours - cpu backend| / max |cpu backend|
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class Target:
    """Where ops run: a gpuconv backend or an anchor, with its timer and array conversions."""

    def __init__(self, name, kind, device, timer, ops, to_device, to_host, precision="fp32", setup=None):
        self.name, self.kind, self.device, self.timer, self.ops = name, kind, device, timer, ops
        self.to_device, self.to_host, self.precision, self.setup = to_device, to_host, precision, setup


# --------------------------------------------------------------------------- targets

def gpuconv_target(name):
    """A gpuconv backend: its kernels called directly, as the layers call them."""
    kern = backend.load(name)
    on_gpu = kern.xp is not np
    ops = {
        "conv2d_forward": lambda a: kern.conv2d_forward(a["x"], a["w"], a["b"], STRIDE, PAD, DIL),
        "conv2d_backward_input": lambda a: kern.conv2d_backward_input(a["dy"], a["w"], a["x"].shape, STRIDE,
                                                                      PAD, DIL),
        "conv2d_backward_weight": lambda a: kern.conv2d_backward_weight(a["dy"], a["x"], a["w"].shape, STRIDE,
                                                                        PAD, DIL),
        "max_pool_forward": lambda a: kern.pool2d_forward(a["act"], "max", POOL, POOL, POOL_PAD),
        "max_pool_backward": lambda a: kern.pool2d_backward(a["dpool"], a["argmax"], a["act"].shape, "max", POOL,
                                                            POOL, POOL_PAD),
        "avg_pool_forward": lambda a: kern.pool2d_forward(a["act"], "avg", POOL, POOL, POOL_PAD),
        "avg_pool_backward": lambda a: kern.pool2d_backward(a["dpool"], None, a["act"].shape, "avg", POOL, POOL,
                                                            POOL_PAD),
        "relu_forward": lambda a: kern.relu_forward(a["act"]),
        "relu_backward": lambda a: kern.relu_backward(a["dact"], a["act"]),
    }

    def to_device(arrays):
        out = {k: kern.xp.asarray(v) for k, v in arrays.items()}
        out["argmax"] = kern.pool2d_forward(out["act"], "max", POOL, POOL, POOL_PAD)[1]
        return out

    timer = CupyEvents() if on_gpu else WallClock()
    device = "gpu" if on_gpu else "cpu" if name == "cpu" else "simulator"  # no peaks for the simulator
    return Target(name, "backend", device, timer, ops, to_device, backend.to_host)


def torch_pool_ops(torch, mode, window, stride, pad):
    """PyTorch's pooling of square ``window`` at ``stride`` with ``pad`` on each side, as ATen calls:
    forward ``x -> (y, indices or None)``, backward ``(dy, x, indices) -> dx``; average pooling leaves the
    padding out of the count (as Keras's 'same' does)."""
    k, s, p, aten = [window] * 2, [stride] * 2, [pad] * 2, torch.ops.aten
    if mode == "max":
        return (lambda x: aten.max_pool2d_with_indices(x, k, s, p),
                lambda dy, x, indices: aten.max_pool2d_with_indices_backward(dy, x, k, s, p, [1, 1], False, indices))
    return (lambda x: (aten.avg_pool2d(x, k, s, p, False, False), None),
            lambda dy, x, indices: aten.avg_pool2d_backward(dy, x, k, s, p, False, False, None))


def torch_targets(torch, device):
    """PyTorch anchors on ``device``: fp32, and on CUDA also TF32 (conv ops only)."""
    F, grad, aten = torch.nn.functional, torch.nn.grad, torch.ops.aten
    max_pool, avg_pool = (torch_pool_ops(torch, mode, POOL[0], POOL[0], 0) for mode in ("max", "avg"))
    ops = {
        "conv2d_forward": lambda a: F.conv2d(a["x"], a["w"], a["b"], padding=1),
        "conv2d_backward_input": lambda a: grad.conv2d_input(a["x"].shape, a["w"], a["dy"], padding=1),
        "conv2d_backward_weight": lambda a: grad.conv2d_weight(a["x"], a["w"].shape, a["dy"], padding=1),
        "max_pool_forward": lambda a: max_pool[0](a["act"]),
        "max_pool_backward": lambda a: max_pool[1](a["dpool"], a["act"], a["indices"]),
        "avg_pool_forward": lambda a: avg_pool[0](a["act"]),
        "avg_pool_backward": lambda a: avg_pool[1](a["dpool"], a["act"], None),
        "relu_forward": lambda a: torch.relu(a["act"]),
        "relu_backward": lambda a: aten.threshold_backward(a["dact"], a["act"], 0),
    }

    def to_device(arrays):
        out = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
        out["indices"] = F.max_pool2d(out["act"], POOL, return_indices=True)[1]
        return out

    def to_host(y):
        return y.detach().cpu().numpy()

    def tf32(enabled):
        def setup():
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        return setup

    if device == "cpu":
        return [Target("torch-cpu", "anchor", "cpu", WallClock(), ops, to_device, to_host)]
    timer = TorchEvents(torch)
    conv_only = {k: v for k, v in ops.items() if k in counts.CONV_OPS}
    return [Target("torch-cuda", "anchor", "gpu", timer, ops, to_device, to_host, "fp32", tf32(False)),
            Target("torch-cuda-tf32", "anchor", "gpu", timer, conv_only, to_device, to_host, "tf32", tf32(True))]


def scipy_target():
    """scipy.signal.correlate2d summed over input channels: conv forward, small cases."""
    from scipy import signal

    def conv(a):
        x, w, b = a["x"], a["w"], a["b"]
        N, C = x.shape[:2]
        K = w.shape[0]
        y = np.empty((N, K) + x.shape[2:], x.dtype)
        for n in range(N):
            for k in range(K):
                y[n, k] = sum(signal.correlate2d(x[n, c], w[k, c], mode="same") for c in range(C)) + b[k]
        return y

    return Target("scipy", "anchor", "cpu", WallClock(), {"conv2d_forward": conv}, dict, np.asarray)


def available_targets(backends, anchors, log):
    """The targets asked for that this machine can run; says why each missing one is missing."""
    targets = []
    for name in backends:
        if name not in backend.IMPLEMENTED:
            log(f"backend {name!r}: not implemented in this version")
            continue
        if name != "cpu" and not (backend.gpu_present() or backend.is_simulated(name)):
            log(f"backend {name!r}: no CUDA GPU")
            continue
        targets.append(gpuconv_target(name))
    if "scipy" in anchors:
        try:
            targets.append(scipy_target())
        except ImportError:
            log("anchor scipy: not importable")
    if "torch" in anchors:
        try:
            import torch
            targets += torch_targets(torch, "cpu")
            if torch.cuda.is_available():
                targets += torch_targets(torch, "cuda")
            else:
                log("anchor torch-cuda: no CUDA GPU for PyTorch")
        except ImportError:
            log("anchor torch: not importable")
    return targets


# --------------------------------------------------------------------------- measuring

def host_inputs(shape, rng):
    """One set of float32 inputs for every op on benchmark shape (N, C, H, W, K)."""
    N, C, H, W, K = shape
    pooled = counts.pool_output(N, K, H, W)
    f32 = np.float32
    return dict(x=rng.standard_normal((N, C, H, W)).astype(f32),
                w=(rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(f32),
                b=rng.standard_normal(K).astype(f32),
                dy=rng.standard_normal((N, K, H, W)).astype(f32),
                act=rng.standard_normal((N, K, H, W)).astype(f32),
                dact=rng.standard_normal((N, K, H, W)).astype(f32),
                dpool=rng.standard_normal(pooled).astype(f32))


def first_array(result):
    return result[0] if isinstance(result, tuple) else result


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30)) if want.size else 0.0


def run_shape(shape_name, shape, ops, targets, repeats, warmup, rng, progress):
    """Rows for every (op, target) on one shape, each checked against the CPU backend first, the targets of an
    op timed interleaved (``measure_interleaved``)."""
    sets = [host_inputs(shape, rng) for _ in range(BUFFERS)]
    cpu = gpuconv_target("cpu")
    cpu_inputs = cpu.to_device(sets[0])
    expected = {op: np.asarray(first_array(cpu.ops[op](cpu_inputs))) for op in ops}
    prepared = []
    for target in targets:
        target_ops = [op for op in ops if op in target.ops]
        if target.name == "scipy" and shape[0] * shape[1] * shape[4] > SCIPY_MAX_CORRELATIONS:
            target_ops = []
        if not target_ops:
            continue
        if target.setup:
            target.setup()
        inputs = [target.to_device(s) for s in sets]
        errors = {op: relative_error(target.to_host(first_array(target.ops[op](inputs[0]))), expected[op])
                  for op in target_ops}
        prepared.append((target, inputs, errors))
    rows = []
    for op in ops:
        timed = [(target, inputs, errors[op]) for target, inputs, errors in prepared if op in errors]
        for target, _, _ in timed:
            progress(f"{shape_name} {op} {target.name}")
        entries = [([lambda a=a, fn=target.ops[op]: fn(a) for a in inputs], target.timer, target.setup)
                   for target, inputs, _ in timed]
        for (target, _, error), summary in zip(timed, measure_interleaved(entries, repeats, warmup)):
            row = dict(op=op, shape=shape_name, dims=list(shape), target=target.name, kind=target.kind,
                       device=target.device, precision=target.precision, rel_error=error,
                       correct=error <= TOLERANCE[target.precision], **summary)
            row["flops"], row["bytes"] = counts.op_work(op, shape)
            rows.append(row)
    return rows


def measure_peaks(targets, log):
    """Copy bandwidth (GB/s, read + write) and SGEMM rate (GFLOP/s) of each device in use."""
    peaks = {}
    for device in sorted({t.device for t in targets} - {"simulator"}):
        if device == "cpu":
            xp, timer, n_bytes, n = np, WallClock(), 256 << 20, 2048
        else:
            import cupy
            xp, timer, n_bytes, n = cupy, CupyEvents(), 1 << 30, 8192
        src = xp.ones(n_bytes // 4, np.float32)
        dst = xp.empty_like(src)
        copy = measure([lambda: xp.copyto(dst, src)], timer, 10, 2)
        a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
        c = xp.empty_like(a)
        gemm = measure([lambda: xp.matmul(a, a, out=c)], timer, 5, 1)
        peaks[device] = dict(copy_gbps=2 * n_bytes / copy["median_s"] / 1e9,
                             sgemm_gflops=2.0 * n ** 3 / gemm["median_s"] / 1e9)
        log(f"peaks {device}: copy {peaks[device]['copy_gbps']:.1f} GB/s, "
            f"SGEMM {peaks[device]['sgemm_gflops']:.0f} GFLOP/s")
    return peaks


def finish_rows(rows, peaks):
    """Rates, % of the device's peak, and speed-ups over the CPU backend and over each anchor."""
    for row in rows:
        peak = peaks.get(row["device"], {})
        if row["flops"]:
            row["gflops"] = row["flops"] / row["median_s"] / 1e9
            row["pct_peak"] = 100 * row["gflops"] / peak["sgemm_gflops"] if peak else None
        else:
            row["gbps"] = row["bytes"] / row["median_s"] / 1e9
            row["pct_peak"] = 100 * row["gbps"] / peak["copy_gbps"] if peak else None
    by_case = {}
    for row in rows:
        by_case.setdefault((row["op"], row["shape"]), {})[row["target"]] = row
    for case in by_case.values():
        anchors = {name: r["median_s"] for name, r in case.items() if r["kind"] == "anchor"}
        for row in case.values():
            if row["kind"] != "backend":
                continue
            if row["target"] != "cpu" and "cpu" in case:
                row["speedup_vs_cpu"] = case["cpu"]["median_s"] / row["median_s"]
            row["speedup_vs"] = {name: t / row["median_s"] for name, t in anchors.items()}
    return rows


# --------------------------------------------------------------------------- end to end

def end_to_end(targets, batches, log):
    """MNIST model training and inference images/s on each gpuconv backend (synthetic MNIST-shaped data)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    from train_mnist import build_model
    rng = np.random.default_rng(0)
    batch, infer_batch = 64, 256
    x = rng.random((batch * (batches + 2), 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    rows = []
    for target in (t for t in targets if t.kind == "backend"):
        with gpuconv.use_backend(target.name), backend.session():
            gpuconv.set_seed(0)
            model = build_model()
            model.compile(gpuconv.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            for i in range(2):  # warm-up: JIT, allocator
                model.train_on_batch(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            start = time.perf_counter()
            for i in range(2, batches + 2):
                model.train_on_batch(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            train = batches * batch / (time.perf_counter() - start)  # float(loss) synchronizes each step
            model.predict(x[:infer_batch])
            start = time.perf_counter()
            out = model.predict(x)
            float(out.sum())  # synchronize
            infer = len(x) / (time.perf_counter() - start)
        log(f"end to end {target.name}: train {train:.0f} images/s, inference {infer:.0f} images/s")
        rows.append(dict(target=target.name, device=target.device, batch=batch, batches=batches,
                         train_images_per_s=train, inference_images_per_s=infer,
                         epoch_s=60000 / train, data="synthetic MNIST-shaped"))
    return rows


# --------------------------------------------------------------------------- environment

def environment(targets, peaks):
    from importlib import metadata
    info = dict(date=datetime.date.today().isoformat(), python=platform.python_version(),
                cpu=_cpu_name(), cores=os.cpu_count(), cpu_caches=cpu_runtime.cpu_caches(), peaks=peaks,
                # the CPU kernels' store policy on this host (runtime.streams): it follows the L3's size
                cpu_stream_bytes=dict(stream_min=cpu_runtime.STREAM_MIN_BYTES,
                                      cache_keep=cpu_runtime.CACHE_KEEP_BYTES),
                targets=[t.name for t in targets],
                simulator=any(backend.is_simulated(t.name) for t in targets))
    versions = {}
    for package in ("gpuconv", "numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "scipy", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        info["git_commit"] = None
    if any(t.device == "gpu" for t in targets):
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info.update(gpu=props["name"].decode(), driver=cupy.cuda.runtime.driverGetVersion(),
                    cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
    simulated = any(t.device == "simulator" for t in targets)
    info["device"] = info.get("gpu") or ("simulated GPU" if simulated else f"{info['cpu']} {info['cores']} cores")
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def results_dir(out, info):
    slug = re.sub(r"[^A-Za-z0-9]+", "-", info["device"]).strip("-").lower()
    return os.path.join(out, f"{slug}-{info['date']}")


# --------------------------------------------------------------------------- command

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=counts.OPS, default=list(counts.OPS))
    parser.add_argument("--shapes", nargs="+", default=list(counts.SHAPES),
                        help=f"some of {', '.join(counts.SHAPES)}, or 'tiny' (a smoke test)")
    parser.add_argument("--backends", nargs="+", default=["cpu", "numba", "cupy"])
    parser.add_argument("--anchors", nargs="*", default=["scipy", "torch"], choices=["scipy", "torch"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="training batches timed end to end")
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--out", default=RESULTS, help="results go to OUT/<device>-<date>/")
    args = parser.parse_args(argv)
    shapes = {**counts.SHAPES, **counts.SMOKE_SHAPES}
    unknown = [s for s in args.shapes if s not in shapes]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {', '.join(shapes)}")

    from tqdm import tqdm
    messages = []

    def log(text):
        messages.append(text)
        tqdm.write(text, file=sys.stderr)

    targets = available_targets(args.backends, args.anchors, log)
    if not any(t.kind == "backend" for t in targets):
        parser.error(f"none of the backends {args.backends} can run here")
    peaks = measure_peaks(targets, log)
    info = environment(targets, peaks)
    rng = np.random.default_rng(0)
    rows = []
    tasks = len(args.shapes) * sum(len(set(args.ops) & set(t.ops)) for t in targets)
    with tqdm(total=tasks, desc="ops", file=sys.stderr) as bar:
        def progress(text):
            bar.set_postfix_str(text)
            bar.update()
        for name in args.shapes:
            rows += run_shape(name, shapes[name], args.ops, targets, args.repeats, args.warmup, rng, progress)
        bar.total = bar.n  # the scipy anchor skips the large cases
    finish_rows(rows, peaks)
    e2e = [] if args.no_end_to_end else end_to_end(targets, args.batches, log)
    info["notes"] = messages
    directory = results_dir(args.out, info)
    paths = report.write_all(directory, info, rows, e2e)
    print(report.markdown(info, rows, e2e))
    print("wrote " + ", ".join(paths), file=sys.stderr)
    wrong = [(r["op"], r["shape"], r["target"], r["rel_error"]) for r in rows if not r["correct"]]
    if wrong:
        print(f"results differ from the CPU backend: {wrong}", file=sys.stderr)
        return 1
    return 0
