"""MNIST epoch time: gpuconv against its PyTorch twin, side by side in one run.

    python bench/mnist_epoch.py                    # one full epoch each, batch 64 (the example's)
    python bench/mnist_epoch.py --limit 12800 --batch-size 64 --json bench/results/mnist-epoch.json

Both train the README's model (Conv 32 -> pool -> Conv 64 -> pool -> Dense 128 -> Dense 10,
Glorot-uniform weights, zero biases, Adam 1e-3, eps 1e-7) on the same images in the same
order. Reported per framework: seconds per epoch (scaled to 60k images when --limit is
given), training images/s, inference images/s on the 10k test set, and test accuracy after
the timed epoch. The first batches are excluded from the timing as warm-up (JIT, caches).
PyTorch runs only when importable; it is never a dependency.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

WARMUP_BATCHES = 5


def load(limit):
    from gpuconv.datasets import mnist
    (x, y), (xt, yt) = mnist.load_data()
    if limit:
        x, y = x[:limit], y[:limit]
    prep = lambda a: a[:, None].astype(np.float32) / 255.0  # noqa: E731
    return prep(x), y.astype(np.int64), prep(xt), yt.astype(np.int64)


def compiled_model(data_format="channels_first"):
    """The README's model as the benchmarks train it: seed 0, Adam 1e-3, sparse categorical cross-entropy."""
    import gpuconv
    from train_mnist import build_model
    gpuconv.set_seed(0)
    model = build_model(data_format)
    model.compile(gpuconv.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def run_gpuconv(x, y, xt, yt, batch, order, data_format="channels_first"):
    """The example's model in ``data_format``; x, xt are NCHW and transposed once here for channels_last."""
    import gpuconv
    if data_format == "channels_last":
        x, xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(xt.transpose(0, 2, 3, 1))
    model = compiled_model(data_format)
    batches = [np.sort(order[i:i + batch]) for i in range(0, len(x), batch)]
    with gpuconv.backend.session():
        for index in batches[:WARMUP_BATCHES]:
            model.train_on_batch(x[index], y[index])
        start = time.perf_counter()
        for index in batches[WARMUP_BATCHES:]:
            model.train_on_batch(x[index], y[index])
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, accuracy = model.evaluate(xt, yt)
    return seconds, len(xt) / (time.perf_counter() - start), accuracy


def run_torch(x, y, xt, yt, batch, order):
    import torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    batches = [torch.from_numpy(np.sort(order[i:i + batch])) for i in range(0, len(x), batch)]

    def step(index):
        optimizer.zero_grad()
        loss = loss_fn(model(tx[index]), ty[index])
        loss.backward()
        optimizer.step()

    model.train()
    for index in batches[:WARMUP_BATCHES]:
        step(index)
    start = time.perf_counter()
    for index in batches[WARMUP_BATCHES:]:
        step(index)
    seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        predicted = torch.cat([model(torch.from_numpy(xt[i:i + 256])).argmax(1) for i in range(0, len(xt), 256)])
    inference = len(xt) / (time.perf_counter() - start)
    return seconds, inference, float((predicted.numpy() == yt).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="time this many training images, not 60k")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--data-format", choices=["channels_first", "channels_last", "both"], default="channels_first",
                        help="gpuconv's image layout (both: time each; PyTorch is always NCHW)")
    parser.add_argument("--no-torch", action="store_true", help="time gpuconv only")
    parser.add_argument("--repeats", type=int, default=1, help="run every framework this many times, alternating "
                                                                 "(reversed order on odd rounds); report medians")
    args = parser.parse_args(argv)
    x, y, xt, yt = load(args.limit)
    order = np.random.default_rng(0).permutation(len(x))
    timed_images = len(x) - WARMUP_BATCHES * args.batch_size
    formats = ["channels_first", "channels_last"] if args.data_format == "both" else [args.data_format]
    runners = [("gpuconv" if f == "channels_first" else f"gpuconv {f}",
                lambda *a, f=f: run_gpuconv(*a, data_format=f)) for f in formats]
    try:
        if args.no_torch:
            raise ImportError
        import torch
        torch.set_num_threads(os.cpu_count())
        runners.append((f"pytorch {torch.__version__}", run_torch))
    except ImportError:
        print("PyTorch not importable: timing gpuconv only")
    runs = {name: [] for name, _ in runners}
    for round_ in range(args.repeats):
        for name, runner in (runners if round_ % 2 == 0 else runners[::-1]):
            runs[name].append(runner(x, y, xt, yt, args.batch_size, order))
    results = {}
    for name, _ in runners:
        seconds, inference, accuracy = (float(np.median(v)) for v in zip(*runs[name]))
        per_image = seconds / timed_images
        results[name] = dict(epoch_seconds_60k=per_image * 60000, train_images_per_second=1 / per_image,
                             inference_images_per_second=inference, test_accuracy_after_epoch=accuracy,
                             epoch_seconds_60k_runs=[s / timed_images * 60000 for s, _, _ in runs[name]])
        print(f"{name:<22} {per_image * 60000:7.1f} s/epoch (60k)  {1 / per_image:7.0f} train img/s  "
              f"{inference:7.0f} infer img/s  test acc {100 * accuracy:.2f}%"
              + (f"  (median of {args.repeats})" if args.repeats > 1 else ""))
    theirs = next((v for k, v in results.items() if k.startswith("pytorch")), None)
    if "gpuconv" in results and theirs is not None:
        ours = results["gpuconv"]
        ratio = ours["epoch_seconds_60k"] / theirs["epoch_seconds_60k"]
        results["epoch_time_ratio_gpuconv_over_pytorch"] = ratio
        print(f"epoch time ratio gpuconv / PyTorch: {ratio:.2f}x (bar: <= 1.0x)")
    results.update(batch_size=args.batch_size, timed_images=timed_images, cpus=os.cpu_count(),
                   date=time.strftime("%Y-%m-%d"))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return results


if __name__ == "__main__":
    main()
