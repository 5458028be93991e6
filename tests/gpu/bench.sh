#!/usr/bin/env bash
# tests/gpu/bench.sh — the GPU benchmarks, in one run on one GPU (never part of ctest):
#   1. the MoE layer alone, forward + backward, bf16: TFLOP/s and MFU against the dense bf16
#      peak (989.4 TFLOP/s, H100 SXM; set MOE_PEAK_TFLOPS for another GPU) at d_model 4096,
#      8 experts, top-2, 16384 tokens (MOE_ARGS overrides, e.g. "F=14336 B=8 T=2048");
#   2. the whole training step of moed (bf16) and of tests/gpu/torch_ref.py (PyTorch eager,
#      bf16 autocast) on the same model and batch shape (STEP_ARGS, same keys for both), and
#      their ratio (the target is moed <= 0.7x PyTorch eager).
# Environment: BUILD, ARCH as run.sh; MOE_ARGS, STEP_ARGS as above.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$root/build-gpu}
moe_args=${MOE_ARGS:-"C=4096 E=8 K=2 F=14336 B=8 T=2048"}
step_args=${STEP_ARGS:-"V=256 C=2048 L=4 NH=16 T=1024 E=8 K=2 F=4096 B=16"}

mkdir -p "$build"
make -C "$root/tests/gpu" BUILD="$build" ${ARCH:+ARCH="$ARCH"} -j"$(nproc)" >"$build/make.log" 2>&1 ||
    { cat "$build/make.log"; echo "bench.sh: build failed"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null || true

# shellcheck disable=SC2086 # the argument lists split on purpose
"$build/bench_gpu" moe $moe_args
# shellcheck disable=SC2086
"$build/bench_gpu" step $step_args | tee "$build/bench-step.txt"
torch_args=$(for kv in $step_args; do printf -- '--%s %s ' "${kv%%=*}" "${kv#*=}"; done)
# shellcheck disable=SC2086
python3 "$root/tests/gpu/torch_ref.py" --bench $torch_args | tee "$build/bench-torch.txt"

ours=$(awk '/^moed_step/ {print $2}' "$build/bench-step.txt")
theirs=$(awk '/^torch_eager_step/ {print $2}' "$build/bench-torch.txt")
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "step time moed / PyTorch eager: %.2f ms / %.2f ms = %.3fx (target <= 0.7x)\n", a, b, a / b }'
