"""The GPU backends simulated on the host: tests/backends/simulated, in processes of their own.

'numba' runs on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) and 'cupy' on the
CUDA C emulator (GPUCONV_CUDA_EMULATOR=1: the same .cu sources built with g++).
Both switches must be set before the first import, so each file of
tests/backends/simulated runs in a fresh interpreter per backend, side by side.
"""
import os
import pathlib
import subprocess
import sys

import pytest

SIMULATED_TESTS = pathlib.Path(__file__).parent / "simulated"
# backend: what puts it on the host, set before the first import
SWITCHES = {"numba": {"NUMBA_ENABLE_CUDASIM": "1"}, "cupy": {"GPUCONV_CUDA_EMULATOR": "1"}}


def files_for(backend_name):
    """The files of tests/backends/simulated for a backend: all but those named for another backend (test_numba_*, ...)."""
    others = [name for name in SWITCHES if name != backend_name]
    return [path for path in sorted(SIMULATED_TESTS.glob("test_*.py"))
            if not any(path.name.startswith(f"test_{other}_") for other in others)]


def run_files(backend_name):
    """Start the test files of tests/backends/simulated for one backend; return (name, process) pairs."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "GPUCONV_CUDA_EMULATOR")}
    env.update(SWITCHES[backend_name], PYTHONDONTWRITEBYTECODE="1")
    return [(f"{backend_name}: {path.name}",
             subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
                              cwd=SIMULATED_TESTS.parent, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            for path in files_for(backend_name)]


def check(runs):
    assert len(runs) >= 2
    failures = []
    for name, process in runs:
        output, _ = process.communicate()
        summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
        print(f"{name}: {summary}")
        # every test must run: a skip here would hide the GPU code from CI
        if process.returncode != 0 or " passed" not in summary or "skipped" in summary:
            failures.append(f"{name} (exit {process.returncode}):\n{output[-8000:]}")
    assert not failures, "\n\n".join(failures)


def test_numba_backend_on_the_cuda_simulator():
    pytest.importorskip("numba.cuda", reason="needs numba-cuda")
    check(run_files("numba"))


def test_cupy_backend_on_the_cuda_c_emulator():
    from gpuconv.kernels.tools import cuda_emulator
    cuda_emulator._compiler()  # a clear error if there is no C++ compiler
    check(run_files("cupy"))
