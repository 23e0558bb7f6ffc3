"""The wheel installs gpuconv as the only top-level name, kernels inside it, tooling left out; README and CI agree."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Exactly what a user's program runs, and nothing else: no tests, no kernels/tools (emulator, compile reports).
SHIPPED = """
gpuconv/__init__.py gpuconv/_types.py gpuconv/_version.py gpuconv/backend.py gpuconv/config.py gpuconv/distributed.py
gpuconv/fileio.py
gpuconv/functional.py gpuconv/geometry.py gpuconv/interop.py gpuconv/keras.py gpuconv/models.py gpuconv/py.typed
gpuconv/rng.py gpuconv/signal.py gpuconv/tensor.py gpuconv/datasets/__init__.py gpuconv/datasets/mnist.py
gpuconv/nn/__init__.py gpuconv/nn/callbacks.py gpuconv/nn/layers.py gpuconv/nn/losses.py gpuconv/nn/model.py
gpuconv/nn/optimizers.py gpuconv/nn/saving.py
gpuconv/kernels/__init__.py gpuconv/kernels/api.py gpuconv/kernels/indexing.py
gpuconv/kernels/cpu/__init__.py gpuconv/kernels/cpu/backend.py gpuconv/kernels/cpu/conv.py gpuconv/kernels/cpu/pool.py
gpuconv/kernels/cpu/relu.py gpuconv/kernels/cpu/runtime.py gpuconv/kernels/cpu/winograd.py gpuconv/kernels/cpu/direct.py
gpuconv/kernels/cpu/matmul.py gpuconv/kernels/cpu/optim.py
gpuconv/kernels/gpu/__init__.py gpuconv/kernels/gpu/ops.py gpuconv/kernels/gpu/tiling.py
gpuconv/kernels/numba_cuda/__init__.py gpuconv/kernels/numba_cuda/backend.py gpuconv/kernels/numba_cuda/runtime.py
gpuconv/kernels/numba_cuda/conv.py gpuconv/kernels/numba_cuda/weight_grad.py gpuconv/kernels/numba_cuda/reduce.py
gpuconv/kernels/numba_cuda/pool.py gpuconv/kernels/numba_cuda/relu.py
gpuconv/kernels/cuda_c/__init__.py gpuconv/kernels/cuda_c/backend.py gpuconv/kernels/cuda_c/runtime.py
gpuconv/kernels/cuda_c/sources.py gpuconv/kernels/cuda_c/common.cuh gpuconv/kernels/cuda_c/conv.cu
gpuconv/kernels/cuda_c/weight_grad.cu gpuconv/kernels/cuda_c/reduce.cu gpuconv/kernels/cuda_c/pool.cu
gpuconv/kernels/cuda_c/relu.cu
""".split()


def test_wheel_ships_exactly_the_runtime_files(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "gpuconv", "kernels"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True)
    (wheel,) = (tmp_path / "dist").glob("gpuconv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    metadata = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    assert sorted(set(names) - set(metadata)) == sorted(SHIPPED)
    # every CUDA C source in the tree ships: the 'cupy' backend compiles them at run time
    sources = [p for pattern in ("*.cu", "*.cuh") for p in (ROOT / "kernels").rglob(pattern)]
    assert len(sources) == 6 and all(f"gpuconv/kernels/{p.relative_to(ROOT / 'kernels').as_posix()}" in names
                                     for p in sources)
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["gpuconv"]
    # metadata: an SPDX license with its file, the version from its one source, classifiers, the extras
    metadata_text = zipfile.ZipFile(wheel).read(next(n for n in metadata if n.endswith("/METADATA"))).decode()
    headers = [line.split(": ", 1) for line in metadata_text.split("\n\n")[0].splitlines() if ": " in line]
    fields = {}
    for key, value in headers:
        fields.setdefault(key, []).append(value)
    assert fields["License-Expression"] == ["MIT"] and fields["License-File"] == ["LICENSE"]
    assert any(n.endswith("licenses/LICENSE") for n in metadata)
    version = {}
    exec((ROOT / "gpuconv" / "_version.py").read_text(), version)
    assert fields["Version"] == [version["__version__"]]
    assert "Typing :: Typed" in fields["Classifier"] and len(fields["Classifier"]) >= 8
    assert {"test", "compile", "mpi", "cuda", "dask", "examples", "bench"} <= set(fields["Provides-Extra"])
    # the CPU-only test extra carries no CUDA toolkit wheel; the compile extra does
    test_requirements = [r for r in fields["Requires-Dist"] if 'extra == "test"' in r]
    assert test_requirements and not any(r.startswith(("nvidia-", "cuda-", "cupy")) or "[cu13]" in r
                                         for r in test_requirements)
    assert any(r.startswith("nvidia-nvvm") and 'extra == "compile"' in r for r in fields["Requires-Dist"])


def test_the_public_api_type_checks():
    """mypy over the whole package (annotations of the public API, gpuconv/py.typed ships them)."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "-p", "gpuconv"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_import_gpuconv_is_quick_and_loads_no_optional_dependency():
    code = ("import sys, time; t = time.perf_counter(); import gpuconv; print(time.perf_counter() - t); "
            "gpuconv.distributed.init(); "
            "print(sorted(m for m in ('torch', 'cupy', 'dask', 'scipy', 'matplotlib', 'mpi4py') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, loaded = result.stdout.splitlines()
    assert loaded == "[]", loaded
    print(f"import gpuconv: {float(seconds):.2f} s")


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if line.strip() and not line.startswith(("#", "set ", "cd "))][-1].strip()
    assert ci_command in (ROOT / "README.md").read_text()
