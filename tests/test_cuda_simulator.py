"""The 'numba' backend on Numba's CUDA simulator: tests/cudasim, in processes of their own.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, so each file of
tests/cudasim runs in a fresh interpreter; the files run side by side.
"""
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("numba.cuda", reason="needs numba-cuda")

SIMULATOR_TESTS = pathlib.Path(__file__).parent / "cudasim"


def test_numba_backend_on_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONDONTWRITEBYTECODE="1")
    runs = [(path.name, subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
                                         cwd=SIMULATOR_TESTS.parent, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            for path in sorted(SIMULATOR_TESTS.glob("test_*.py"))]
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
