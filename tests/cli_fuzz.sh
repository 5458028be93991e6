#!/usr/bin/env bash
# The wire under fuzz: a real local cluster (1 pod x 2 workers) gets a bounded number of
# random, mutated and hostile inputs on every RPC in proto/methods.h (Jobs, Status and
# Cluster on the coordinator, Worker on the workers), with right, wrong and missing
# credentials, then random and mutated handshakes on the workers' data-plane listeners, idle
# and while a real 1 x 2 job forms its mesh (tests/fuzz_wire.py, which a stock gRPC stack
# drives from proto/moed.proto alone). No daemon may die, hang a call or answer INTERNAL /
# UNKNOWN. Afterwards both workers are alive and registered (not DEAD), and a real 1 x 2 job
# succeeds with `moectl train`'s model byte for byte. In the sanitizer build the daemons run
# under ASan+UBSan: a report in any log fails the test (cluster_lib.sh's cleanup).
# Knobs: MOE_FUZZ_SEED (1), MOE_FUZZ_INPUTS per method (200), MOE_FUZZ_CONNS data-plane
# connections per listener and phase (60). A failure names the method, seed and input index,
# and leaves the input's hex in $MOE_FUZZ_OUT (default /tmp/moe_fuzz_failures).
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_fuzz
out=${MOE_FUZZ_OUT:-/tmp/moe_fuzz_failures}
# running_pid PID: alive and not a zombie
running_pid() {
  local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ]
}

if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "FAIL needs python3-grpcio, python3-protobuf and protobuf-compiler (deploy/install-deps.sh)"
  exit 1
fi
# a sanitized daemon's malloc returns NULL where the real one would (a spec asking for more
# than the machine has), so that the daemons' own out-of-memory paths are what is tested
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1
mkdir -p "$tmp/py"
protoc --python_out="$tmp/py" -I "$MOE_SOURCE_DIR/proto" "$MOE_SOURCE_DIR/proto/moed.proto"

# a heartbeat timeout that a loaded machine running sanitized daemons cannot miss by accident
"$moectl" cluster up --pods 1 --slots 2 --threads 1 --heartbeat-timeout-ms 10000 --dir "$cdir" \
  >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 1 --slots 2 exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
pids=$(cat "$cdir"/coordinator.pid "$cdir"/worker-*.pid | tr '\n' ' ')

cat >"$tmp/job.yaml" <<YAML
name: fuzz
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}]}
run: {steps: 6, batch_size: 4, log_every: 1}
YAML

# a worker whose Worker service the fuzz can reach past its credential check: it registers
# with a stand-in coordinator that tells us the credential it handed out (only a worker's
# coordinator holds it; the cluster's own workers must refuse everyone else)
start_fake_worker "$tmp/py"
check "a worker registered with the stand-in coordinator" '[ -n "${fake_addr:-}" ]'

"$py" "$MOE_SOURCE_DIR/tests/fuzz_wire.py" --pb-dir "$tmp/py" --cluster-dir "$cdir" \
  --methods "$MOE_SOURCE_DIR/proto/methods.h" --spec "$tmp/job.yaml" --out "$out" \
  --worker-under-test "${fake_addr:-}" --worker-credential-file "$tmp/fake/cred"
rc=$?
check "the fuzz driver's checks all hold" '[ $rc -eq 0 ]'

for p in $pids; do check "daemon pid $p still runs" 'running_pid $p'; done
check "the worker under test still runs" 'running_pid $fake_worker'
check "... and stops on SIGTERM" 'kill -TERM $fake_worker && wait $fake_worker'
kill -TERM $fake_pid 2>/dev/null
wait $fake_pid
check "no sanitizer report in the worker under test's log" \
  '! grep -sE "ERROR: (Address|Leak|Thread)Sanitizer|runtime error:" "$tmp/fake/worker.log"'
# the handlers' one rule (docs/development.md): every call answered exactly once
check "no handler answered twice or not at all (the daemons' logs)" \
  '! grep -aE "answered twice|returned without answering" "$cdir"/*.log'
[ $fails -eq 0 ] || { tail -n 40 "$cdir"/*.log; exit 1; } # the rest would only wait in vain
# the workers as GetCluster lists them: both real ones alive (IDLE once the jobs the fuzz
# started end), and the ones the fuzz registered (pid not ours) past their heartbeat timeout,
# so that the next job is not bound to an address where nobody listens
ours="($(echo $pids | tr ' ' ','))"
idle() {
  "$moectl" cluster status --json 2>/dev/null | json "sorted(w['state'] for w in d['workers']
    if w['pid'] in $ours) == ['WORKER_IDLE'] * 2 and all(w['state'] in ('WORKER_DEAD',
    'WORKER_LEFT') for w in d['workers'] if w['pid'] not in $ours)"
}
wait_until 120 '[ "$(idle)" = True ]'
check "GetCluster answers, both real workers are IDLE, the fuzz's own registrations DEAD" \
  '[ "$(idle)" = True ]'

# a real job after all of it: the model is the in-process one, byte for byte
OMP_NUM_THREADS=1 "$moectl" train "$tmp/job.yaml" --set mesh.pods=1 --set mesh.slots=2 \
  --set run.output="$tmp/reference.safetensors" >/dev/null 2>"$tmp/train.err"
check "moectl train made the reference model" '[ -s "$tmp/reference.safetensors" ]'
job=$("$moectl" submit "$tmp/job.yaml" --set mesh.pods=1 --set mesh.slots=2)
check "a 1 x 2 job is accepted after the fuzz ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check_same_model "$job" $?
for p in $pids; do check "daemon pid $p still runs at the end" 'running_pid $p'; done

if [ $fails -gt 0 ]; then
  for f in "$cdir"/*.log; do
    [ -f "$f" ] && { echo "== $f"; grep -av " INFO " "$f" | tail -n 15; }
  done
fi
[ $fails -eq 0 ] && echo "cli_fuzz: all checks passed" || echo "cli_fuzz: $fails checks failed"
exit $((fails > 0))
