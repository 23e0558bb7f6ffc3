"""Run under ``mpiexec -n N`` (or alone) by tests/distributed/test_mpi.py: train a small model data-parallel
and write what each rank ends with.

    python mpi_worker.py OUT_DIR SCENARIO

Scenarios: sgd, adam (float64 training with batch norm; weights, history and evaluate per rank),
fail (rank 1 raises at its third step), disagree (rank 1 has fewer samples), odd_batch (batch 15 on 2 ranks),
nccl_buffer (a GPU backend: NCCL sums CuPy buffers). The backend comes from GPUCONV_BACKEND.
"""
import json
import os
import sys

import numpy as np

import gpuconv
from gpuconv import callbacks
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPool2D


def data(n=52):
    rng = np.random.default_rng(7)
    return rng.standard_normal((n, 1, 6, 6)), rng.integers(0, 3, n)


def model(optimizer):
    gpuconv.config.set_floatx("float64")
    gpuconv.set_seed(3)
    m = gpuconv.Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 6, 6)),
                            BatchNormalization(momentum=0.9), MaxPool2D(2), Flatten(),
                            Dense(3, activation="softmax")])
    m.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    return m


def main(out, scenario):
    comm = gpuconv.distributed.init()
    x, y = data()
    if scenario in ("sgd", "adam"):
        optimizer = gpuconv.optimizers.SGD(0.05, momentum=0.9) if scenario == "sgd" else gpuconv.optimizers.Adam(1e-2)
        m = model(optimizer)
        history = m.fit(x, y, batch_size=12, epochs=3, validation_data=(x[:20], y[:20]), verbose=0)
        scores = m.evaluate(x, y, batch_size=8, return_dict=True)
        np.savez(os.path.join(out, f"{scenario}-rank{comm.rank}.npz"), *m.get_weights())
        with open(os.path.join(out, f"{scenario}-rank{comm.rank}.json"), "w") as f:
            json.dump({"history": history.history, "evaluate": scores, "size": comm.size, "rank": comm.rank,
                       "backend": comm.backend, "stats": comm.stats}, f)
    elif scenario == "fail":
        class Fail(callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if comm.rank == 1 and batch == 2:
                    raise MemoryError("rank 1 ran out of memory (simulated) at its third step")
        model("sgd").fit(x, y, batch_size=4, epochs=50, callbacks=[Fail()], verbose=0)
    elif scenario == "disagree":
        model("sgd").fit(x[:52 - 4 * comm.rank], y[:52 - 4 * comm.rank], batch_size=4, verbose=0)
    elif scenario == "nccl_buffer":
        import cupy
        buffer = cupy.arange(1000, dtype=cupy.float64) * (comm.rank + 1)
        comm.allreduce_sum(buffer)
        expected = np.arange(1000) * comm.size * (comm.size + 1) / 2
        with open(os.path.join(out, f"nccl-rank{comm.rank}.json"), "w") as f:
            json.dump({"backend": comm.backend, "size": comm.size,
                       "max_error": float(np.abs(cupy.asnumpy(buffer) - expected).max())}, f)
    elif scenario == "odd_batch":
        model("sgd").fit(x, y, batch_size=15, verbose=0)
    print(f"rank {comm.rank} done")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
