#!/usr/bin/env bash
# The coordinator's state and answers stay bounded, against a real local cluster (one worker
# running a long job, so that every other job queues) and then its coordinator restarted on
# its own with retention settings: ListJobs pages (every job exactly once, through submits and
# deletes), DeleteJob removes an ended job with its model for good and refuses a queued or
# running one, oversized submissions are INVALID_ARGUMENT at once (tests/bounded_state.py,
# a stock gRPC client), `moectl jobs` follows the pages and `moectl delete` deletes;
# --max-finished-jobs and --job-retention-s expire ended jobs after a restart; a job with more
# events than GetJob's 32 (a reachable worker whose RunSlot is always UNAVAILABLE takes it again
# and again) is read whole by ListEvents, in pages, and by `moectl events`, and is cut to its
# newest events by --max-events-per-job after a restart; GetCluster pages
# hundreds of registered workers, each with its own extra data address.
set -u
moectl=$1
bin=$(dirname "$moectl")
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "skip cli_bounded_state: needs python3-grpcio, python3-protobuf and protobuf-compiler"
  exit 0
fi
cluster_test_init cli_bounded_state
coord=
stop_coordinator() {
  [ -n "$coord" ] || return 0
  kill -TERM "$coord" 2>/dev/null
  wait "$coord"
  crc=$?
  coord=
}
trap 'rc=$?; stop_coordinator; (exit $rc); cluster_test_cleanup' EXIT
mkdir -p "$tmp/py"
protoc --python_out="$tmp/py" -I "$MOE_SOURCE_DIR/proto" "$MOE_SOURCE_DIR/proto/moed.proto"

"$moectl" cluster up --workers 1 --threads 1 --no-tls --dir "$cdir" >"$tmp/up.out" 2>&1 ||
  { cat "$tmp/up.out"; exit 1; }
addr=$(cat "$cdir/coordinator.addr")
models=$cdir/coordinator/models
bounded() { "$py" "$MOE_SOURCE_DIR/tests/bounded_state.py" "$tmp/py" "$addr" \
  "$cdir/client.token" "$cdir/cluster.token" "$@"; }

cat >"$tmp/tiny.yaml" <<YAML
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 3, batch_size: 4}
YAML
sed 's/steps: 3,/steps: 1000000,/' "$tmp/tiny.yaml" >"$tmp/long.yaml"

# ---- a finished job with a model, and a long one that keeps the worker busy ----
done_job=$("$moectl" submit "$tmp/tiny.yaml")
"$moectl" watch "$done_job" >/dev/null 2>&1
check "$done_job SUCCEEDS and its model is on the coordinator's disk" \
  '[ "$(state_of "$done_job")" = JOB_SUCCEEDED ] && [ -s "$models/$done_job.safetensors" ]'
long=$("$moectl" submit "$tmp/long.yaml")
wait_until 30 '[ "$(state_of "$long")" = JOB_RUNNING ]'
check "$long runs" '[ "$(state_of "$long")" = JOB_RUNNING ]'

# ---- pages, deletes and limits through a stock client ----
bounded jobs "$corpus" "$long"
check "the stock client's checks hold" '[ $? -eq 0 ]'

# ---- moectl follows the pages ----
total=$("$moectl" jobs --json | json 'd["total"]')
"$moectl" jobs --page-size 7 --json >"$tmp/jobs.json"
listed=$(json 'len(set(j["job_id"] for j in d["jobs"])), len(d["jobs"])' <"$tmp/jobs.json")
check "moectl jobs --page-size 7 lists every job once ($listed of $total)" \
  '[ "$listed" = "$total $total" ]'
"$moectl" jobs --limit 5 >"$tmp/jobs5.out"
check "moectl jobs --limit 5 shows 5 and says how many there are" \
  '[ "$(grep -c "^job-" "$tmp/jobs5.out")" = 5 ] && grep -q "5 of $total shown" "$tmp/jobs5.out"'
check "moectl jobs says how many jobs are in which state" \
  'grep -qE "^$total jobs: 1 running, [0-9]+ queued" "$tmp/jobs5.out"'

# ---- moectl delete ----
"$moectl" delete "$long" >"$tmp/del.out" 2>&1
rc=$?
check "moectl delete of a running job fails (exit 1) naming its state" \
  '[ $rc -eq 1 ] && grep -q RUNNING "$tmp/del.out"'
check "moectl delete of an ended job deletes it" \
  '[ "$("$moectl" delete "$done_job")" = "$done_job deleted" ]'
check "... its model file is gone" '[ ! -e "$models/$done_job.safetensors" ]'
"$moectl" status "$done_job" >/dev/null 2>&1
check "... and it is unknown (exit 2)" '[ $? -eq 2 ]'

# every job ends: cancel what is left
for j in $("$moectl" jobs --active --json | json '" ".join(j["job_id"] for j in d["jobs"])'); do
  "$moectl" cancel "$j" >/dev/null
done
check "no job is active any more" '[ "$("$moectl" jobs --active --json | json "d[\"total\"]")" = 0 ]'
newest3=$("$moectl" jobs --json | json '" ".join(j["job_id"] for j in d["jobs"][-3:])')
"$moectl" cluster down --dir "$cdir" >/dev/null 2>&1

# ---- retention, after a restart ----
start_coordinator() {
  rm -f "$cdir/coordinator.addr"
  "$bin/moed-coordinator" --dir "$cdir/coordinator" --listen 127.0.0.1:0 \
    --addr-file "$cdir/coordinator.addr" --client-token-file "$cdir/client.token" \
    --cluster-token-file "$cdir/cluster.token" "$@" 2>>"$cdir/coordinator.log" &
  coord=$!
  wait_until 30 '[ -s "$cdir/coordinator.addr" ]'
  addr=$(cat "$cdir/coordinator.addr")
}
start_coordinator --max-finished-jobs 3 --job-retention-s 0
wait_until 30 '[ "$("$moectl" jobs --json | json "d[\"total\"]")" = 3 ]'
check "--max-finished-jobs 3 keeps the 3 newest ended jobs ($newest3)" \
  '[ "$("$moectl" jobs --json | json "\" \".join(j[\"job_id\"] for j in d[\"jobs\"])")" = "$newest3" ]'
"$moectl" status "$done_job" >/dev/null 2>&1
check "the deleted $done_job stays deleted after a restart" '[ $? -eq 2 ]'
check "no model file of a deleted job is left" '[ -z "$(ls "$models")" ]'

# ---- a job's whole history: ListEvents pages, moectl events ----
hist=$("$moectl" submit "$tmp/tiny.yaml")
bounded events "$hist" 45
check "the ListEvents checks hold" '[ $? -eq 0 ]'
"$moectl" events "$hist" --json >"$tmp/events.json"
seqs=$("$py" -c 'import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [int(e["seq"]) for e in ev] == list(range(len(ev))) and ev[0]["kind"] == "submitted" \
  and ev[-1]["kind"] == "cancelled"
print(len(ev), "in-order" if ok else "out-of-order")' "$tmp/events.json")
check "moectl events $hist --json: every event, seq ascending from 0 ($seqs)" \
  '[ "${seqs% *}" -ge 45 ] && [ "${seqs#* }" = in-order ]'
"$moectl" events "$hist" --json --page-size 4 >"$tmp/events4.json"
check "... the same with --page-size 4" 'cmp -s "$tmp/events.json" "$tmp/events4.json"'
"$moectl" events "$hist" >"$tmp/events.out"
check "moectl events $hist: a header and one line per event" \
  '[ "$(wc -l <"$tmp/events.out")" = $(( ${seqs% *} + 1 )) ] && grep -q "^0 .* submitted " "$tmp/events.out"'
"$moectl" plot "$hist" -o "$tmp/hist.svg" --json >"$tmp/hist_plot.json" 2>"$tmp/err" || cat "$tmp/err"
marked=$(json '"%s %d" % (d["events_partial"], len(d["markers"]))' <"$tmp/hist_plot.json")
want=$("$py" -c 'import json, sys
print(sum(json.loads(l)["kind"] in ("requeued", "cancelled") for l in open(sys.argv[1]) if l.strip()))' \
  "$tmp/events.json")
check "moectl plot $hist marks every requeue of its history, not GetJob's latest 32 ($marked, want False $want)" \
  '[ "$marked" = "False $want" ]'
"$moectl" events job-999999 >/dev/null 2>&1
check "moectl events of an unknown job: exit 2" '[ $? -eq 2 ]'
stop_coordinator
check "the coordinator exits 0 on SIGTERM" '[ $crc -eq 0 ]'
# ---- a job's history is bounded: its newest --max-events-per-job events stay ----
last_seq=$(( ${seqs% *} - 1 ))
start_coordinator --max-events-per-job 10
wait_until 30 '[ "$("$moectl" events "$hist" --json | grep -c .)" -le 11 ]'
"$moectl" events "$hist" --json >"$tmp/events10.json"
kept=$("$py" -c 'import json, sys
ev = [int(json.loads(l)["seq"]) for l in open(sys.argv[1]) if l.strip()]
print(len(ev), ev == list(range(ev[0], ev[0] + len(ev))) and ev[-1] == int(sys.argv[2]))' \
  "$tmp/events10.json" "$last_seq")
check "--max-events-per-job 10 keeps the newest 10-11 of $hist's events, in order, to seq $last_seq ($kept)" \
  '[ "${kept#* }" = True ] && [ "${kept% *}" -ge 10 ] && [ "${kept% *}" -le 11 ]'
stop_coordinator
start_coordinator --job-retention-s 1 --max-finished-jobs 0
wait_until 30 '[ "$("$moectl" jobs --json | json "d[\"total\"]")" = 0 ]'
check "--job-retention-s 1 deletes every ended job" \
  '[ "$("$moectl" jobs --json | json "d[\"total\"]")" = 0 ]'
grep -q "retention: deleted" "$cdir/coordinator.log"
check "the coordinator logged what retention deleted" '[ $? -eq 0 ]'

# ---- GetCluster pages (the 301 registered here, the cluster's worker and events' one) ----
bounded cluster 300
check "the GetCluster checks hold" '[ $? -eq 0 ]'
"$moectl" cluster status --json >"$tmp/cluster.json"
listed=$(json 'len(d["workers"]), d["workers_total"]' <"$tmp/cluster.json")
check "moectl cluster status lists all 303 workers ($listed)" '[ "$listed" = "303 303" ]'
stop_coordinator

if [ $fails -ne 0 ]; then
  echo "--- coordinator.log"; tail -n 30 "$cdir/coordinator.log"
  exit 1
fi
echo "cli_bounded_state: all checks passed"
