#!/usr/bin/env bash
# A mesh job without redundancy (mesh.replicas = 1: a lost slot is not recovered, see
# cli_chaos*.sh for recovery) and the failures the control plane must handle for it. A worker
# playing one slot of a 2 x 2 job is killed with SIGKILL mid-job: the job
# FAILS with a reason that names that slot and its worker first (its peers all report losing
# it; it is the one that never answers), the other slots are stopped and their workers are
# free again, and the coordinator keeps scheduling: the next 2 x 2 job runs on the survivors
# and the spare. A slot's worker that hangs (SIGSTOP) is named the same way, after the data
# plane's timeout. Then the coordinator itself is killed with SIGKILL mid-job and restarted:
# every slot's worker reattaches, the job goes on in the same epoch and is cancelled cleanly.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_mesh_faults
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
slot_worker() { "$moectl" status "$1" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($2, $3)][0]"; }
idle_count() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }
all_alive_idle() { "$moectl" cluster status --json | json 'all(w["state"] != "WORKER_BUSY" for w in d["workers"]) and sum(w["state"] == "WORKER_IDLE" for w in d["workers"]) >= 4'; }

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1: 5 workers" '[ $rc -eq 0 ] && [ "$("$moectl" cluster status --json | json "len(d[\"workers\"])")" = 5 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/long.yaml" <<YAML
mesh: {pods: 2, slots: 2, replicas: 1}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML

# ---- a slot's worker dies ----
job=$("$moectl" submit "$tmp/long.yaml")
wait_until 30 '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'
check "the 2 x 2 job runs" '[ "$(state_of "$job")" = JOB_RUNNING ]'
victim=$(slot_worker "$job" 1 0)
check "the spare is not in it" '[ "$(idle_count)" = 1 ]'
kill -9 "$(worker_pid "$victim")"
wait_until 20 '[ "$(state_of "$job")" = JOB_FAILED ]'
check "the job FAILED after the worker of slot (1, 0) was killed" '[ "$(state_of "$job")" = JOB_FAILED ]'
err=$("$moectl" status "$job" --json | json 'd["job"]["error"]')
echo "     reason: $err"
check "the reason puts slot (1, 0) and its worker $victim first" \
  '[[ "$err" == "slot (1, 0) of the 2 x 2 mesh"* && "$err" == *": worker $victim ("* ]]'
check "... and says what its peers saw" '[[ "$err" == *"first report: slot ("*"comm: "* ]]'
wait_until 20 '[ "$(idle_count)" = 4 ]'
check "the other slots were stopped: the 3 survivors and the spare are idle" '[ "$(idle_count)" = 4 ]'
check "the dead worker is DEAD" \
  '[ "$("$moectl" cluster status --json | json "[w[\"state\"] for w in d[\"workers\"] if w[\"worker_id\"] == \"$victim\"][0]")" = WORKER_DEAD ] || wait_until 10 "[ \"\$(\"$moectl\" cluster status --json | json \"[w[\\\"state\\\"] for w in d[\\\"workers\\\"] if w[\\\"worker_id\\\"] == \\\"$victim\\\"][0]\")\" = WORKER_DEAD ]"'

# ---- a slot's worker hangs (SIGSTOP): its peers time out (mesh.timeout_s), it never answers ----
hjob=$("$moectl" submit "$tmp/long.yaml")
wait_until 30 '[ "$(step_of "$hjob")" -ge 3 ] 2>/dev/null'
check "a 2 x 2 job runs on the survivors and the spare" '[ "$(state_of "$hjob")" = JOB_RUNNING ]'
hung=$(slot_worker "$hjob" 0 1)
hung_pid=$(worker_pid "$hung")
kill -STOP "$hung_pid"
wait_until 20 '[ "$(state_of "$hjob")" = JOB_FAILED ]'
err=$("$moectl" status "$hjob" --json | json 'd["job"]["error"]')
kill -CONT "$hung_pid"
echo "     reason: $err"
check "the job with a hung slot FAILED, naming slot (0, 1) and $hung first" \
  '[[ "$err" == "slot (0, 1) of the 2 x 2 mesh"* && "$err" == *": worker $hung ("* ]]'
wait_until 20 '[ "$(idle_count)" = 4 ]'
check "once it runs again, all 4 workers are idle" '[ "$(idle_count)" = 4 ]'

# ---- the coordinator keeps scheduling: survivors + spare; then it is killed mid-job ----
job2=$("$moectl" submit "$tmp/long.yaml")
wait_until 30 '[ "$(step_of "$job2")" -ge 3 ] 2>/dev/null'
check "the next 2 x 2 job runs" '[ "$(state_of "$job2")" = JOB_RUNNING ]'
check "... none of its slots on the dead worker" \
  '[ "$("$moectl" status "$job2" --json | json "sum(s[\"worker_id\"] == \"$victim\" for s in d[\"slots\"])")" = 0 ]'
epoch=$("$moectl" status "$job2" --json | json 'd["job"]["epoch"]')
kill -9 "$(cat "$cdir/coordinator.pid")"
sleep 1
"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "cluster up restarts the coordinator" '[ $? -eq 0 ]'
wait_until 20 '[ "$("$moectl" status "$job2" --json | json "sum(e[\"kind\"] == \"reattached\" for e in d[\"events\"])")" = 4 ]'
check "every slot's worker reattached" \
  '[ "$("$moectl" status "$job2" --json | json "sum(e[\"kind\"] == \"reattached\" for e in d[\"events\"])")" = 4 ]'
step=$(step_of "$job2")
wait_until 30 '[ "$(step_of "$job2")" -gt "$step" ] 2>/dev/null'
check "the job goes on after the restart (step $step -> $(step_of "$job2")), same epoch" \
  '[ "$(step_of "$job2")" -gt "$step" ] && [ "$(state_of "$job2")" = JOB_RUNNING ] && [ "$("$moectl" status "$job2" --json | json "d[\"job\"][\"epoch\"]")" = "$epoch" ]'
"$moectl" cancel "$job2" >/dev/null
# (cluster up also restarted the killed worker: it joined as a new, idle worker)
wait_until 20 '[ "$(all_alive_idle)" = True ]'
check "cancel stops every slot: no worker is busy" '[ "$(state_of "$job2")" = JOB_CANCELLED ] && [ "$(all_alive_idle)" = True ]'

"$moectl" cluster down --dir "$cdir" >/dev/null
check "cluster down stopped everything" '[ -z "$(running_from "$cdir")" ]'
if [ $fails -gt 0 ]; then
  "$moectl" jobs 2>&1
  for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 10; }; done
fi
[ $fails -eq 0 ] && echo "cli_mesh_faults: all checks passed" || echo "cli_mesh_faults: $fails checks failed"
exit $((fails > 0))
