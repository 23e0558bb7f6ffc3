"""A tour of the functional API (the main job until the MNIST example lands).

    python examples/demo_functional.py [--backend cpu] [--batch 64]

1. The lecture's worked example: the 5x5 image and the sharpen filter, valid, padded, stride 2.
2. The classic filters on a synthetic image through gpuconv.signal, checked against scipy when present.
3. A conv -> ReLU -> max-pool -> conv -> ReLU -> avg-pool stack on a random batch, forward and
   backward, with timings and one gradient entry checked by central differences.
"""
import argparse
import time

import numpy as np

import gpuconv
import gpuconv.functional as F
from gpuconv import signal


def lecture_example():
    image = np.array([[0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [1, 0, 0, 1, 1], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]],
                     np.float32)[None, None]
    kernel = signal.SHARPEN[None, None]
    print("5x5 image * sharpen, valid:\n", F.conv2d(image, kernel).numpy()[0, 0])
    print("padding=1:\n", F.conv2d(image, kernel, padding=1).numpy()[0, 0])
    print("padding=1, stride=2:\n", F.conv2d(image, kernel, padding=1, stride=2).numpy()[0, 0])


def filters_example():
    yy, xx = np.mgrid[0:64, 0:64]
    image = ((xx - 32) ** 2 + (yy - 32) ** 2 < 20 ** 2).astype(np.float32)  # a disc
    try:
        from scipy import signal as scipy_signal
    except ImportError:
        scipy_signal = None
    print("\nfilter          min      max   (disc image, mode='same', boundary='symm')")
    for name, kernel in signal.FILTERS.items():
        out = signal.correlate2d(image, kernel, mode="same", boundary="symm")
        check = ""
        if scipy_signal is not None:
            ok = np.allclose(out, scipy_signal.correlate2d(image, kernel, mode="same", boundary="symm"), atol=1e-5)
            check = "  == scipy" if ok else "  != scipy (!)"
        print(f"{name:<14}{out.min():>6.2f}  {out.max():>7.2f}{check}")


def network_example(batch):
    rng = np.random.default_rng(0)
    x = gpuconv.Tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), requires_grad=True)
    w1 = gpuconv.Tensor(rng.standard_normal((32, 1, 3, 3)).astype(np.float32) * 0.3, requires_grad=True)
    w2 = gpuconv.Tensor(rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.06, requires_grad=True)

    def forward(x, w1, w2):
        h = F.max_pool2d(F.conv2d(x, w1, padding="same", activation="relu"))
        h = F.avg_pool2d(F.relu(F.conv2d(h, w2, padding="same")), 2)
        return h

    (forward(x, w1, w2) * 1.0).mean().backward()  # first pass pays JIT compile / cache load
    for t in (x, w1, w2):
        t.grad = None
    start = time.perf_counter()
    out = forward(x, w1, w2)
    mid = time.perf_counter()
    loss = (out * out).mean()
    loss.backward()
    end = time.perf_counter()
    print(f"\nbatch {batch}: {x.shape} -> {out.shape}, loss {float(loss.numpy()):.5f}")
    print(f"forward {1e3 * (mid - start):.1f} ms, backward {1e3 * (end - mid):.1f} ms "
          f"(backend {gpuconv.get_backend()!r})")

    # one weight entry by central differences, in float64 for a clean comparison
    def loss_at(w):
        with gpuconv.no_grad():
            o = forward(x.data.astype(np.float64), w1.data.astype(np.float64), w)
            return float((o * o).mean().numpy())
    w2_64, eps, index = w2.data.astype(np.float64), 1e-6, (3, 5, 1, 2)
    up, down = w2_64.copy(), w2_64.copy()
    up[index] += eps
    down[index] -= eps
    numeric = (loss_at(up) - loss_at(down)) / (2 * eps)
    print(f"d loss / d w2{list(index)}: autograd {w2.grad[index]:.6e}, central difference {numeric:.6e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="auto or cpu (default: GPUCONV_BACKEND or auto)")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if args.backend:
        gpuconv.set_backend(args.backend)
    lecture_example()
    filters_example()
    network_example(args.batch)


if __name__ == "__main__":
    main()
