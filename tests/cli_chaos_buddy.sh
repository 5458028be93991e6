#!/usr/bin/env bash
# Recovery from buddy copies (docs/recovery.md, "The copies"). One pod of 4 slots has no
# data-parallel replica: with mesh.replicas 2 every slot sends its experts and their moments to
# the next slot of the pod every step, and a killed slot's state comes back from that buddy.
# A 1 x 4 job on 4 workers and 2 spares goes through `moectl chaos --kinds kill --faults 3`
# (single kill -9s, the killed workers restarted as spares): every fault is recovered, the job
# SUCCEEDS with the model `moectl train` makes in one process for the same spec, byte for byte.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_chaos_buddy

"$moectl" cluster up --pods 1 --slots 4 --spares 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 1 --slots 4 --spares 2: 6 workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }

cat >"$tmp/buddy.yaml" <<YAML
name: chaos-buddy
mesh: {pods: 1, slots: 4, replicas: 2, spare_wait_s: 20}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 1500, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
reference_train "$tmp/buddy.yaml"

job=$("$moectl" submit "$tmp/buddy.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1 &
watch_pid=$!
timeout 240 "$moectl" chaos "$job" --seed 2 --faults 3 --kinds kill --gap-steps 20 --timeout 60 \
  --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
sed 's/^/     /' "$tmp/chaos.err"
check "moectl chaos --kinds kill --faults 3 exits 0: every kill recovered" '[ $rc -eq 0 ]'
check "3 kills injected and recovered, each from a buddy (one pod: no other copy)" \
  '[ "$(json "sum(f[\"injected\"] and f[\"recovered\"] for f in d[\"faults\"])" <"$tmp/chaos.json")" = 3 ]'
wait "$watch_pid"
rc=$?
watch_pid=
check_same_model "$job" $rc
recoveries=$("$moectl" status "$job" --json | json 'd["job"]["recoveries"]')
check "the job counts 3 recoveries or more ($recoveries)" '[ "$recoveries" -ge 3 ]'
check "committed step never went down" \
  '[ "$(json "not d[\"committed_step_decreased\"]" <"$tmp/chaos.json")" = True ]'

cluster_test_finish "$job"
