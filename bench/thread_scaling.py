"""How the CPU backend's kernels scale with threads: each op of the suite at 1, 2, ... threads, same run.

    python bench/thread_scaling.py                           # 1 thread and all cores, every shape and op
    python bench/thread_scaling.py --threads 1 2 4 8 --shapes cifar_conv resnet_conv --json out.json

Each (shape, op) is timed at every thread count with the suite's method (``timing.measure_interleaved``:
the thread counts are its targets, interleaved in blocks after a pause and a re-warm of ``--rewarm-s``,
medians of ``--repeats``); Numba's thread count is set before each block (``numba.set_num_threads``;
BLAS stays at one thread inside the kernels' parts, as always). Prints the median ms per thread count and
the speed-up over the smallest count; ``--json`` keeps every figure with the machine and versions.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench import counts, suite, timing  # noqa: E402
from bench.timing import WallClock, measure_interleaved  # noqa: E402
from gpuconv.kernels.cpu.runtime import cpu_caches  # noqa: E402


def scaling(shape, ops, thread_counts, repeats, warmup, rng):
    """{op: {threads: summary}} for one shape (``measure_interleaved``'s summaries)."""
    import numba
    target = suite.gpuconv_target("cpu")
    sets = [target.to_device(suite.host_inputs(shape, rng)) for _ in range(suite.BUFFERS)]
    out = {}
    for op in ops:
        calls = [lambda a=a, run=target.ops[op]: run(a) for a in sets]
        entries = [(calls, WallClock(), lambda t=t: numba.set_num_threads(t)) for t in thread_counts]
        out[op] = dict(zip(thread_counts, measure_interleaved(entries, repeats, warmup)))
    numba.set_num_threads(max(thread_counts))
    return out


def main(argv=None):
    import numba
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, numba.config.NUMBA_NUM_THREADS}))
    shapes = {**counts.SHAPES, **counts.SMOKE_SHAPES}
    parser.add_argument("--shapes", nargs="+", default=list(counts.SHAPES), choices=list(shapes),
                        help="'tiny': a smoke test")
    parser.add_argument("--ops", nargs="+", default=list(counts.OPS), choices=list(counts.OPS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rewarm-s", type=float, default=0.1,
                        help="untimed calls after each block's pause, in seconds (the suite's 0.02 left one "
                             "thread's blocks slow on the Intel host: one thread's traffic takes longer to "
                             "bring its memory up to speed)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    most = numba.config.NUMBA_NUM_THREADS
    if any(t < 1 or t > most for t in args.threads):
        parser.error(f"--threads: each count must be within 1..{most} (NUMBA_NUM_THREADS)")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be positive and --warmup not negative")
    if args.rewarm_s < 0:
        parser.error("--rewarm-s must not be negative")
    thread_counts = sorted(set(args.threads))
    timing.BLOCK_WARMUP_S = args.rewarm_s
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'shape':12} {'op':24} " + " ".join(f"{t:>3} thr ms" for t in thread_counts) + "  speed-up")
    for name in args.shapes:
        for op, by_threads in scaling(shapes[name], args.ops, thread_counts, args.repeats, args.warmup,
                                      rng).items():
            medians = {t: s["median_s"] for t, s in by_threads.items()}
            base = medians[thread_counts[0]]
            speedups = {t: base / m for t, m in medians.items()}
            rows.append(dict(shape=name, op=op, median_s=medians, speedup=speedups,
                             iqr_s={t: (s["q25_s"], s["q75_s"]) for t, s in by_threads.items()}))
            print(f"{name:12} {op:24} " + " ".join(f"{medians[t] * 1e3:10.3f}" for t in thread_counts)
                  + "  " + " ".join(f"{speedups[t]:.2f}x" for t in thread_counts[1:]), flush=True)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        info = dict(date=datetime.date.today().isoformat(), cpu=suite._cpu_name(), cores=os.cpu_count(),
                    cpu_caches=cpu_caches(), python=platform.python_version(), numba=numba.__version__,
                    threading_layer=numba.threading_layer(), git_commit=commit, threads=thread_counts,
                    repeats=args.repeats, rewarm_s=args.rewarm_s)
        path = args.json
        with open(path + ".tmp", "w") as f:  # whole or not at all
            json.dump(dict(environment=info, rows=rows), f, indent=1)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
