#!/usr/bin/env bash
# bench_distill.sh BIN_DIR [OUT_DIR] — does distillation help? On the demo corpus
# (deploy/specs/demo.yaml: the fortunes, 5% held out), one process, one thread each:
#   teacher   the demo model (C=128, L=2, E=4, top-2, F=256), seq_len 64, 600 steps
#   student   C=32, 2 heads, F=64 (otherwise the demo's), seq_len 64, 300 steps:
#             without a teacher, and distilled from the teacher at a few (alpha, temperature)
# and, last, the student alone for 900 steps (about the distilled runs' time), and prints each
# run's held-out bits per byte (the same 256 windows of 64 bytes for every
# student: `moectl train`'s final evaluation, plain cross-entropy). Equal student steps,
# batches and seed; the distilled runs also pay the teacher's forward. Every run is
# deterministic: the same numbers come back on any machine with the same BLAS.
set -eu
bin=${1:?usage: bench_distill.sh BIN_DIR [OUT_DIR]}
out=${2:-out/distill}
mkdir -p "$out"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
spec=$(dirname "$0")/../../deploy/specs/demo.yaml
common=(--set mesh.pods=1 --set mesh.slots=1 --set model.seq_len=64 --set run.log_every=100 --set run.eval_every=0)
student=(--set model.d_model=32 --set model.heads=2 --set model.d_ff=64 --set run.steps=300)
bpb() { sed -n 's/.*= \([0-9.]*\) bits\/byte.*/\1/p' "$1" | tail -n 1; }

[ -s "$out/teacher.safetensors" ] ||
  "$bin/moectl" train "$spec" "${common[@]}" --set run.steps=600 \
    --set run.output="$out/teacher.safetensors" >"$out/teacher.log" 2>&1
printf '%-34s %s\n' run "held-out bits/byte"
printf '%-34s %s\n' "teacher (C=128, 600 steps)" "$(bpb "$out/teacher.log")"
"$bin/moectl" train "$spec" "${common[@]}" "${student[@]}" \
  --set run.output="$out/student-plain.safetensors" >"$out/student-plain.log" 2>&1
printf '%-34s %s\n' "student (C=32, 300 steps), alone" "$(bpb "$out/student-plain.log")"
for at in ${DISTILL_RUNS:-0.5:1 0.5:2 0.9:1}; do
  a=${at%:*} t=${at#*:}
  "$bin/moectl" train "$spec" "${common[@]}" "${student[@]}" \
    --set distill.teacher="$out/teacher.safetensors" --set distill.alpha="$a" \
    --set distill.temperature="$t" --set run.output="$out/student-a$a-t$t.safetensors" \
    >"$out/student-a$a-t$t.log" 2>&1
  printf '%-34s %s\n' "student distilled, alpha $a, T $t" "$(bpb "$out/student-a$a-t$t.log")"
done
# the same compute, roughly: the teacher's forward costs more than a student step
"$bin/moectl" train "$spec" "${common[@]}" "${student[@]}" --set run.steps=900 \
  --set run.output="$out/student-plain-900.safetensors" >"$out/student-plain-900.log" 2>&1
printf '%-34s %s\n' "student alone, 900 steps" "$(bpb "$out/student-plain-900.log")"
