"""Train the lectures' MNIST CNN with gpuconv (the README's main job).

    python examples/train_mnist.py                      # 3 epochs, batch 64, full data
    python examples/train_mnist.py --limit 6000 --epochs 1 --out out/quick
    mpiexec -n 2 python examples/train_mnist.py         # data-parallel over 2 processes (pip install -e '.[mpi]')

Model (cnn-lecture-lee-slides): Conv2D 32 3x3 same relu -> MaxPool 2 -> Conv2D 64 3x3 same relu
-> MaxPool 2 -> Flatten -> Dense 128 relu -> Dense 10 (softmax), Adam (2e-3, halved after each
epoch; batch 64: the recipe that reaches 99% test accuracy in 3 epochs with a margin here). Prints the summary,
per-epoch time and throughput, and the final accuracy on the full 10k test set. Writes to --out:
weights.npz, curves.png (loss and accuracy), filters.png (first-layer filters and a few test
digits with their predictions) and metrics.json.
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

import gpuconv
from gpuconv.datasets import mnist
from gpuconv.layers import Conv2D, Dense, Flatten, MaxPool2D


def build_model(data_format="channels_first"):
    shape = (1, 28, 28) if data_format == "channels_first" else (28, 28, 1)
    return gpuconv.Sequential([
        Conv2D(32, 3, padding="same", activation="relu", data_format=data_format, input_shape=shape),
        MaxPool2D(2, data_format=data_format),
        Conv2D(64, 3, padding="same", activation="relu", data_format=data_format),
        MaxPool2D(2, data_format=data_format),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ], name="mnist_cnn")


def prepare(images, data_format="channels_first"):
    """uint8 (N, 28, 28) -> float32 in [0, 1], (N, 1, 28, 28) NCHW or (N, 28, 28, 1) NHWC."""
    axis = 1 if data_format == "channels_first" else 3
    return np.expand_dims(images.astype(np.float32) / 255.0, axis)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", default=None, help="auto, cpu, numba or cupy (default: GPUCONV_BACKEND or auto)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lr-decay", type=float, default=0.5, help="multiply the learning rate by this after "
                                                                     "each epoch (1: constant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-format", choices=["channels_first", "channels_last"], default=None,
                        help="image layout (default: gpuconv.config.image_data_format(), i.e. "
                             "GPUCONV_IMAGE_DATA_FORMAT or channels_first)")
    parser.add_argument("--out", default=os.path.join("out", "mnist"), help="output directory")
    parser.add_argument("--data", default=None, help="directory with the four MNIST IDX files (else the cache/"
                                                     "download chain of gpuconv.datasets.mnist)")
    args = parser.parse_args(argv)
    if args.backend:
        gpuconv.set_backend(args.backend)
    comm = gpuconv.distributed.init()  # size 1 unless started by mpiexec
    say = print if comm.is_root else (lambda *a, **k: None)  # one rank reports and writes files
    say(f"gpuconv {gpuconv.__version__}: {comm.size} rank{'s' if comm.size > 1 else ''} ({comm.backend})"
        + (f", global batch {args.batch_size} = {comm.size} x {args.batch_size // comm.size}" if comm.size > 1 else ""))
    gpuconv.set_seed(args.seed)
    if comm.is_root:
        os.makedirs(args.out, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = mnist.load_data(args.data)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    data_format = args.data_format or gpuconv.config.image_data_format()
    x_train, x_test = prepare(x_train, data_format), prepare(x_test, data_format)

    model = build_model(data_format)
    model.summary(print_fn=say)
    model.compile(optimizer=gpuconv.optimizers.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    say(f"backend {gpuconv.get_backend()!r}: {len(x_train)} training images, batch {args.batch_size}, "
          f"{args.epochs} epochs")
    decay = gpuconv.callbacks.LearningRateScheduler(lambda epoch, rate: args.learning_rate * args.lr_decay ** epoch)
    verbose = 1 if sys.stderr.isatty() else 2  # a progress bar on a terminal, one line per epoch in logs
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, callbacks=[decay],
                        verbose=verbose)
    start = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(x_test, y_test)
    eval_seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say(f"test accuracy {100 * test_accuracy:.2f}% (loss {test_loss:.4f}) on {len(x_test)} test images; "
        f"inference {len(x_test) / eval_seconds:.0f} images/s; peak memory {peak_mb:.0f} MB (rank 0)")
    if comm.size > 1:
        steps = comm.stats["allreduce_calls"]
        say(f"allreduce: {steps} calls, {comm.stats['allreduce_bytes'] / max(steps, 1) / 1e6:.2f} MB and "
            f"{1e3 * comm.stats['allreduce_seconds'] / max(steps, 1):.2f} ms per call on average (rank 0)")
    if not comm.is_root:
        return None

    model.save_weights(os.path.join(args.out, "weights.npz"))
    metrics = dict(
        test_accuracy=test_accuracy, test_loss=test_loss, history=history.history,
        epoch_seconds=history.epoch_seconds,
        train_images_per_second=[len(x_train) / s for s in history.epoch_seconds],
        inference_images_per_second=len(x_test) / eval_seconds, peak_memory_mb=peak_mb,
        backend=gpuconv.get_backend(), ranks=comm.size, allreduce=comm.stats, args=vars(args), python=sys.version.split()[0],
        numpy=np.__version__, machine=platform.machine(), cpus=os.cpu_count(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(args.out, "metrics.json.tmp"), "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(os.path.join(args.out, "metrics.json.tmp"), os.path.join(args.out, "metrics.json"))
    save_plots(model, history, x_test if data_format == "channels_first" else x_test.transpose(0, 3, 1, 2),
               y_test, test_accuracy, args.out, data_format)
    print(f"wrote {args.out}/weights.npz, metrics.json, curves.png, filters.png")
    return metrics


def save_plots(model, history, x_test, y_test, test_accuracy, out, data_format="channels_first"):
    """Curves and filters; ``x_test`` is NCHW, ``data_format`` the model's layout (for its predictions)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNGs (pip install -e '.[examples]')")
        return
    batches = np.array(history.batches)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    window = max(1, len(batches) // 50)
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    ax_loss.plot(batches[window - 1:, 0], smooth(batches[:, 1]), label="train (batch, smoothed)")
    ax_loss.plot(np.arange(1, len(history.epoch) + 1), history.history["loss"], "o-", label="train (epoch mean)")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_acc.plot(batches[window - 1:, 0], smooth(batches[:, 2]), label="train (batch, smoothed)")
    ax_acc.plot(np.arange(1, len(history.epoch) + 1), history.history["accuracy"], "o-", label="train (epoch mean)")
    ax_acc.axhline(test_accuracy, color="k", ls="--", label=f"test {100 * test_accuracy:.2f}%")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0.9, 1.0), title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)

    kernels = np.asarray(model.layers[0].weights["kernel"].numpy())[:, 0]  # (32, 3, 3)
    digits = x_test[:8]
    predicted = np.asarray(model.predict(digits if data_format == "channels_first"
                                         else digits.transpose(0, 2, 3, 1))).argmax(axis=1)
    fig, axes = plt.subplots(5, 8, figsize=(10, 6.6))
    for i, ax in enumerate(axes[:4].flat):
        ax.imshow(kernels[i], cmap="RdBu_r", vmin=-abs(kernels).max(), vmax=abs(kernels).max())
        ax.set_title(f"filter {i}", fontsize=7)
    for i, ax in enumerate(axes[4]):
        ax.imshow(digits[i, 0], cmap="gray_r")
        ok = predicted[i] == y_test[i]
        ax.set_title(f"pred {predicted[i]} ({'ok' if ok else f'true {y_test[i]}'})", fontsize=8,
                     color="green" if ok else "red")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("first-layer 3x3 filters (top) and test digits with predictions (bottom)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "filters.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
