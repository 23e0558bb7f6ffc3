"""Backend choice: per process, per block, by environment; dispatch in one place."""
import re
import subprocess
import sys

import pytest

import gpuconv
from gpuconv import backend


def run_python(code, *args, **env):
    import os
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("GPUCONV_BACKEND", "NUMBA_ENABLE_CUDASIM", "GPUCONV_CUDA_EMULATOR")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env)


CHECK_KERNELS = """
import sys
from gpuconv import backend
from gpuconv.kernels import api
module = backend.load(sys.argv[1])
missing = api.missing(module)
assert not missing, f"backend {sys.argv[1]} lacks {missing}"
assert module.name == sys.argv[1] and callable(module.check_array) and module.xp is not None
print("ok")
"""


@pytest.mark.parametrize("name", backend.BACKENDS[1:])
def test_every_backend_provides_the_same_kernels(name):
    # without a GPU, a GPU backend loads on Numba's CUDA simulator or the CUDA C emulator (set before import)
    env = {} if name == "cpu" or backend.gpu_present() else {"NUMBA_ENABLE_CUDASIM": "1",
                                                                   "GPUCONV_CUDA_EMULATOR": "1"}
    result = run_python(CHECK_KERNELS, name, **env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_use_backend_restores_previous_choice():
    before = gpuconv.get_backend()
    with gpuconv.use_backend("cpu") as active:
        assert active == "cpu" == gpuconv.get_backend()
    assert gpuconv.get_backend() == before


@pytest.mark.parametrize("bad,error,match", [
    ("tpu", ValueError, r"backend must be one of 'auto', 'cpu', 'numba', 'cupy'; got 'tpu'"),
    (3, TypeError, r"backend must be a string"),
])
def test_bad_backend_names(bad, error, match):
    with pytest.raises(error, match=match):
        gpuconv.set_backend(bad)
    with pytest.raises(error, match=match):
        with gpuconv.use_backend(bad):
            pass


@pytest.mark.skipif(backend.gpu_present(), reason="a CUDA GPU is present")
def test_gpu_backends_without_a_gpu_say_so():
    result = run_python("import gpuconv; gpuconv.set_backend('numba')")
    assert result.returncode != 0
    assert ("RuntimeError: backend 'numba' needs a CUDA GPU and none was found" in result.stderr
            and "NUMBA_ENABLE_CUDASIM=1" in result.stderr), result.stderr
    result = run_python("import gpuconv; gpuconv.set_backend('cupy')")
    assert result.returncode != 0
    assert re.search(r"RuntimeError: backend 'cupy' needs (CuPy|a CUDA GPU)", result.stderr), result.stderr
    # 'auto' falls back to the CPU instead
    result = run_python(LOG_INFO + "import gpuconv; print(gpuconv.get_backend())")
    assert result.stdout.strip() == "cpu" and "no CUDA GPU found" in result.stderr


LOG_INFO = "import logging; logging.basicConfig(level=logging.INFO)\n"  # gpuconv logs its choice at INFO


def test_auto_says_once_what_it_chose():
    result = run_python(LOG_INFO + "import gpuconv, numpy as np; import gpuconv.functional as F\n"
                        "F.relu(np.ones(3, np.float32)); F.relu(np.ones(3, np.float32))\n"
                        "print(gpuconv.get_backend())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    assert result.stderr.count("INFO:gpuconv:backend 'auto' chose 'cpu'") == 1
    quiet = run_python("import gpuconv; gpuconv.get_backend()")  # logging not configured: nothing on stderr
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_environment_variable():
    ok = run_python("import gpuconv; print(gpuconv.get_backend())", GPUCONV_BACKEND="cpu")
    assert ok.stdout.strip() == "cpu" and "auto" not in ok.stderr
    bad = run_python("import gpuconv; gpuconv.get_backend()", GPUCONV_BACKEND="gpu")
    assert bad.returncode != 0 and "environment variable GPUCONV_BACKEND must be one of" in bad.stderr


def test_set_backend_per_process():
    result = run_python(LOG_INFO + "import gpuconv; gpuconv.set_backend('CPU'); print(gpuconv.get_backend())",
                        GPUCONV_BACKEND="auto")
    assert result.stdout.strip() == "cpu" and "chose" not in result.stderr


def test_forward_and_backward_use_the_forward_backend(monkeypatch):
    """Ops keep the backend module that ran their forward for the backward pass."""
    import numpy as np
    import gpuconv.functional as F
    calls = []
    real = backend.kernels()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(backend, "kernels", lambda: Spy())
    x = gpuconv.Tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    y = F.max_pool2d(F.relu(F.conv2d(x, np.ones((1, 1, 3, 3)), padding="same")))
    monkeypatch.setattr(backend, "kernels", lambda: pytest.fail("backward must not re-dispatch"))
    y.sum().backward()
    assert {"conv2d_forward", "relu_forward", "pool2d_forward", "relu_backward", "pool2d_backward",
            "conv2d_backward_input"} <= set(calls)


def test_no_module_reaches_a_private_name_of_the_dispatcher():
    """What bench/, tests and the package need from gpuconv.backend is public (load, IMPLEMENTED, gpu_present, ...)."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    offenders = [f"{path.relative_to(root)}:{number}: {line.strip()}"
                 for folder in ("bench", "tests", "gpuconv", "kernels", "examples")
                 for path in sorted((root / folder).rglob("*.py")) if path != root / "gpuconv" / "backend.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\bbackend\._[a-z]", line)]
    assert offenders == []


def test_arrays_move_with_the_public_helpers():
    import numpy as np
    array = np.arange(4.0)
    assert backend.to_device(array) is array and backend.xp() is np  # the CPU backend: no copy
    assert backend.to_device([1, 2], dtype=np.float32).dtype == np.float32
    assert backend.to_host(array) is array
    assert backend.load("cpu") is backend.kernels() and backend.IMPLEMENTED == ("cpu", "numba", "cupy")
    assert not backend.is_simulated("numba") and not backend.is_simulated("cupy")
