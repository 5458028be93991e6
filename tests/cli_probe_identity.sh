#!/usr/bin/env bash
# Per-worker identity, probed as an attacker on the same network would, holding the cluster
# token: a local cluster of 2 pods x 2 workers and a spare runs a 2 x 2 job while
# tests/probe_identity.py forges ReportStep, UploadModel, ReportJobEnd and ReportFault for
# another worker's slot, re-registers a live worker's id, sends RunSlot, StopJob, FenceSlot and
# InjectFault to a worker with the tokens, and heartbeats for a stopped (SIGSTOP) spare. Each is
# refused with the right code or changes nothing; the stopped spare is declared DEAD all the
# same, and the attacked job runs on in its first epoch (it is long, so that a fast machine
# cannot finish it before the probe does; then it is cancelled). A 2 x 2 job on the same
# workers then ends with a model byte for byte `moectl train`'s and its in-process loss curve,
# and the coordinator's log holds the refusals under the rate limit (a few lines in full, then
# a count), not one line per refused call.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_probe_identity

if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "FAIL needs python3-grpcio, python3-protobuf and protobuf-compiler (deploy/install-deps.sh)"
  exit 1
fi
mkdir -p "$tmp/py"
protoc --python_out="$tmp/py" -I "$MOE_SOURCE_DIR/proto" "$MOE_SOURCE_DIR/proto/moed.proto"

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1 exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
check "every worker wrote its operator token, readable by its owner only" \
  '[ "$(stat -c %a "$cdir"/worker-[0-4]/operator.token | sort -u)" = 600 ]'

cat >"$tmp/spec.yaml" <<YAML
name: probe
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 400, batch_size: 8, log_every: 1, eval_every: 0}
YAML
OMP_NUM_THREADS=1 "$moectl" train "$tmp/spec.yaml" --json --set run.output="$tmp/reference.safetensors" \
  2>"$tmp/train.err" | train_losses >"$tmp/reference.loss"
check "the reference: moectl train in one process" '[ -s "$tmp/reference.safetensors" ]'

# the job under attack runs far longer than the probe takes, however fast the machine; it is
# cancelled afterwards. Then a 2 x 2 job of the reference's spec must make its model
job=$("$moectl" submit "$tmp/spec.yaml" --set run.steps=1000000)
check "submitted the 2 x 2 job under attack ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 60 '[ "$(step_of "$job")" -ge 5 ] 2>/dev/null'
check "$job runs (step $(step_of "$job"))" '[ "$(state_of "$job")" = JOB_RUNNING ]'
# the spare: whichever worker the job left idle (placement picks the four, not the file names)
spare=$("$moectl" cluster status --json | json '[w["pid"] for w in d["workers"] if w["state"] == "WORKER_IDLE"][0]')

timeout 150 "$py" "$MOE_SOURCE_DIR/tests/probe_identity.py" "$tmp/py" "$cdir" "$job" "$spare" \
  >"$tmp/probe.out" 2>&1
rc=$?
grep -E "^(ok|FAIL|     )" "$tmp/probe.out"
check "the probe's checks all hold" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || tail -n 20 "$tmp/probe.out"

check "the attacked job ran on in one epoch, without a recovery" \
  '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$("$moectl" status "$job" --json | json "(d[\"job\"][\"recoveries\"], d[\"job\"][\"epoch\"])")" = "(0, 1)" ]'
"$moectl" cancel "$job" >/dev/null 2>&1
wait_until 60 '[ "$(state_of "$job")" = JOB_CANCELLED ]'
check "... and is cancelled" '[ "$(state_of "$job")" = JOB_CANCELLED ]'
wait_until 60 '[ "$("$moectl" cluster status --json | json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])")" = 5 ]'

job=$("$moectl" submit "$tmp/spec.yaml")
timeout 180 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check_same_model "$job" $?
losses_of "$job" >"$tmp/cluster.loss"
check "the stored loss of every step is the in-process loss" \
  'diff -q "$tmp/cluster.loss" "$tmp/reference.loss" >/dev/null'
check "no recovery, one epoch" \
  '[ "$("$moectl" status "$job" --json | json "(d[\"job\"][\"recoveries\"], d[\"job\"][\"epoch\"])")" = "(0, 1)" ]'

"$moectl" cluster down --dir "$cdir" >/dev/null
check "cluster down stopped everything" '[ -z "$(running_from "$cdir")" ]'
log=$cdir/coordinator.log
refusals=$(grep -cE "rpc: (refused|rejected) " "$log")
echo "     coordinator log: $refusals refusal lines; $(grep -c "more refused calls like this" "$log") count lines"
check "refusals are logged, with the method, peer and caller" \
  'grep -q "rpc: refused /moed.v1.Cluster/ReportStep from ipv4:127.0.0.1:[0-9]* as w-[0-9]*: PERMISSION_DENIED" "$log" && grep -q "rpc: rejected /moed.v1.Cluster/Heartbeat from" "$log"'
check "... under the rate limit: the spoofed heartbeats' flood is a count, not a line each" \
  'grep -qE "[0-9]+ more refused calls like this in the last [0-9]+ s" "$log" && [ "$refusals" -lt 80 ]'
[ $fails -eq 0 ] && echo "cli_probe_identity: all checks passed" || echo "cli_probe_identity: $fails checks failed"
exit $((fails > 0))
