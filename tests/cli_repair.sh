#!/usr/bin/env bash
# Silent corruption is repaired, not only detected (docs/recovery.md, "Repair"). A 2 x 2 job
# checks its replicas every step (mesh.check_every 1, the default): one bit of one worker's
# live parameters is flipped (`moectl chaos --kinds flip`, Worker.InjectFault "flip"). The
# slots' own check stops the step before its update ("replica_mismatch"), the coordinator
# fences the job ("repairing"), returns every slot to the last step the replicas agree on,
# the replay shows which copy was wrong ("repaired" names the slot, that worker and the step
# returned to), and the job ends with the model `moectl train` makes in one process, byte for
# byte. The same worker's copy wrong a second time drains it: GetCluster shows it drained,
# it is given no new slot, and a restarted worker process comes back as a new worker.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_repair

"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
name: repair
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 2500, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
reference_train "$tmp/job.yaml"

job=$("$moectl" submit "$tmp/job.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1 &
watch_pid=$!
wait_until 60 '[ "$(step_of "$job")" -ge 20 ] 2>/dev/null'

events() { "$moectl" status "$job" --json | json "[e['kind'] + ': ' + e['message'] for e in d['events'] if e['kind'] in ($1)]"; }
# one flip: chaos waits for "replica_mismatch", then the repair must follow
flip() {
  timeout 90 "$moectl" chaos "$job" --seed 1 --faults 1 --kinds flip --gap-steps 3 --timeout 30 \
    --json >"$tmp/chaos$1.json" 2>"$tmp/chaos$1.err"
  local rc=$?
  sed 's/^/     /' "$tmp/chaos$1.err"
  check "flip $1: chaos saw the mismatch (exit 0)" '[ $rc -eq 0 ]'
  victim=$(json 'd["faults"][0]["victims"][0]["worker_id"]' <"$tmp/chaos$1.json" 2>/dev/null)
  vslot=$(json 'd["faults"][0]["victims"][0]["slot"]' <"$tmp/chaos$1.json" 2>/dev/null)
  want=$1
  wait_until 60 '[ "$("$moectl" status "$job" --json | json "sum(e[\"kind\"] == \"repaired\" for e in d[\"events\"])")" -ge $want ]'
  repaired=$("$moectl" status "$job" --json | json '[e["message"] for e in d["events"] if e["kind"] == "repaired"][-1]' 2>/dev/null)
  echo "     flipped $victim (slot index $vslot): repaired: $repaired"
  check "flip $1: \"repaired\" names the slot index and the wrong worker" \
    '[[ -n "$victim" && "$repaired" == *"slot index $vslot"* && "$repaired" == *"copy on $victim "*"was wrong"* ]]'
  check "flip $1: ... and the step every slot returned to" '[[ "$repaired" =~ returned\ to\ step\ [0-9]+ ]]'
}
flip 1
first=$victim
seq=$(events "'replica_mismatch', 'repairing', 'recovered', 'repaired'" | tr -d "[]'" | grep -o "replica_mismatch\|repairing\|recovered\|repaired" | tr '\n' ' ')
check "events in order: replica_mismatch, repairing, recovered, repaired ($seq)" \
  '[[ "$seq" == "replica_mismatch repairing recovered repaired " ]]'
flip 2  # the same seed flips the same slot, played by the same worker: its second wrong copy
check "the same worker was flipped twice ($first, $victim)" '[ "$first" = "$victim" ]'
check "\"repaired\" says it is drained" '[[ "$repaired" == *"$victim has had 2 wrong copies: drained"* ]]'

wait "$watch_pid"
rc=$?
watch_pid=
check_same_model "$job" $rc

"$moectl" cluster status --json >"$tmp/cluster.json"
drained=$(json "[w['worker_id'] for w in d['workers'] if w.get('drained')]" <"$tmp/cluster.json")
check "GetCluster shows $victim drained ($drained)" '[ "$drained" = "['"'"'$victim'"'"']" ]'
# a new 2 x 2 job needs all 4 workers: with one drained it stays queued once the others are idle
wait_until 30 '[ "$(json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])" < <("$moectl" cluster status --json))" -ge 4 ]'
job2=$("$moectl" submit "$tmp/job.yaml")
check "a new 2 x 2 job is not given the drained worker: it waits ($(state_of "$job2"))" \
  '[ "$(state_of "$job2")" = JOB_QUEUED ]'
# the operator brings the machine back by restarting the worker process: it registers as a new
# worker (a worker's identity lives in its process), not drained; the old id stays drained
vpid=$(json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$victim'][0]" <"$tmp/cluster.json")
kill -9 "$vpid"
wait_until 30 '! kill -0 "$vpid" 2>/dev/null'
"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "cluster up restarts the drained worker's process" '[ $? -eq 0 ]'
wait_until 60 '[ "$(state_of "$job2")" = JOB_RUNNING ]'
check "... which registers as a new worker, and the queued job runs ($(state_of "$job2"))" \
  '[ "$(state_of "$job2")" = JOB_RUNNING ]'
drained_dead() { "$moectl" cluster status --json | json "[(w['worker_id'], w['state']) for w in d['workers'] if w.get('drained')]"; }
wait_until 30 '[ "$(drained_dead)" = "[('"'"'$victim'"'"', '"'"'WORKER_DEAD'"'"')]" ]'
check "GetCluster: the old id is still drained, and DEAD once its heartbeats stopped; nothing else is drained ($(drained_dead))" \
  '[ "$(drained_dead)" = "[('"'"'$victim'"'"', '"'"'WORKER_DEAD'"'"')]" ]'
"$moectl" cancel "$job2" >/dev/null 2>&1

cluster_test_finish "$job"
