"""Where data-parallel training stops paying: a model on paper, not a measurement.

    python bench/allreduce_model.py

Per step, each of N GPUs computes its batch (T_compute) and then the gradients are summed by a ring
allreduce of S bytes: T_allreduce = 2 (N - 1) / N * S / bandwidth + 2 (N - 1) * latency. Without
overlap, the scaling efficiency is T_compute / (T_compute + T_allreduce). Assumptions (stated, not
measured here): an H100 sustains 75 TFLOP/s on training convolutions (about 3000 ResNet-50 images/s),
a step of a tiny model cannot take less than 0.3 ms (kernel launches), gradients are float32, and the
link bandwidths are what NCCL reaches on them.
"""

MNIST_PARAMETERS = (3 * 3 * 1 + 1) * 32 + (3 * 3 * 32 + 1) * 64 + (7 * 7 * 64 + 1) * 128 + (128 + 1) * 10
MNIST_MACS = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 10  # forward, per image
MODELS = {  # name: (parameters, training FLOPs per image (3 x forward, 2 FLOPs per MAC), images per GPU per step)
    "MNIST CNN (this repo)": (MNIST_PARAMETERS, 3 * 2 * MNIST_MACS, 64),
    "ResNet-50": (25.6e6, 3 * 2 * 4.1e9, 256),
}
LINKS = {  # name: (bytes/s, latency s)
    "NVLink 4 (one node)": (360e9, 5e-6),
    "InfiniBand NDR 400G": (50e9, 10e-6),
    "100 GbE": (12.5e9, 30e-6),
    "10 GbE": (1.25e9, 30e-6),
}
GPU_FLOPS, STEP_FLOOR = 75e12, 0.3e-3


def allreduce_seconds(ranks, nbytes, bandwidth, latency):
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def table(ranks=(2, 8, 64)):
    rows = []
    for model, (parameters, flops, batch) in MODELS.items():
        compute = max(flops * batch / GPU_FLOPS, STEP_FLOOR)
        for link, (bandwidth, latency) in LINKS.items():
            for n in ranks:
                communicate = allreduce_seconds(n, 4 * parameters, bandwidth, latency)
                rows.append((model, link, n, compute, communicate, compute / (compute + communicate)))
    return rows


def main():
    print(f"{'model':<22} {'link':<22} {'N':>3} {'compute ms':>11} {'allreduce ms':>13} {'efficiency':>11}")
    for model, link, n, compute, communicate, efficiency in table():
        print(f"{model:<22} {link:<22} {n:>3} {1e3 * compute:>11.2f} {1e3 * communicate:>13.2f} {efficiency:>10.0%}")


if __name__ == "__main__":
    main()
