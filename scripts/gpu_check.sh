#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU and CuPy: the GPU tests (tests/test_gpu.py: every read path,
# keyed noise, wire resistance and zoo networks against the CPU and Keras) and the GPU benchmark
# (benchmarks/bench_network.py --gpu: ResNet50 and ResNet-20 ms/image, ideal / 8-bit / 8-bit + read noise).
# It installs nothing: crosssim_nb must import (`pip install -e ".[gpu]"`, or the repository on PYTHONPATH with Keras,
# fastcore and the packages of pyproject.toml). Without TensorFlow, run Keras on JAX: KERAS_BACKEND=jax bash scripts/gpu_check.sh
# Usage: bash scripts/gpu_check.sh [OUTPUT_FOLDER]   (default benchmarks/results; logs and the benchmark's JSON go there)
#        REPEATS=3 (timed repeats) and BENCH_ARGS (more bench_network.py options, e.g. "--gpu-batch 64 --quick") tune the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-benchmarks/results}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
# Keras' own backend shares the GPU with CuPy: JAX and TensorFlow must not take all of its memory up front
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false} TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}
"$PY" -c "
from crosssim_nb.backend import gpu_status
usable, reason = gpu_status()
print('[gpu_check]', reason)
raise SystemExit(0 if usable else 1)" || { echo "[gpu_check] no usable CUDA GPU: nothing to check" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "[gpu_check] tests (Keras backend: ${KERAS_BACKEND:-tensorflow})"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_core.py::test_gpu_matches_cpu 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
echo "[gpu_check] benchmark"
"$PY" benchmarks/bench_network.py --gpu --repeats "${REPEATS:-3}" ${BENCH_ARGS:-} --out "$out/network_gpu.json" 2>&1 | tee "$out/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "[gpu_check] tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
