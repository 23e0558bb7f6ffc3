#!/usr/bin/env bash
# What a session with a lent GPU runs, in two device calls (each under the 10-minute limit):
#
#   bash bench/gpu_session.sh tests      # offline install, the gpu tests (numba and cupy), then the whole suite
#   bash bench/gpu_session.sh bench      # python -m bench, then compute-sanitizer memcheck and racecheck
#
# The device machine has numba-cuda, CuPy, PyTorch, pytest, hypothesis, scipy and matplotlib, and no
# network. For the MNIST GPU test, carry the data: here, `mkdir -p .data/mnist && for f in
# ~/.cache/gpuconv/mnist/*; do gzip -c "$f" > ".data/mnist/$(basename "$f").gz"; done` (.data is
# git-ignored) and pass carry [".data"]; this script points GPUCONV_DATA there.
# Output goes to $OUT (at most 8 files come back, 2 folders deep); commit bench results with the date.
set -u -o pipefail
case "${1:-}" in tests|bench) ;; *) echo "usage: bash bench/gpu_session.sh tests|bench" >&2; exit 2 ;; esac
out=${OUT:-gpu-session-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -d .data/mnist ] && export GPUCONV_DATA=$PWD/.data/mnist
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }

case "${1:-}" in
tests)
    { nvidia-smi; python3 -m pip list 2>/dev/null | grep -i -E "^(numba|cupy|torch|numpy) "; } > "$out/gpu-tests.log" 2>&1
    python3 -m pytest -m gpu tests/backends/test_gpu.py -q -rs 2>&1 | tee -a "$out/gpu-tests.log" | tail -15
    python3 -m pytest -q -x 2>&1 | tee "$out/all-tests.log" | tail -5
    ;;
bench)
    python3 -m bench --repeats 20 --out "$out" 2>&1 | tee "$out/bench.log" | tail -30
    # the sanitizers slow kernels 10-100x: the gpu tests without the long ones
    select="not mnist and not out_of_memory and not bit_identical"
    compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -m gpu tests/backends/test_gpu.py -q -k "$select" \
        > "$out/memcheck.log" 2>&1; echo "memcheck exit $?" | tee -a "$out/memcheck.log"
    # racecheck: the shared-memory kernels (conv, dW, bias gradient) of both GPU backends, on small shapes
    compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest -m gpu tests/backends/test_gpu.py -q \
        -k "float64 or three_backends" > "$out/racecheck.log" 2>&1; echo "racecheck exit $?" | tee -a "$out/racecheck.log"
    tail -3 "$out/memcheck.log" "$out/racecheck.log"
    ;;
esac
