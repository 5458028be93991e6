#!/usr/bin/env bash
# The replica hash check (docs/recovery.md): slot s of every pod holds the same bytes after
# every step, and every mesh.check_every steps (default 1) their SHA-256 are compared. One bit
# of one worker's live parameters is flipped (`moectl chaos --kinds flip`, Worker.InjectFault
# "flip"): an event "replica_mismatch" names the step, the slot and both workers (the repair
# that follows is tests/cli_repair.sh's).
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_replica_check

"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML
job=$("$moectl" submit "$tmp/job.yaml")
wait_until 30 '[ "$(step_of "$job")" -ge 10 ] 2>/dev/null'
check "the 2 x 2 job runs ($job)" '[ "$(state_of "$job")" = JOB_RUNNING ]'
check "no mismatch before the flip" \
  '[ "$("$moectl" status "$job" --json | json "sum(e[\"kind\"] == \"replica_mismatch\" for e in d[\"events\"])")" = 0 ]'

timeout 90 "$moectl" chaos "$job" --seed 1 --faults 1 --kinds flip --gap-steps 3 --timeout 30 \
  --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
sed 's/^/     /' "$tmp/chaos.err"
check "chaos --kinds flip: the mismatch was reported (exit 0)" '[ $rc -eq 0 ]'
victim=$(json 'd["faults"][0]["victims"][0]["worker_id"]' <"$tmp/chaos.json" 2>/dev/null)
vpod=$(json 'd["faults"][0]["victims"][0]["pod"]' <"$tmp/chaos.json" 2>/dev/null)
vslot=$(json 'd["faults"][0]["victims"][0]["slot"]' <"$tmp/chaos.json" 2>/dev/null)
twin=$("$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if s['slot'] == ${vslot:-0} and s['pod'] != ${vpod:-0}][0]")
msg=$("$moectl" status "$job" --json | json '[e["message"] for e in d["events"] if e["kind"] == "replica_mismatch"][:1]')
echo "     flipped $victim (slot ($vpod, $vslot)); its replica: $twin; event: $msg"
check "the replica_mismatch event names both workers" '[[ -n "$victim" && "$msg" == *"$victim"* && "$msg" == *"$twin"* ]]'
check "... and the slot" '[[ "$msg" == *"slot"*"$vslot"* ]]'

"$moectl" cancel "$job" >/dev/null 2>&1
cluster_test_finish
