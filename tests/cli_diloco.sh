#!/usr/bin/env bash
# The outer-step mode, mesh.sync: diloco (docs/crosspod.md, docs/recovery.md "Outer steps").
# A 2 x 2 diloco job (H = 10) runs on a cluster of 2 x 2 workers and 1 spare without faults:
# its model is the reference. The same job again goes through `moectl chaos` with a kill -9
# and a cut data-plane connection: both are recovered, every recovery returns to an outer
# step (the committed step, sampled all along, is always a multiple of H and never goes
# down), and the job ends with the reference's model byte for byte: within this mode the
# same job with and without failures gives the same bits. A cancelled diloco job exports
# its state at an outer step with its outer momentum (0.5 here), and a job resumed from it
# ends with the reference's bits too (refused with other outer knobs).
# Its model is not the synchronous mode's (the pods train apart between outer steps). Spec
# errors and `moectl train` (which does not play this mode) are refused in one line.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_diloco
H=10

cat >"$tmp/diloco.yaml" <<YAML
name: diloco
mesh: {pods: 2, slots: 2, spare_wait_s: 20, sync: diloco, outer_every: $H, outer_momentum: 0.5}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 800, batch_size: 8, log_every: 1000, eval_every: 0}
YAML

# ---- refused in one line ----
out=$(OMP_NUM_THREADS=1 "$moectl" train "$tmp/diloco.yaml" --quiet 2>&1)
rc=$?
check "moectl train refuses diloco: it plays one model" \
  '[ $rc -ne 0 ] && [[ "$out" == *"mesh.sync = diloco"*"submit it to a cluster"* ]] && [ "$(printf "%s\n" "$out" | wc -l)" -le 2 ]'
out=$("$moectl" train "$tmp/diloco.yaml" --set run.steps=805 2>&1)
check "run.steps not a multiple of mesh.outer_every: refused naming both" \
  '[[ "$out" == *"run.steps = 805 is not a multiple of mesh.outer_every = $H"* ]]'
out=$("$moectl" train "$tmp/diloco.yaml" --set mesh.pods=1 --set run.batch_size=4 2>&1)
check "one pod: refused" '[[ "$out" == *"needs mesh.pods >= 2"* ]]'
out=$("$moectl" train "$tmp/diloco.yaml" --set mesh.sync=async 2>&1)
check "an unknown mesh.sync: refused" '[[ "$out" == *"mesh.sync = '"'"'async'"'"': must be sync or diloco"* ]]'
out=$("$moectl" train "$tmp/diloco.yaml" --set mesh.outer_momentum=1 2>&1)
check "mesh.outer_momentum = 1: refused" '[[ "$out" == *"mesh.outer_momentum"* ]]'

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1: 5 workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
out=$("$moectl" submit "$tmp/diloco.yaml" --set run.eval_every=15 2>&1)
check "submit refuses run.eval_every that is not a multiple of H" \
  '[[ "$out" == *"run.eval_every = 15 is not a multiple of mesh.outer_every"* ]]'

# ---- the failure-free run: the reference ----
ref=$("$moectl" submit "$tmp/diloco.yaml")
check "submitted the failure-free run ($ref)" '[[ "$ref" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$ref" >"$tmp/watch-ref.out" 2>&1
check "it SUCCEEDS" '[ $? -eq 0 ]'
"$moectl" fetch "$ref" -o "$tmp/reference.safetensors" >/dev/null 2>&1
check "its model is there" '[ -s "$tmp/reference.safetensors" ]'
check "it committed the last outer step" \
  '[ "$("$moectl" status "$ref" --json | json "d[\"job\"].get(\"committed_step\", 0) % $H == 0")" = True ]'

# ---- the same job through a kill and a cut ----
job=$("$moectl" submit "$tmp/diloco.yaml")
check "submitted the run with faults ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
( while kill -0 $$ 2>/dev/null && [ -d "$tmp" ]; do
    "$moectl" status "$job" --json 2>/dev/null >>"$tmp/samples.jsonl"; sleep 0.2
  done ) &
chaos_kill_cut "$job" 3 $H
recoveries=$("$moectl" status "$job" --json | json 'd["job"]["recoveries"]')
check "the kill was recovered ($recoveries recoveries)" '[ "$recoveries" -ge 1 ]'
# the committed steps seen: this script's samples of the running job (as many as its speed
# allows) and every change chaos saw while it polled
outer_only() { "$py" -c 'import json,sys
vals = []
for l in open(sys.argv[1]):
    try: vals.append(int(json.loads(l)["job"].get("committed_step", 0)))
    except (ValueError, KeyError): pass
seen = [int(v["committed_step"]) for v in json.load(open(sys.argv[3])).get("committed_steps", [])]
print("     committed steps:", len(vals), "samples", sorted(set(vals))[:8], "...; chaos saw",
      seen[:8], "...", file=sys.stderr)
ok = len(vals) >= 2 and len(seen) >= 2 and vals[-1] > 0
ok = ok and all(a <= b for v in (vals, seen) for a, b in zip(v, v[1:]))
sys.exit(0 if ok and all(v % int(sys.argv[2]) == 0 for v in vals + seen) else 1)' "$1" "$H" "$2"; }
check "the committed step is always an outer step and never went down" \
  'outer_only "$tmp/samples.jsonl" "$tmp/chaos.json"'

# ---- cancelled: the survivors export an outer step, and a job resumes from it ----
cancel_at_outer_step "$tmp/diloco.yaml" $H 2
resume_same_model "$tmp/diloco.yaml" "$cjob" mesh.outer_every=20 # the export carries the outer momentum

# ---- not the synchronous mode's model ----
sync=$("$moectl" submit "$tmp/diloco.yaml" --set mesh.sync=sync)
timeout 300 "$moectl" watch "$sync" >/dev/null 2>&1
"$moectl" fetch "$sync" -o "$tmp/sync.safetensors" >/dev/null 2>&1
check "the synchronous mode's model differs" \
  '[ -s "$tmp/sync.safetensors" ] && ! cmp -s "$tmp/sync.safetensors" "$tmp/reference.safetensors"'

cluster_test_finish "$job"
