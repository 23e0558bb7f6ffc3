"""The wheel installs gpuconv as the only top-level name, kernels inside it; README and CI agree."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_wheel_file_list(tmp_path):
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
    top = {n.split("/")[0] for n in names}
    assert top == {"gpuconv", next(t for t in top if t.endswith(".dist-info"))}, top
    assert "gpuconv/kernels/__init__.py" in names and "gpuconv/kernels/cpu.py" in names
    assert "gpuconv/kernels/indexing.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    sources = [p for pattern in ("*.cu", "*.cuh", "*.h") for p in (ROOT / "kernels").rglob(pattern)]
    assert len(sources) >= 7
    for cu in sources:  # CUDA C sources and headers ship as package data
        assert f"gpuconv/kernels/{cu.relative_to(ROOT / 'kernels').as_posix()}" in names
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        assert zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["gpuconv"]


def test_ci_runs_the_readme_test_command():
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if line.strip() and not line.startswith(("#", "set ", "cd "))][-1].strip()
    assert ci_command in (ROOT / "README.md").read_text()
