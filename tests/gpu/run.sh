#!/usr/bin/env bash
# tests/gpu/run.sh — the GPU check, on a machine with an NVIDIA GPU and the CUDA toolkit (no
# CMake project, OpenBLAS or other -dev package needed):
#   1. builds kernels/ (CPU reference, MOE_NO_BLAS) and kernels/cuda/ standalone (Makefile);
#   2. check_gpu: every CUDA layer against the CPU reference, forward and backward, in fp32
#      mode, and each MoE phase alone; the whole model's forward, backward, update and
#      micro-batches, and its exec-hook path against the CPU's; a 20-step fp32 training run
#      on GPU and CPU whose loss curves must agree; bf16-mode sanity lines.
#      One line per comparison: name max_abs max_rel tol OK|FAIL;
#   3. torch_ref.py --check: the PyTorch model of the benchmark computes the C reference's
#      loss on the same weights and batch (float64), so bench.sh compares the same model.
# Exits non-zero if anything failed.
#
# Environment: BUILD   build directory (default: <repo>/build-gpu, ignored by git)
#              ARCH    nvcc target flags (default: -gencode arch=compute_90,code=sm_90)
#              SANITIZE=1  also run the layer checks under compute-sanitizer (memcheck,
#                          racecheck, synccheck, initcheck); logs in $BUILD/sanitize-*.log
#              NO_TORCH=1  skip step 3
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$root/build-gpu}
export NVIDIA_TF32_OVERRIDE=0 # fp32 mode is the comparison mode: never silently TF32

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
mkdir -p "$build"
make -C "$root/tests/gpu" BUILD="$build" ${ARCH:+ARCH="$ARCH"} -j"$(nproc)" >"$build/make.log" 2>&1 ||
    { cat "$build/make.log"; echo "run.sh: build failed"; exit 2; }
grep -i "warning" "$build/make.log" || true

status=0
"$build/check_gpu" || status=1

if [ "${SANITIZE:-0}" = 1 ]; then
    for tool in memcheck racecheck synccheck initcheck; do
        log="$build/sanitize-$tool.log"
        if compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/check_gpu" --quick >"$log" 2>&1; then
            echo "compute-sanitizer $tool: clean"
        else
            echo "compute-sanitizer $tool: FAILED (see $log)"; tail -n 20 "$log"; status=1
        fi
    done
fi

if [ "${NO_TORCH:-0}" != 1 ]; then
    if python3 -c 'import torch' 2>/dev/null; then
        "$build/bench_gpu" dump "$build/torch_check" &&
            python3 "$root/tests/gpu/torch_ref.py" --check "$build/torch_check" || status=1
    else
        echo "run.sh: python3 has no torch: torch_ref.py --check skipped"
    fi
fi
[ $status = 0 ] && echo "run.sh: all GPU checks passed" || echo "run.sh: FAILED"
exit $status
