#!/usr/bin/env bash
# A failure no recovery can survive (docs/recovery.md, "Plan"). In a 2 x 2 job slot index 1
# lives in pod 0 and pod 1 and nowhere else (mesh.replicas 2 = the pods). Once a step is
# committed (before that the initial state, a function of the seed, would do), both of its
# workers are killed with SIGKILL at once: no copy of its state remains, and the job FAILS at
# once (there are spares enough: it must not wait for one) with an error that names the slot,
# the lost copies and the committed step, and an event "failure". The coordinator keeps
# serving: once `cluster up` has restarted the killed workers, the next 2 x 2 job SUCCEEDS.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_recovery_unrecoverable
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
slot_worker() { "$moectl" status "$1" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($2, $3)][0]"; }

"$moectl" cluster up --pods 2 --slots 2 --spares 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 2" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
mesh: {pods: 2, slots: 2, spare_wait_s: 30}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML

job=$("$moectl" submit "$tmp/job.yaml")
wait_until 30 '[ "$(committed_of "$job")" -ge 50 ] 2>/dev/null'
check "the 2 x 2 job runs and has committed steps ($job, committed step $(committed_of "$job"))" \
  '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$(committed_of "$job")" -ge 50 ]'
coord=$(cat "$cdir/coordinator.pid")
a=$(slot_worker "$job" 0 1) b=$(slot_worker "$job" 1 1)
pa=$(worker_pid "$a") pb=$(worker_pid "$b")
kill -9 "$pa" "$pb"
killed_at=$SECONDS
echo "     killed $a (pid $pa, slot (0, 1)) and $b (pid $pb, slot (1, 1)) at step $(step_of "$job")"
wait_until 60 '[ "$(state_of "$job")" = JOB_FAILED ]'
check "the job FAILED" '[ "$(state_of "$job")" = JOB_FAILED ]'
check "... at once, not after waiting for a spare ($((SECONDS - killed_at)) s; spare_wait_s 30)" \
  '[ $((SECONDS - killed_at)) -lt 15 ]'
"$moectl" status "$job" --json >"$tmp/failed.json"
err=$(json 'd["job"]["error"]' <"$tmp/failed.json")
committed=$(json 'd["job"]["committed_step"]' <"$tmp/failed.json")
echo "     error: $err"
check "the error names slot index 1" '[[ "$err" =~ (slot|index)\ 1([^0-9]|$) || "$err" =~ \([01],\ 1\) ]]'
check "... and the step (committed step $committed)" '[ "$committed" -ge 50 ] && [[ "$err" == *"step $committed"* ]]'
check "... and that every copy of its state is gone" '[[ "$err" == *cop* ]]'
check "an event \"failure\" was recorded" \
  '[ "$(json "sum(e[\"kind\"] == \"failure\" for e in d[\"events\"])" <"$tmp/failed.json")" -ge 1 ]'
check "no recovery was claimed" '[ "$(json "d[\"job\"][\"recoveries\"]" <"$tmp/failed.json")" = 0 ]'

"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "cluster up restarts the killed workers" '[ $? -eq 0 ]'
check "the coordinator kept serving (pid $coord, not restarted)" \
  '[ "$(cat "$cdir/coordinator.pid")" = "$coord" ] && kill -0 "$coord"'
next=$("$moectl" submit "$tmp/job.yaml" --set run.steps=40)
timeout 120 "$moectl" watch "$next" >"$tmp/watch.out" 2>&1
rc=$?
check "the next 2 x 2 job SUCCEEDS ($next)" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || tail -n 10 "$tmp/watch.out"

[ $fails -gt 0 ] && "$moectl" status "$job" 2>&1 | tail -n 20
cluster_test_finish
