#!/usr/bin/env bash
# Every state transfer of a recovery is checksummed, and a bad copy is refused (docs/recovery.md,
# "Checked transfers"). A 3 x 1 job with a spare: slot index 0 lives on three workers, so a
# lost slot has two sources, rank 0 (the one the plan picks first) and rank 1. Worker
# .InjectFault "corrupt-transfer" makes rank 0's next restore send carry a flipped bit after
# its checksums were made; rank 2's worker is killed with SIGKILL. The spare refuses rank 0's
# copy (a "failure" event naming the checksum), the coordinator plans again without that
# source, rank 1 sends a good copy, the job recovers and SUCCEEDS with the model `moectl
# train` makes in one process, byte for byte. Then the bound: with both sources corrupted,
# the next job FAILS naming the slot, both refused sources and why; the coordinator keeps
# serving.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_transfer_check
src=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "FAIL needs python3-grpcio, python3-protobuf and protobuf-compiler (deploy/install-deps.sh)"
  exit 1
fi
mkdir -p "$tmp/pb"
protoc --python_out="$tmp/pb" -I "$src/proto" "$src/proto/moed.proto"

"$moectl" cluster up --pods 3 --slots 1 --spares 1 --threads 1 --heartbeat-timeout-ms 30000 \
  --dir "$cdir" >"$tmp/up.out" 2>&1 # a stopped rank 2 (below) is found by its kill, not its silence
rc=$?
check "cluster up --pods 3 --slots 1 --spares 1" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
name: transfer-check
mesh: {pods: 3, slots: 1, spare_wait_s: 30, timeout_s: 30}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 1500, batch_size: 6, log_every: 500, eval_every: 0}
YAML
reference_train "$tmp/job.yaml"

rank_worker() { "$moectl" status "$1" --json | json "d['job']['bindings'][$2]['worker_id']"; }
rank_address() { "$moectl" status "$1" --json | json "d['job']['bindings'][$2]['worker_address']"; }
worker_field() { "$moectl" cluster status --json | json "[w['$2'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
events() { "$moectl" status "$1" --json | json '"\n".join(e["kind"] + ": " + e["message"] for e in d["events"])'; }
ca=$("$moectl" cluster status --json | json 'd.get("tls_ca", "")')
# corrupt JOB RANK: the next state rank RANK's worker sends for a restore carries a flipped bit
corrupt() {
  local pid index= f
  pid=$(worker_field "$(rank_worker "$1" "$2")" pid)
  for f in "$cdir"/worker-*.pid; do [ "$(cat "$f")" = "$pid" ] && index=${f##*/worker-} index=${index%.pid}; done
  "$py" "$src/tests/inject_fault.py" "$tmp/pb" "$(rank_address "$1" "$2")" \
    "$cdir/worker-$index/operator.token" "$1" corrupt-transfer $ca
}
# start JOB-YAML-ARGS...: submits, waits for committed steps; sets $job, $r0 $r1 $r2 (workers)
start() {
  job=$("$moectl" submit "$tmp/job.yaml" "$@")
  wait_until 60 '[ "$(committed_of "$job")" -ge 20 ] 2>/dev/null'
  check "the 3 x 1 job trains ($job, committed step $(committed_of "$job"))" \
    '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$(committed_of "$job")" -ge 20 ]' ||
    { "$moectl" status "$job" 2>&1 | tail -n 20; exit 1; }
  r0=$(rank_worker "$job" 0) r1=$(rank_worker "$job" 1) r2=$(rank_worker "$job" 2)
}

# stop_rank2, then kill_rank2: rank 2 stopped first (the job stands still meanwhile, however
# slowly this script runs: the corruption is armed then), killed once ranks 0 and 1 have
# finished every step it fed (their steps stand still; mesh.timeout_s is long) at the same
# step, so that each is a source of it (rank 2 may have fed one survivor a step more: then it
# runs on and is stopped again). One a step behind would pull the state instead, and the new
# holder, given a good copy by the first one-shot corruption's other send, become a source.
survivor_steps() { "$moectl" status "$job" --json | json '" ".join(str(s.get("step", 0)) for s in d["slots"][:2])'; }
both_waiting() { local now; now=$(survivor_steps); [ "$now" = "$held" ] || { held=$now; false; }; }
stop_rank2() {
  victim=$(worker_field "$r2" pid)
  local try
  for try in 1 2 3 4 5 6; do # until both survivors stand at the same step: each a source of it
    held=
    kill -STOP "$victim"
    wait_until 20 'both_waiting && sleep 0.5 && both_waiting'
    [ "${held% *}" = "${held#* }" ] && break
    kill -CONT "$victim"
    local was=$held
    wait_until 10 '[ "$(survivor_steps)" != "$was" ]'
  done
  echo "     ranks 0 and 1 stand at steps $held"
}
kill_rank2() {
  kill -9 "$victim"
  echo "     killed $r2 (pid $victim, rank 2, stopped) at step $(step_of "$job")"
}

echo "== one bad source: refused, the other one used"
start
stop_rank2
corrupt "$job" 0
check "InjectFault corrupt-transfer on rank 0 ($r0) accepted" '[ $? -eq 0 ]'
kill_rank2
wait_until 90 '[[ "$(events "$job")" == *"recovered: "* ]] || [ "$(state_of "$job")" != JOB_RUNNING ]'
events "$job" >"$tmp/events.txt"
check "the job recovered" 'grep -q "^recovered: " "$tmp/events.txt"'
check "a failure event says the copy from rank 0 ($r0) failed its checksum and was refused" \
  'grep "^failure: " "$tmp/events.txt" | grep "failed its checksum" | grep -q "rank 0"'
check "the first plan took rank 0's state, the last one rank 1's ($r1)" \
  '[[ "$(grep "^recovering: " "$tmp/events.txt" | head -n 1)" == *"state from rank 0 ($r0)"* &&
     "$(grep "^recovering: " "$tmp/events.txt" | tail -n 1)" == *"state from rank 1 ($r1)"* ]]'
check "the coordinator's log names the refused source" \
  'grep -q "refused the state of slot index 0 from $r0" "$cdir/coordinator.log"'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check_same_model "$job" $rc
[ $fails -gt 0 ] && cat "$tmp/events.txt"

echo "== every source bad: the job FAILS, naming them"
"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "cluster up starts the killed worker again" '[ $? -eq 0 ]'
idle() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }
wait_until 30 '[ "$(idle)" -ge 4 ]'
start --set run.steps=1000000
stop_rank2
corrupt "$job" 0 && corrupt "$job" 1
check "InjectFault corrupt-transfer on ranks 0 ($r0) and 1 ($r1) accepted" '[ $? -eq 0 ]'
coord=$(cat "$cdir/coordinator.pid")
kill_rank2
wait_until 90 '[ "$(state_of "$job")" = JOB_FAILED ]'
check "the job FAILED" '[ "$(state_of "$job")" = JOB_FAILED ]'
err=$("$moectl" status "$job" --json | json 'd["job"]["error"]')
echo "     error: $err"
check "the error names the slot and that no source is left" \
  '[[ "$err" == *"slot (2, 0)"* && "$err" == *"no source of its state"* ]]'
check "... and both refused sources ($r0, $r1) and why" \
  '[[ "$err" == *"refused from $r0"* && "$err" == *"refused from $r1"* && "$err" == *"failed its checksum"* ]]'
check "no recovery was claimed" '[ "$("$moectl" status "$job" --json | json "d[\"job\"][\"recoveries\"]")" = 0 ]'
check "the coordinator kept serving (pid $coord)" \
  '[ "$(cat "$cdir/coordinator.pid")" = "$coord" ] && kill -0 "$coord" && "$moectl" cluster status >/dev/null'

[ $fails -gt 0 ] && events "$job"
cluster_test_finish
