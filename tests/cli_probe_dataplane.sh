#!/usr/bin/env bash
# Attacks on the data plane of real workers, by someone on the network who knows the workers'
# data addresses but holds no key (tests/probe_dataplane.py plays the attacker):
#  - connections planted before a job: each sends something handshake-shaped (the old HELLO
#    naming another job and epoch, random bytes of every plausible size) and closes; they
#    wait in the listeners' accept queues for the next job;
#  - slowloris: 1,400 connections held open while the next job forms its mesh, a tenth of
#    them sending a HELLO;
#  - a failed open (a job cancelled while its mesh forms) before the next job.
# After each, a 2x2 job on the same workers SUCCEEDS with a model byte for byte the one
# `moectl train` makes in one process, and no attacker's connection received a single byte
# (no refusal that names a job or an epoch).
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_probe_dataplane
ulimit -n 8192 2>/dev/null || ulimit -n 4096

# every link over tcp, as between hosts (no shared memory between these same-host workers)
MOE_COMM_SHM=0 "$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
addrs=$("$moectl" cluster status --json | json '" ".join(w["data_address"] for w in d["workers"])')
check "4 data-plane addresses to attack ($addrs)" '[ $(echo $addrs | wc -w) = 4 ]'

cat >"$tmp/mesh.yaml" <<YAML
name: probe
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
mesh: {pods: 2, slots: 2}
run: {steps: 6, batch_size: 8, log_every: 1}
YAML
OMP_NUM_THREADS=1 "$moectl" train "$tmp/mesh.yaml" --quiet \
  --set run.output="$tmp/reference.safetensors" >/dev/null 2>"$tmp/train.err"
check "moectl train made the reference model" '[ -s "$tmp/reference.safetensors" ]'

run_job() { # run_job LABEL [--set ...]: a 2x2 job succeeds with the reference model
  local job rc label=$1
  shift
  job=$("$moectl" submit "$tmp/mesh.yaml" "$@")
  timeout 180 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
  rc=$?
  echo "     $label: $job"
  check_same_model "$job" $rc
  "$moectl" status "$job" --json >"$tmp/status.json" 2>/dev/null
  local formed
  formed=$(json 'str(d["job"].get("epoch")) + "/" + str(d["job"].get("recoveries", 0))' <"$tmp/status.json")
  check "$label: it formed its mesh once (epoch/recoveries $formed, want 1/0)" '[ "$formed" = 1/0 ]'
}

# 1. planted before the job
"$py" "$(dirname "$0")/probe_dataplane.py" plant $addrs >"$tmp/plant.out" 2>&1
check "the attacker planted its connections ($(cat "$tmp/plant.out"))" 'grep -q "^planted" "$tmp/plant.out"'
run_job "after planted connections"

# 2. slowloris while the job forms its mesh
"$py" "$(dirname "$0")/probe_dataplane.py" hold 1400 "$tmp/stop" "$tmp/hold.json" $addrs \
  >"$tmp/hold.out" 2>&1 &

holder=$!
wait_until 60 '[ "$(ls /proc/$holder/fd 2>/dev/null | wc -l)" -ge 1000 ]'
check "the attacker holds its connections open" '[ "$(ls /proc/$holder/fd 2>/dev/null | wc -l)" -ge 1000 ]'
run_job "during 1,400 held connections"
touch "$tmp/stop"
wait "$holder"
check "the attacker's summary ($(cat "$tmp/hold.json" 2>/dev/null))" '[ -s "$tmp/hold.json" ]'
check "no held connection received a byte (no refusal, no job id, no epoch)" \
  '[ "$(json "d[\"got_bytes\"]" <"$tmp/hold.json")" = 0 ]'
check "the attacker's HELLOs were sent" '[ "$(json "d[\"sent_hello\"]" <"$tmp/hold.json")" -gt 0 ]'

# 3. a failed open leaves nothing that fails the next job: cancel a job while its mesh forms
#    (a 2x2 job of a spec whose worker-side start is slow enough is not needed: cancel at once)
job=$("$moectl" submit "$tmp/mesh.yaml" --set run.steps=1000000)
wait_until 60 '[ "$(state_of "$job")" = JOB_RUNNING ]'
"$moectl" cancel "$job" >/dev/null 2>&1
wait_until 60 '[ "$(state_of "$job")" = JOB_CANCELLED ]'
check "the interrupted job is CANCELLED" '[ "$(state_of "$job")" = JOB_CANCELLED ]'
"$py" "$(dirname "$0")/probe_dataplane.py" plant $addrs >/dev/null 2>&1
run_job "after a cancelled job and more planted connections"

# 4. the same attacks on an encrypted data plane: same model, and every link said so
"$py" "$(dirname "$0")/probe_dataplane.py" plant $addrs >/dev/null 2>&1
run_job "encrypted (mesh.encrypt), after planted connections" --set mesh.encrypt=true
check "every worker's data plane reached its 3 peers over encrypted tcp" \
  '[ "$(cat "$cdir"/*.log | grep -c "epoch 1, 0 peers over shared memory, 3 over encrypted tcp")" -ge 4 ]'

idle_count() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }
wait_until 30 '[ "$(idle_count)" = 4 ]'
check "every worker is alive and idle" '[ "$(idle_count)" = 4 ]'
[ $fails -eq 0 ] && echo "cli_probe_dataplane: all checks passed"
exit $((fails > 0))
