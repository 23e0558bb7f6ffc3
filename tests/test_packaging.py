"""The wheel installs gpuconv as the only top-level name, kernels inside it, tooling left out; README and CI agree."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


# Exactly what a user's program runs, and nothing else: no tests, no kernels/tools (emulator, compile reports).
SHIPPED = """
gpuconv/__init__.py gpuconv/backend.py gpuconv/fileio.py gpuconv/functional.py gpuconv/geometry.py gpuconv/rng.py
gpuconv/signal.py gpuconv/tensor.py gpuconv/datasets/__init__.py gpuconv/datasets/mnist.py
gpuconv/nn/__init__.py gpuconv/nn/callbacks.py gpuconv/nn/layers.py gpuconv/nn/losses.py gpuconv/nn/model.py
gpuconv/nn/optimizers.py
gpuconv/kernels/__init__.py gpuconv/kernels/api.py gpuconv/kernels/indexing.py
gpuconv/kernels/cpu/__init__.py gpuconv/kernels/cpu/backend.py gpuconv/kernels/cpu/conv.py gpuconv/kernels/cpu/pool.py
gpuconv/kernels/cpu/relu.py gpuconv/kernels/cpu/runtime.py
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
    for name in ("pyproject.toml", "README.md", "gpuconv", "kernels"):
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


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if line.strip() and not line.startswith(("#", "set ", "cd "))][-1].strip()
    assert ci_command in (ROOT / "README.md").read_text()
