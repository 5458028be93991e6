#!/usr/bin/env bash
# What a recovery's "detection" is timed from (docs/recovery.md, "What the figures measure"):
# the lost worker's last sign of life before the fault, not the coordinator's first signal.
# A 2-pod x 1-slot job (mesh.timeout_s 60: its peer waits on the data plane far longer than
# the heartbeat timeout of 5 s, so the coordinator learns of the hang only from the missed
# heartbeats) on 2 workers and a spare:
#   SIGSTOP  the worker of slot (1, 0) goes silent: the "recovered" event times detection from
#            its last heartbeat or step report, so it is at least the heartbeat timeout (it was
#            a few ms when timed from the first signal), and names that worker and the signal
#   SIGKILL  the worker of slot (0, 0), once the stopped one runs again as a spare: its peer
#            reports the closed connection at once, before the killed worker missed two
#            heartbeats: detection is timed from that report (offset +0 ms)
# A second job, mesh.timeout_s 2.5: a SIGSTOPped worker's peer reports the hang (a data-plane
# timeout) before the heartbeats find it; the fence finds that worker lost, silent since
# before the report: detection is timed from its last sign of life, so it is most of the data
# plane's timeout (the report alone said a few ms).
# The first job's recovery-duration histogram on /metrics counts both recoveries, and its sum is
# their totals as the events give them (the same start point). No other timing is asserted.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_recovery_detection
stopped_pid=
trap 'rc=$?; [ -n "$stopped_pid" ] && kill -CONT "$stopped_pid" 2>/dev/null; (exit $rc); cluster_test_cleanup' EXIT
hb_ms=5000
apos="'"
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
worker_state() { "$moectl" cluster status --json | json "[w['state'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
slot_worker() { "$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($1, $2)][0]"; }
recovered() { "$moectl" status "$job" --json | json 'sum(e["kind"] == "recovered" for e in d["events"])'; }
# the n-th "recovered" event's figures: detection ms, since what, first signal's offset, total s
figures() { "$moectl" status "$job" --json | "$py" -c '
import json, re, sys
ev = [e["message"] for e in json.load(sys.stdin)["events"] if e["kind"] == "recovered"]
m = re.search(r"detection (\d+) ms \(since (.+?); first signal at ([+-]\d+) ms: (.*?)\), fencing.*total ([\d.]+) s", ev[int(sys.argv[1])])
print("\t".join(m.groups()) if m else "none")' "$1"; }

"$moectl" cluster up --pods 2 --slots 1 --spares 1 --threads 1 --heartbeat-timeout-ms $hb_ms \
  --http --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 1 --spares 1 --heartbeat-timeout-ms $hb_ms" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
mesh: {pods: 2, slots: 1, timeout_s: 60, spare_wait_s: 30}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML
job=$("$moectl" submit "$tmp/job.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 60 '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'
check "the 2 x 1 job runs" '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'

# ---- SIGSTOP: found by the heartbeat timeout ----
hung=$(slot_worker 1 0)
stopped_pid=$(worker_pid "$hung")
kill -STOP "$stopped_pid"
wait_until 90 '[ "$(recovered)" -ge 1 ] 2>/dev/null'
check "the hang of $hung is recovered" '[ "$(recovered)" -ge 1 ] 2>/dev/null'
IFS=$'\t' read -r det since offset signal total <<<"$(figures 0)"
echo "     detection ${det:-?} ms since ${since:-?}; first signal at ${offset:-?} ms: ${signal:-?}; total ${total:-?} s"
check "its first signal is the heartbeat timeout" '[[ "${signal:-}" == *"worker $hung "*"no heartbeat for"* ]]'
check "detection is timed from $hung's last heartbeat or step report" \
  '[ "${since:-}" = "$hung${apos}s last heartbeat" ] || [ "${since:-}" = "$hung${apos}s last step report" ]'
check "detection (${det:-?} ms) is at least the heartbeat timeout ($hb_ms ms), not a few ms" \
  '[ "${det:-0}" -ge $hb_ms ]'
check "... and so is the first signal's offset from that sign of life (${offset:-?} ms)" \
  '[ "${offset#+}" -ge $hb_ms ] 2>/dev/null'
check "the total (${total:-?} s) starts from the same point: it is more than the detection" \
  '"$py" -c "import sys; sys.exit(0 if float(\"${total:-0}\") * 1000 > ${det:-0} else 1)"'
total1=${total:-0}
kill -CONT "$stopped_pid"
stopped_pid=
wait_until 30 '[ "$(worker_state "$hung")" = WORKER_IDLE ]'
check "$hung runs again and is the spare" '[ "$(worker_state "$hung")" = WORKER_IDLE ]'

# ---- SIGKILL: its peer reports the closed connection at once ----
killed=$(slot_worker 0 0)
peer=$(slot_worker 1 0)
step=$(step_of "$job")
wait_until 30 '[ "$(step_of "$job")" -gt "$step" ] 2>/dev/null'
kill -9 "$(worker_pid "$killed")"
wait_until 90 '[ "$(recovered)" -ge 2 ] 2>/dev/null'
check "the kill of $killed is recovered" '[ "$(recovered)" -ge 2 ] 2>/dev/null'
IFS=$'\t' read -r det since offset signal total <<<"$(figures 1)"
echo "     detection ${det:-?} ms since ${since:-?}; first signal at ${offset:-?} ms: ${signal:-?}; total ${total:-?} s"
check "its first signal is $peer's ReportFault" '[[ "${signal:-}" == "$peer reported a data-plane fault"* ]]'
check "detection is timed from that report: $peer's, offset +0 ms" \
  '[ "${since:-}" = "$peer${apos}s report" ] && [ "${offset:-}" = +0 ]'
total2=${total:-0}

# ---- /metrics: the same totals ----
http=$(cat "$cdir/coordinator.http")
curl -s -H "Authorization: Bearer $(cat "$cdir/client.token")" "http://$http/metrics" >"$tmp/metrics.txt"
hist() { sed -n "s/^moed_job_recovery_duration_seconds_$1{job_id=\"$job\"} //p" "$tmp/metrics.txt"; }
echo "     recovery duration histogram: count $(hist count), sum $(hist sum); totals $total1 + $total2 s"
check "the recovery duration histogram counts both recoveries" '[ "$(hist count)" = 2 ]'
check "... and sums their totals as the events give them" \
  '"$py" -c "import sys; sys.exit(0 if abs(float(\"$(hist sum)\") - $total1 - $total2) < 0.01 else 1)"'

"$moectl" cancel "$job" >/dev/null
wait_until 20 '[ "$(state_of "$job")" = JOB_CANCELLED ]'
check "cancelled" '[ "$(state_of "$job")" = JOB_CANCELLED ]'

# ---- SIGSTOP found by its peer's data-plane timeout ----
sed 's/timeout_s: 60/timeout_s: 2.5/' "$tmp/job.yaml" >"$tmp/job2.yaml"
"$moectl" cluster up >/dev/null 2>&1 # the killed worker's process again: the spare
wait_until 30 '[ "$("$moectl" cluster status --json | json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])")" -ge 3 ]'
job=$("$moectl" submit "$tmp/job2.yaml")
wait_until 60 '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'
check "a second job, mesh.timeout_s 2.5, runs ($job)" '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'
hung=$(slot_worker 1 0)
peer=$(slot_worker 0 0)
stopped_pid=$(worker_pid "$hung")
kill -STOP "$stopped_pid"
wait_until 90 '[ "$(recovered)" -ge 1 ] 2>/dev/null'
check "the hang of $hung is recovered" '[ "$(recovered)" -ge 1 ] 2>/dev/null'
IFS=$'\t' read -r det since offset signal total <<<"$(figures 0)"
echo "     detection ${det:-?} ms since ${since:-?}; first signal at ${offset:-?} ms: ${signal:-?}; total ${total:-?} s"
kill -CONT "$stopped_pid"
stopped_pid=
check "its first signal is $peer's ReportFault" '[[ "${signal:-}" == "$peer reported a data-plane fault"* ]]'
check "detection is timed from $hung's last heartbeat or step report" \
  '[ "${since:-}" = "$hung${apos}s last heartbeat" ] || [ "${since:-}" = "$hung${apos}s last step report" ]'
# (its last sign of life may fall a heartbeat after the peer began to wait: not the whole 2.5 s)
check "detection (${det:-?} ms) is most of the data plane's timeout (>= 1500 ms), not a few ms" \
  '[ "${det:-0}" -ge 1500 ]'
"$moectl" cancel "$job" >/dev/null
wait_until 20 '[ "$(state_of "$job")" = JOB_CANCELLED ]'
check "cancelled" '[ "$(state_of "$job")" = JOB_CANCELLED ]'
cluster_test_finish "$job"
