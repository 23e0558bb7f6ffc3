"""Where the MNIST example's training step spends its time, on the active backend (CPU: wall clock).

    python bench/step_breakdown.py --batch-size 64 --steps 80 --runs 4

Trains the README's model (bench/mnist_epoch.py's setup) on real MNIST and times, per step, the kernels
by kind (conv: forward, both backwards and the bias gradient; pool; standalone ReLU passes; dense: the
matmul kernel; loss: the cross-entropy's forward and backward; optimizer: ``optimizer.step``), each call
wrapped with a wall-clock timer; 'framework' is the step's time less all of those (autograd, layers,
Python). Prints the median over runs of each part's mean per step, in ms. On a GPU backend the kernels
only queue work, so the split would say little: this tool is for the CPU.
"""
import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import mnist_epoch  # noqa: E402

PARTS = {
    "conv": ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias"),
    "pool": ("pool2d_forward", "pool2d_backward"),
    "relu": ("relu_forward", "relu_backward"),
    "dense": ("matmul",),
}
ORDER = ("step", "conv", "pool", "relu", "dense", "loss", "optimizer", "framework")


def timed(function, part, spent):
    """``function``, adding the seconds of each call to ``spent[part]``."""
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - start
    return call


def instrument(kernels, spent):
    """Wrap the backend's kernels and the loss (once per process) so each call adds its seconds to ``spent``."""
    from gpuconv.nn import losses
    for part, names in PARTS.items():
        for name in names:
            if hasattr(kernels, name):
                setattr(kernels, name, timed(getattr(kernels, name), part, spent))
    for name in ("forward", "backward"):
        setattr(losses.CrossEntropy, name, staticmethod(timed(getattr(losses.CrossEntropy, name), "loss", spent)))


def run(x, y, batch, steps, spent):
    import gpuconv
    model = mnist_epoch.compiled_model()
    model.optimizer.step = timed(model.optimizer.step, "optimizer", spent)
    order = np.random.default_rng(0).permutation(len(x))
    batches = [np.sort(order[i:i + batch]) for i in range(0, (steps + mnist_epoch.WARMUP_BATCHES) * batch, batch)]
    with gpuconv.backend.session():
        for index in batches[:mnist_epoch.WARMUP_BATCHES]:
            model.train_on_batch(x[index], y[index])
        spent.clear()
        for index in batches[mnist_epoch.WARMUP_BATCHES:]:
            start = time.perf_counter()
            model.train_on_batch(x[index], y[index])
            spent["step"] += time.perf_counter() - start
    per_step = {part: spent[part] / steps * 1e3 for part in ORDER if part != "framework"}
    per_step["framework"] = per_step["step"] - sum(v for k, v in per_step.items() if k != "step")
    return per_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=80, help="timed steps per run (after the warm-up batches)")
    parser.add_argument("--runs", type=int, default=4, help="runs in one process; the median is reported")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.runs < 1:
        parser.error("--batch-size, --steps and --runs must be positive")
    x, y, _, _ = mnist_epoch.load(None)
    if (args.steps + mnist_epoch.WARMUP_BATCHES) * args.batch_size > len(x):
        parser.error(f"--steps: {args.steps} steps of {args.batch_size} (plus warm-up) exceed {len(x)} images")
    import gpuconv
    spent = collections.defaultdict(float)
    instrument(gpuconv.backend.kernels(), spent)
    runs = [run(x, y, args.batch_size, args.steps, spent) for _ in range(args.runs)]
    print(f"batch {args.batch_size}, {args.steps} steps, median of {args.runs} runs, ms per step:")
    for part in ORDER:
        print(f"  {part:10} {np.median([r[part] for r in runs]):7.2f}")


if __name__ == "__main__":
    main()
