#!/usr/bin/env bash
# The coordinator is durable: killed with SIGKILL in the middle of a job and started again on
# the same directory and port (`moectl cluster up` restarts only what is missing), it lists
# the same jobs in the same states, the running job goes on from where it was (its step
# advances), and a `moectl watch` that was following it reconnects and sees it to the end.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_restart
# "job-1=JOB_RUNNING job-2=JOB_QUEUED": ids and states, in submission order
job_states() { "$moectl" jobs --json 2>/dev/null | json '" ".join(j["job_id"] + "=" + j["state"] for j in d["jobs"])'; }

"$moectl" cluster up --workers 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
addr=$(cat "$cdir/coordinator.addr")

cat >"$tmp/long.yaml" <<YAML
name: long
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 4, eval_every: 0}
YAML
running=$("$moectl" submit "$tmp/long.yaml")
queued=$("$moectl" submit "$tmp/long.yaml" --set name=waiting)
check "two jobs submitted" '[[ "$running" =~ ^job- ]] && [[ "$queued" =~ ^job- ]]'
wait_until 30 '[ "$(step_of "$running")" -ge 3 ] 2>/dev/null'
before=$(job_states)
check "one job runs, the other waits for the only worker" \
  '[ "$before" = "$running=JOB_RUNNING $queued=JOB_QUEUED" ]'
"$moectl" watch "$running" >"$tmp/watch.out" 2>&1 &
watch_pid=$!
wait_until 30 '[ -s "$tmp/watch.out" ]' # it follows the job before the coordinator goes

coord_pid=$(cat "$cdir/coordinator.pid")
worker_pid=$(cat "$cdir/worker-0.pid")
kill -9 "$coord_pid"
wait_until 10 '! grep -qs moed- "/proc/$coord_pid/cmdline"'
check "the coordinator is gone" '! grep -qs moed- "/proc/$coord_pid/cmdline"'
"$moectl" jobs >/dev/null 2>"$tmp/err"
check "jobs while it is down: exit 4" '[ $? -eq 4 ]'

"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
rc=$?
check "cluster up restarts what is missing" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up2.out"; tail -n 30 "$cdir"/coordinator.log; }
check "... the coordinator, on the same address" '[ "$(cat "$cdir/coordinator.addr")" = "$addr" ] && [ "$(cat "$cdir/coordinator.pid")" != "$coord_pid" ]'
check "... and not the worker, which kept running" '[ "$(cat "$cdir/worker-0.pid")" = "$worker_pid" ] && kill -0 "$worker_pid"'
after=$(job_states)
check "the same jobs in the same states after the restart ($after)" '[ "$after" = "$before" ]'
step=$(step_of "$running")
wait_until 30 '[ "$(step_of "$running")" -gt "$step" ] 2>/dev/null'
check "the running job goes on (step $step -> $(step_of "$running"))" '[ "$(step_of "$running")" -gt "$step" ]'
check "the watch is still following it" 'kill -0 $watch_pid 2>/dev/null'

"$moectl" cancel "$running" >/dev/null
check "cancel exits 0" '[ $? -eq 0 ]'
wait_until 30 '! kill -0 $watch_pid 2>/dev/null' || kill $watch_pid # never hang on it
wait $watch_pid
rc=$?
watch_pid=
check "the watch reconnected and ended with the cancellation (exit 3)" '[ $rc -eq 3 ] && grep -q reconnected "$tmp/watch.out"'
[ $rc -eq 3 ] || cat "$tmp/watch.out"
"$moectl" cancel "$queued" >/dev/null
wait_until 15 '[ "$(state_of "$running")" = JOB_CANCELLED ] && [ "$(state_of "$queued")" = JOB_CANCELLED ]'
check "both jobs end CANCELLED" '[ "$(state_of "$running")" = JOB_CANCELLED ] && [ "$(state_of "$queued")" = JOB_CANCELLED ]'

"$moectl" cluster down --dir "$cdir" >/dev/null
check "cluster down exits 0" '[ $? -eq 0 ]'
left=$(for p in /proc/[0-9]*; do grep -qsaF -- "$cdir/" "$p/cmdline" && echo "${p#/proc/}"; done)
check "nothing of the cluster is left running" '[ -z "$left" ]'

if [ $fails -gt 0 ]; then # what the daemons said, for whoever reads the failure
  "$moectl" jobs 2>&1
  for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 15; tail -n 5 "$f"; }; done
fi
[ $fails -eq 0 ] && echo "cli_coordinator_restart: all checks passed" || echo "cli_coordinator_restart: $fails checks failed"
exit $((fails > 0))
