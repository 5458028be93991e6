#!/usr/bin/env bash
# The overlapped outer step, mesh.outer_overlap (docs/model.md "Overlapped outer steps",
# docs/recovery.md "Outer steps"). A 2 x 2 diloco job (H = 10, outer momentum 0.5, so that
# the momentum matters) with the overlap runs without faults: its model is the reference.
# The same job with the overlap off ends with other bits (the overlap changes the math: it
# applies every outer step one period late). The overlapped job again through `moectl chaos`
# with a kill -9 and a cut data-plane connection ends with the reference's bits, every
# recovery returning to an outer step. A cancelled overlapped job exports an outer step with
# its momentum and the mean still to apply, and the job resumed from it also ends with the
# reference's bits. The same job with mesh.outer_quant int8 makes a model of its own, and
# its run with a kill ends with that model's bits. The knobs without diloco, and bad values,
# are refused in one line.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_diloco_overlap
H=10

cat >"$tmp/overlap.yaml" <<YAML
name: overlap
mesh: {pods: 2, slots: 2, spare_wait_s: 20, sync: diloco, outer_every: $H,
       outer_momentum: 0.5, outer_overlap: true}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 600, batch_size: 8, log_every: 1000, eval_every: 0}
YAML

out=$("$moectl" train "$tmp/overlap.yaml" --set mesh.sync=sync 2>&1)
check "mesh.outer_overlap without diloco: refused in one line" \
  '[[ "$out" == *"mesh.outer_overlap = true needs mesh.sync = diloco"* ]] && [ "$(printf "%s\n" "$out" | wc -l)" -le 2 ]'
out=$("$moectl" train "$tmp/overlap.yaml" --set mesh.outer_overlap=maybe 2>&1)
check "mesh.outer_overlap = maybe: refused naming it" '[[ "$out" == *"mesh.outer_overlap"* ]]'
out=$("$moectl" train "$tmp/overlap.yaml" --set mesh.outer_quant=int4 2>&1)
check "mesh.outer_quant = int4: refused" '[[ "$out" == *"mesh.outer_quant = '"'"'int4'"'"': must be none or int8"* ]]'
out=$("$moectl" train "$tmp/overlap.yaml" --set mesh.sync=sync --set mesh.outer_overlap=false \
  --set mesh.outer_quant=int8 2>&1)
check "mesh.outer_quant without diloco: refused" '[[ "$out" == *"mesh.outer_quant = int8 needs mesh.sync = diloco"* ]]'

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1: 5 workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }

# ---- the failure-free run: the reference; without the overlap: other bits ----
ref=$("$moectl" submit "$tmp/overlap.yaml")
check "submitted the failure-free run ($ref)" '[[ "$ref" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$ref" >"$tmp/watch-ref.out" 2>&1
check "it SUCCEEDS" '[ $? -eq 0 ]'
"$moectl" fetch "$ref" -o "$tmp/reference.safetensors" >/dev/null 2>&1
check "its model is there" '[ -s "$tmp/reference.safetensors" ]'
plain=$("$moectl" submit "$tmp/overlap.yaml" --set mesh.outer_overlap=false)
timeout 300 "$moectl" watch "$plain" >/dev/null 2>&1
"$moectl" fetch "$plain" -o "$tmp/plain.safetensors" >/dev/null 2>&1
check "without the overlap the model differs" \
  '[ -s "$tmp/plain.safetensors" ] && ! cmp -s "$tmp/plain.safetensors" "$tmp/reference.safetensors"'

# ---- quantised: other bits, and the same ones again through a kill ----
quant=$("$moectl" submit "$tmp/overlap.yaml" --set mesh.outer_quant=int8)
timeout 300 "$moectl" watch "$quant" >/dev/null 2>&1
"$moectl" fetch "$quant" -o "$tmp/quant.safetensors" >/dev/null 2>&1
check "quantised (int8): it SUCCEEDS with a model of its own" \
  '[ -s "$tmp/quant.safetensors" ] && ! cmp -s "$tmp/quant.safetensors" "$tmp/reference.safetensors"'
qjob=$("$moectl" submit "$tmp/overlap.yaml" --set mesh.outer_quant=int8)
timeout 300 "$moectl" chaos "$qjob" --seed 11 --faults 1 --kinds kill --gap-steps 25 \
  --timeout 60 >"$tmp/qchaos.out" 2>&1
check "quantised: moectl chaos survives a kill" '[ $? -eq 0 ] && grep -q "1 of 1 fault survived: 1 recovered" "$tmp/qchaos.out"'
timeout 300 "$moectl" watch "$qjob" >/dev/null 2>&1
"$moectl" fetch "$qjob" -o "$tmp/quant-kill.safetensors" >/dev/null 2>&1
check "quantised: the job with the kill ends with the same bits" \
  'cmp "$tmp/quant-kill.safetensors" "$tmp/quant.safetensors"'

# ---- the same job through a kill and a cut ----
job=$("$moectl" submit "$tmp/overlap.yaml")
check "submitted the run with faults ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
chaos_kill_cut "$job" 5 $H

# ---- cancelled: the survivors export an outer step with its carry; the resumed job ends
# with the reference's bits ----
cancel_at_outer_step "$tmp/overlap.yaml" $H 3
paths=$(exported "$cjob" slots | "$py" -c "import ast,sys; print(' '.join(s['path'] for s in ast.literal_eval(sys.stdin.read())))")
tensors_in() { "$py" -c 'import json,struct,sys
for f in sys.argv[1:]:
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        print(" ".join(sorted(k for k in json.loads(fh.read(n)) if k.startswith("state.outer"))))' "$@"; }
check "the export carries the outer momentum and the mean to apply (slot files: $paths)" \
  '[ -n "$paths" ] && [ -z "$(tensors_in $paths | grep -vx "state.outer_mean state.outer_momentum")" ]'
resume_same_model "$tmp/overlap.yaml" "$cjob" mesh.outer_overlap=false

cluster_test_finish "$job"
