#!/usr/bin/env bash
# The distributed job is the same computation as the in-process one. One small spec is trained
# by `moectl train` (one process playing every shard of the mesh) and through a local cluster
# of 2 pods x 2 workers (cluster up --pods 2 --slots 2) as a 1-pod x 4-slot job and as a
# 2-pod x 2-slot job: each fetched model is byte for byte the in-process model of its mesh, and
# the loss the coordinator stored for every step equals the in-process loss at that step.
# The status shows the mesh: every slot bound to its own worker, each of which moved bytes in
# both the dispatch/combine all-to-alls and the gradient all-reduces. A queue of meshes of
# different shapes submitted at once runs in submission order, each job when enough workers
# are idle, without any being refused by a worker still finishing the previous one.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_mesh_train

# 4 worker processes on this machine's cores: one OpenMP thread each
"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
pods=$("$moectl" cluster status --json | json '" ".join(str(w["pod"]) for w in d["workers"])')
check "its 4 workers are 2 in pod 0 and 2 in pod 1 ($pods)" '[ "$(echo $pods | tr " " "\n" | sort | tr -d "\n")" = 0011 ]'
check "every worker registered a data-plane address" \
  '[ "$("$moectl" cluster status --json | json "sum(1 for w in d[\"workers\"] if \":\" in w[\"data_address\"])")" = 4 ]'

cat >"$tmp/mesh.yaml" <<YAML
name: mesh
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 12, batch_size: 8, log_every: 1, eval_every: 6, eval_batches: 2}
YAML

for mesh in 1x4 2x2; do
  P=${mesh%x*} S=${mesh#*x}
  sets=(--set mesh.pods=$P --set mesh.slots=$S)
  OMP_NUM_THREADS=1 "$moectl" train "$tmp/mesh.yaml" "${sets[@]}" --json \
    --set run.output="$tmp/local-$mesh.safetensors" 2>"$tmp/train-$mesh.err" | train_losses >"$tmp/local-$mesh.loss"
  check "$mesh: moectl train in-process" '[ -s "$tmp/local-$mesh.safetensors" ] && [ "$(wc -l <"$tmp/local-$mesh.loss")" = 12 ]'
  job=$("$moectl" submit "$tmp/mesh.yaml" "${sets[@]}")
  check "$mesh: submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
  timeout 120 "$moectl" watch "$job" >"$tmp/watch-$mesh.out" 2>&1
  rc=$?
  check "$mesh: the job succeeds" '[ $rc -eq 0 ]'
  [ $rc -eq 0 ] || { tail -n 12 "$tmp/watch-$mesh.out"; continue; }
  "$moectl" fetch "$job" -o "$tmp/cluster-$mesh.safetensors" >/dev/null
  check "$mesh: the fetched model is byte for byte the in-process model" \
    'cmp "$tmp/cluster-$mesh.safetensors" "$tmp/local-$mesh.safetensors"'
  losses_of "$job" >"$tmp/cluster-$mesh.loss"
  check "$mesh: the stored loss of every step equals the in-process loss" \
    '[ -s "$tmp/cluster-$mesh.loss" ] && diff "$tmp/cluster-$mesh.loss" "$tmp/local-$mesh.loss" >"$tmp/diff-$mesh"'
  [ -s "$tmp/diff-$mesh" ] && head -n 6 "$tmp/diff-$mesh"

  # the mesh in the status view
  "$moectl" status "$job" --json >"$tmp/status-$mesh.json"
  bound=$(json '" ".join("%d,%d=%s" % (s["pod"], s["slot"], s["worker_id"]) for s in d["slots"])' <"$tmp/status-$mesh.json")
  echo "     $mesh bindings: $bound"
  check "$mesh: status --json has all $((P*S)) slots, each on its own worker" \
    '[ "$(json "len(d[\"slots\"])" <"$tmp/status-$mesh.json")" = $((P*S)) ] && [ "$(json "len(set(s[\"worker_id\"] for s in d[\"slots\"] if s[\"worker_id\"]))" <"$tmp/status-$mesh.json")" = $((P*S)) ]'
  check "$mesh: every slot reached step 12 and ended ok" \
    '[ "$(json "all(s[\"step\"] == 12 and s[\"ended\"] and s[\"ok\"] for s in d[\"slots\"])" <"$tmp/status-$mesh.json")" = True ]'
  check "$mesh: every slot moved bytes in all-reduces, and in all-to-alls where the pod has peers" \
    '[ "$(json "all(s[\"total_bytes_allreduce\"] > 0 and s[\"total_bytes_alltoall\"] > 0 and s[\"comm_seconds\"] > 0 for s in d[\"slots\"])" <"$tmp/status-$mesh.json")" = True ]'
  check "$mesh: a logical pod lives in one physical pod where it fits" \
    '[ $P = 1 ] || "$moectl" cluster status --json | "$py" -c "import json,sys
c = json.load(sys.stdin); st = json.load(open(\"$tmp/status-$mesh.json\"))
pod = {w[\"worker_id\"]: w[\"pod\"] for w in c[\"workers\"]}
sys.exit(0 if all(len({pod[s[\"worker_id\"]] for s in st[\"slots\"] if s[\"pod\"] == p}) == 1 for p in range($P)) else 1)"'
  "$moectl" status "$job" >"$tmp/status-$mesh.out"
  check "$mesh: status prints the slot table and the expert load" \
    'grep -q "A2A MB" "$tmp/status-$mesh.out" && grep -q "REDUCE MB" "$tmp/status-$mesh.out" && [ "$(grep -c " done$" "$tmp/status-$mesh.out")" = $((P*S)) ] && grep -q "expert load" "$tmp/status-$mesh.out"'
  check "$mesh: watch printed the slot table" 'grep -q "COMM MS" "$tmp/watch-$mesh.out"'
done
# a queue of meshes of different shapes, submitted at once: each waits for enough idle
# workers (none overtakes an older one), and a worker that just finished is bound again
# without a busy refusal (no job is ever requeued)
queue=()
for shape in 2x2 1x2 1x2 1x1 2x2; do
  queue+=("$("$moectl" submit "$tmp/mesh.yaml" --set mesh.pods=${shape%x*} --set mesh.slots=${shape#*x} --set run.eval_every=0)")
done
for q in "${queue[@]}"; do timeout 120 "$moectl" watch "$q" >/dev/null 2>&1; done
summary=$(for q in "${queue[@]}"; do "$moectl" status "$q" --json | json '"%s:%s:%d" % (d["job"]["job_id"], d["job"]["state"], sum(e["kind"] == "requeued" for e in d["events"]))'; done | tr '\n' ' ')
echo "     queue: $summary"
check "a queue of 5 meshes (2x2 1x2 1x2 1x1 2x2) all succeed, none requeued" \
  '[ "$(echo "$summary" | grep -o "JOB_SUCCEEDED:0" | wc -l)" = 5 ]'
starts=$(for q in "${queue[@]}"; do "$moectl" status "$q" --json | json 'd["job"]["started_unix_ms"]'; done | tr '\n' ' ')
check "... started in submission order" '[ "$(echo $starts | tr " " "\n" | sort -n | tr "\n" " ")" = "$starts" ]'

if cmp -s "$tmp/local-1x4.safetensors" "$tmp/local-2x2.safetensors"; then
  echo "     (1x4 and 2x2 give the same model)"
else
  echo "     (1x4 and 2x2 differ: the expert reductions add in a different tree order)"
fi

cluster_test_finish
