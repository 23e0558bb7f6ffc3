"""Data-parallel training under a real ``mpiexec -n 2`` (loopback): equality with one process in float64,
failure handling, disagreement checks, and the size-1 path without MPI."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gpuconv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "mpi_worker.py")
_BESIDE_PYTHON = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # where the mpich wheel puts it
MPIEXEC = shutil.which("mpiexec") or (_BESIDE_PYTHON if os.access(_BESIDE_PYTHON, os.X_OK) else None)
if MPIEXEC is None and os.environ.get("GPUCONV_REQUIRE_MPI") == "1":  # CI: these tests must run, never skip
    raise RuntimeError("GPUCONV_REQUIRE_MPI=1 but mpiexec is not found (pip install -e '.[mpi]')")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found: pip install -e '.[mpi]' (mpi4py, mpich)")


def run(out, scenario, ranks=2, timeout=120, backend="cpu"):
    """Run the worker; the whole process group is killed if it outlives ``timeout``."""
    command = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [sys.executable, WORKER, str(out), scenario]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", GPUCONV_BACKEND=backend, PYTHONPATH=ROOT)  # this checkout
    if not ranks:
        env = {k: v for k, v in env.items() if not k.startswith(("PMI", "MPI_", "OMPI", "PMIX"))}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr, time.perf_counter() - start


@needs_mpi
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_follow_the_single_process_trajectory(tmp_path, optimizer):
    """float64, batch norm (global statistics), momentum SGD and Adam, a last partial batch, validation and
    evaluate: every rank ends with the single process's weights to 1e-10."""
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    single.mkdir(), parallel.mkdir()
    code, _, stderr, _ = run(single, optimizer, ranks=0)
    assert code == 0, stderr
    code, stdout, stderr, _ = run(parallel, optimizer, ranks=2)
    assert code == 0, stderr
    assert stdout.count("done") == 2
    with np.load(single / f"{optimizer}-rank0.npz") as arrays:
        reference = [arrays[k] for k in arrays.files]
    single_log = json.loads((single / f"{optimizer}-rank0.json").read_text())
    assert single_log["size"] == 1 and single_log["backend"] == "none"
    for rank in (0, 1):
        log = json.loads((parallel / f"{optimizer}-rank{rank}.json").read_text())
        assert log["size"] == 2 and log["backend"] == "mpi"
        with np.load(parallel / f"{optimizer}-rank{rank}.npz") as arrays:
            weights = [arrays[k] for k in arrays.files]
        assert len(weights) == len(reference) == 8 and weights[0].dtype == np.float64
        for got, expected in zip(weights, reference):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
        for key, values in single_log["history"].items():
            np.testing.assert_allclose(log["history"][key], values, rtol=0, atol=1e-10)
        for key, value in single_log["evaluate"].items():
            assert abs(log["evaluate"][key] - value) < 1e-10
        # one allreduce of the packed gradients per step (5 steps per epoch) plus BN's and evaluate's
        assert log["stats"]["allreduce_calls"] >= 15


@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_error_shown_once(tmp_path):
    code, _, stderr, seconds = run(tmp_path, "fail", timeout=90)
    assert code != 0 and seconds < 60, (code, seconds)
    assert stderr.count("MemoryError: rank 1 ran out of memory (simulated) at its third step") == 1, stderr
    assert "rank 1 of 2 failed; aborting all ranks" in stderr


@needs_mpi
def test_ranks_that_disagree_are_stopped_at_the_start_of_fit(tmp_path):
    code, _, stderr, seconds = run(tmp_path, "disagree", timeout=90)
    assert code != 0 and seconds < 60
    assert "the ranks disagree on x shape: rank 0 (52, 1, 6, 6), rank 1 (48, 1, 6, 6)" in stderr, stderr
    code, _, stderr, _ = run(tmp_path, "odd_batch", timeout=90)
    assert code != 0 and "batch_size 15 must divide evenly over the 2 ranks" in stderr


def test_a_failing_rank_waits_until_its_output_pipe_is_read():
    """What a rank wrote before MPI_Abort must have left the pipe (the launcher drops what is still there)."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"the traceback")
    read = threading.Event()

    def launcher():
        time.sleep(0.2)
        os.read(read_end, 100)
        read.set()

    thread = threading.Thread(target=launcher)
    thread.start()
    gpuconv.distributed._wait_until_launcher_reads((write_end,), limit_s=60)
    assert read.is_set()
    thread.join()
    os.close(read_end), os.close(write_end)


def test_size_one_without_mpi4py_or_outside_mpiexec(tmp_path):
    comm = gpuconv.distributed.init()  # pytest is not started by mpiexec
    assert (comm.rank, comm.size, comm.local_rank, comm.backend) == (0, 1, 0, "none")
    code = ("import sys; sys.modules['mpi4py'] = None\n"  # as if mpi4py were not installed
            "import logging; logging.basicConfig()\n"
            "import gpuconv, numpy as np\n"
            "comm = gpuconv.distributed.init(); print(comm.size, comm.backend)\n"
            "m = gpuconv.Sequential([gpuconv.layers.Dense(2, activation='softmax', input_shape=(3,))])\n"
            "m.compile('sgd', 'sparse_categorical_crossentropy')\n"
            "m.fit(np.ones((4, 3)), np.array([0, 1, 0, 1]), batch_size=3, verbose=0); print('trained')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PMI_RANK="0", PMI_SIZE="1", PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "none", "trained"]
    assert "mpi4py is not installed" in result.stderr


def gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device
        return 0


@needs_mpi
@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs a CUDA GPU and CuPy")
def test_nccl_sums_gpu_buffers_and_a_training_step_matches_the_mpi_path(tmp_path):
    ranks = min(2, gpu_count())
    code, _, stderr, _ = run(tmp_path, "nccl_buffer", ranks=ranks, backend="cupy")
    assert code == 0, stderr
    for rank in range(ranks):
        log = json.loads((tmp_path / f"nccl-rank{rank}.json").read_text())
        assert log["backend"] == "nccl" and log["size"] == ranks and log["max_error"] == 0.0
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    cpu.mkdir(), gpu.mkdir()
    assert run(cpu, "sgd", ranks=ranks)[0] == 0
    code, _, stderr, _ = run(gpu, "sgd", ranks=ranks, backend="cupy")
    assert code == 0, stderr
    assert json.loads((gpu / "sgd-rank0.json").read_text())["backend"] == "nccl"
    with np.load(cpu / "sgd-rank0.npz") as a, np.load(gpu / "sgd-rank0.npz") as b:
        for key in a.files:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-8)


@needs_mpi
@pytest.mark.network
def test_the_mnist_example_runs_unchanged_under_mpiexec(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, os.path.join(ROOT, "examples", "train_mnist.py"),
               "--limit", "1280", "--epochs", "1", "--out", str(tmp_path)]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", GPUCONV_BACKEND="cpu", PYTHONPATH=ROOT)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpuconv ") and "2 ranks (mpi), global batch 64 = 2 x 32" in lines[0]
    assert result.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "filters.png", "metrics.json", "weights.npz"]
    assert json.loads((tmp_path / "metrics.json").read_text())["ranks"] == 2
