#!/usr/bin/env bash
# A mesh that cannot be placed is refused at submission, by the coordinator, with a reason:
# mesh.pods = 0, experts not divisible by the slots, more slots than live workers (one worker
# plays one slot: no oversubscription), the mpi backend on a cluster without mpirun-launched
# workers. Each is INVALID_ARGUMENT (moectl exit 2) naming what is wrong, stores nothing, and
# the coordinator keeps serving: a mesh that fits then runs to the end. A worker handed a
# RunSlot it cannot play (no binding table, a slot outside the mesh, a peer without a data
# address, an mpi slot on a worker not under mpirun, compact addresses or restore pulls that do
# not fit the mesh, ...) answers INVALID_ARGUMENT and stays up.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_mesh_submit
n_jobs() { "$moectl" jobs --json | json 'len(d["jobs"])'; }

"$moectl" cluster up --pods 1 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1 ||
  { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
cat >"$tmp/mesh.yaml" <<YAML
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 5, batch_size: 12, eval_every: 0}
YAML

# refuse SET... NAME PATTERN: submit with the --set flags, expect exit 2 and PATTERN on stderr
refuse() {
  local name=$1 pattern=$2; shift 2
  local before; before=$(n_jobs)
  "$moectl" submit "$tmp/mesh.yaml" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  check "$name: exit 2 ($(head -c 160 "$tmp/err"))" '[ $rc -eq 2 ] && [ ! -s "$tmp/out" ]'
  check "$name: the reason names $pattern" 'grep -q -- "$pattern" "$tmp/err"'
  check "$name: nothing stored" '[ "$(n_jobs)" = "$before" ]'
}
refuse "mesh.pods = 0" "mesh.pods" --set mesh.pods=0
refuse "3 slots for 4 experts" "mesh.slots = 3 does not divide model.experts = 4" --set mesh.slots=3
refuse "6 slots on 2 workers" "6 slots, but the cluster has 2 live workers" --set mesh.pods=3 --set mesh.slots=2
refuse "4 slots on 2 workers" "one worker plays one slot" --set mesh.slots=4
refuse "mpi without mpirun workers" "mesh.backend = mpi" --set mesh.slots=2 --set mesh.backend=mpi
refuse "an unknown backend" "mesh.backend" --set mesh.backend=carrier-pigeon
# the coordinator, not moectl, refuses placement: the same answer to a stock client
"$py" - "$(cat "$cdir/coordinator.addr")" "$(cat "$cdir/client.token")" <<'PY' >"$tmp/py.out" 2>&1
import sys, json
try:
    import grpc
except ImportError:
    print("skip: no grpcio"); sys.exit(0)
addr, token = sys.argv[1], sys.argv[2]
# hand-encoded SubmitJobRequests (field 1: the spec as JSON): moectl is not in the way
def varint(n):
    out = b""
    while True:
        b = n & 0x7f; n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
ch = grpc.insecure_channel(addr)
call = ch.unary_unary("/moed.v1.Jobs/SubmitJob")
for pods, slots in ((2, 2), (0, 1)):
    spec = json.dumps({"mesh": {"pods": pods, "slots": slots}, "model": {"d_model": 32, "layers": 1,
            "heads": 2, "seq_len": 32, "experts": 4, "d_ff": 64},
            "data": {"sources": [{"path": "/usr/share/common-licenses/GPL-3"}]},
            "run": {"steps": 5, "batch_size": 12}}).encode()
    try:
        call(b"\x0a" + varint(len(spec)) + spec, metadata=[("authorization", "Bearer " + token)],
             timeout=10)
        print(pods, slots, "accepted")
    except grpc.RpcError as e:
        print(pods, slots, e.code().name, e.details())
PY
check "a stock client gets INVALID_ARGUMENT for 4 slots on 2 workers" \
  'grep -q "skip: no grpcio" "$tmp/py.out" || grep -q "^2 2 INVALID_ARGUMENT.*4 slots, but the cluster has 2 live workers" "$tmp/py.out"'
check "... and for mesh.pods = 0, named by the coordinator" \
  'grep -q "skip: no grpcio" "$tmp/py.out" || grep -q "^0 1 INVALID_ARGUMENT.*mesh.pods" "$tmp/py.out"'

# a worker refuses a RunSlot it cannot play (INVALID_ARGUMENT naming why) and keeps serving.
# Only its coordinator may call RunSlot (with the credential it handed the worker), so this
# worker registers with a stand-in coordinator (tests/fake_coordinator.py) that tells us it.
src=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if "$py" -c "import grpc, google.protobuf" 2>/dev/null && command -v protoc >/dev/null &&
   protoc --python_out="$tmp" -I "$src/proto" "$src/proto/moed.proto" 2>"$tmp/protoc.err"; then
  start_fake_worker "$tmp"
  check "a worker registered with the stand-in coordinator" '[ -n "${fake_addr:-}" ]'
  waddr=${fake_addr:-}
  "$py" - "$tmp" "$waddr" "${fake_cred:-}" "$corpus" "$cdir/cluster.token" <<'PY' >"$tmp/runslot.out" 2>&1
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
import moed_pb2 as pb
addr, token, corpus = sys.argv[2], sys.argv[3], sys.argv[4]
ch = grpc.insecure_channel(addr)
run = ch.unary_unary("/moed.v1.Worker/RunSlot", request_serializer=lambda m: m.SerializeToString(),
                     response_deserializer=pb.Empty.FromString)
spec = json.dumps({"mesh": {"pods": 1, "slots": 2}, "model": {"d_model": 32, "layers": 1, "heads": 2,
        "seq_len": 32, "experts": 4, "d_ff": 64}, "data": {"sources": [{"path": corpus}]},
        "run": {"steps": 5, "batch_size": 12}})
def binding(s, data="127.0.0.1:1"):
    return pb.SlotBinding(pod=0, slot=s, worker_id="w-%d" % (s + 1), worker_address="x:1", data_address=data)
cases = {
    "no bindings": pb.RunSlotRequest(job_id="job-900", spec_json=spec, pods=1, slots=2, epoch=1, backend="tcp"),
    "slot outside": pb.RunSlotRequest(job_id="job-901", spec_json=spec, pods=1, slots=2, slot=5, epoch=1,
                                      backend="tcp", bindings=[binding(0), binding(1)]),
    "no data address": pb.RunSlotRequest(job_id="job-902", spec_json=spec, pods=1, slots=2, epoch=1,
                                         backend="tcp", bindings=[binding(0), binding(1, "")]),
    "mpi on a tcp worker": pb.RunSlotRequest(job_id="job-903", spec_json=spec, pods=1, slots=2, epoch=1,
                                             backend="mpi", bindings=[binding(0), binding(1)]),
    "mesh unlike the spec": pb.RunSlotRequest(job_id="job-904", spec_json=spec, pods=2, slots=1, epoch=1,
                                              backend="tcp", data_key=bytes(32), bindings=[binding(0), pb.SlotBinding(
                                                  pod=1, slot=0, worker_id="w-2", worker_address="x:1",
                                                  data_address="127.0.0.1:1")]),
    "epoch 0": pb.RunSlotRequest(job_id="job-905", spec_json=spec, pods=1, slots=2, epoch=0,
                                 backend="tcp", bindings=[binding(0), binding(1)]),
    "no data key": pb.RunSlotRequest(job_id="job-906", spec_json=spec, pods=1, slots=2, epoch=1,
                                     backend="tcp", bindings=[binding(0), binding(1)]),
    # the compact form the coordinator sends (MeshAddresses, restore_pulls)
    "addresses short": pb.RunSlotRequest(job_id="job-907", spec_json=spec, pods=1, slots=2, epoch=1,
                                         backend="tcp", data_key=bytes(32), addresses=pb.MeshAddresses(
                                             hosts=["127.0.0.1"], host=[0], port=[1])),
    "addresses host outside": pb.RunSlotRequest(job_id="job-908", spec_json=spec, pods=1, slots=2, epoch=1,
                                                backend="tcp", data_key=bytes(32), addresses=pb.MeshAddresses(
                                                    hosts=["127.0.0.1"], host=[0, 3], port=[1, 2])),
    "addresses without port": pb.RunSlotRequest(job_id="job-909", spec_json=spec, pods=1, slots=2, epoch=1,
                                                backend="tcp", data_key=bytes(32), addresses=pb.MeshAddresses(
                                                    hosts=["127.0.0.1"], host=[0, 0], port=[1, 0])),
    "restore_pulls odd": pb.RunSlotRequest(job_id="job-911", spec_json=spec, pods=1, slots=2, epoch=1,
                                           backend="tcp", data_key=bytes(32), restore=True, restore_pulls=[1],
                                           addresses=pb.MeshAddresses(hosts=["127.0.0.1"], host=[0, 0],
                                                                      port=[1, 2])),
    "restore_pulls from itself": pb.RunSlotRequest(job_id="job-912", spec_json=spec, pods=1, slots=2, epoch=1,
                                                   backend="tcp", data_key=bytes(32), restore=True,
                                                   restore_pulls=[1, 1], addresses=pb.MeshAddresses(
                                                       hosts=["127.0.0.1"], host=[0, 0], port=[1, 2])),
}
try:
    run(cases["epoch 0"], metadata=[("authorization", "Bearer " + open(sys.argv[5]).read().strip())],
        timeout=10)
    print("cluster token: accepted")
except grpc.RpcError as e:
    print("cluster token: %s %s" % (e.code().name, e.details()))
for name, req in cases.items():
    try:
        run(req, metadata=[("authorization", "Bearer " + token)], timeout=10)
        print("%s: accepted" % name)
    except grpc.RpcError as e:
        print("%s: %s %s" % (name, e.code().name, e.details()))
# a StopJob of an older epoch than the slot runs (a requeue's stop, overtaken by the next
# binding's RunSlot) leaves the slot running; one of its own epoch stops it
stop = ch.unary_unary("/moed.v1.Worker/StopJob", request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=pb.Empty.FromString)
one = json.loads(spec)
one["mesh"] = {"pods": 1, "slots": 1}
one["run"]["steps"] = 1000000
md = [("authorization", "Bearer " + token)]
for what, call, req in (
        ("runslot epoch 2", run, pb.RunSlotRequest(job_id="job-910", spec_json=json.dumps(one), pods=1,
                                                   slots=1, epoch=2, backend="tcp", data_key=bytes(32),
                                                   bindings=[binding(0)])),
        ("stop epoch 1", stop, pb.StopJobRequest(job_id="job-910", epoch=1)),
        ("stop epoch 2", stop, pb.StopJobRequest(job_id="job-910", epoch=2))):
    try:
        call(req, metadata=md, timeout=10)
        print("%s: accepted" % what)
    except grpc.RpcError as e:
        print("%s: %s %s" % (what, e.code().name, e.details()))
PY
  for c in "no bindings" "slot outside" "no data address" "mpi on a tcp worker" "mesh unlike the spec" "epoch 0" \
           "no data key" "addresses short" "addresses host outside" "addresses without port" \
           "restore_pulls odd" "restore_pulls from itself"; do
    check "RunSlot with $c: INVALID_ARGUMENT ($(grep "^$c:" "$tmp/runslot.out" | head -c 150))" \
      'grep -q "^$c: INVALID_ARGUMENT" "$tmp/runslot.out"'
  done
  check "RunSlot with the cluster token: UNAUTHENTICATED" 'grep -q "^cluster token: UNAUTHENTICATED" "$tmp/runslot.out"'
  check "a 1 x 1 slot of epoch 2 runs ($(grep "^runslot epoch 2:" "$tmp/runslot.out" | head -c 150))" \
    'grep -q "^runslot epoch 2: accepted" "$tmp/runslot.out"'
  # StopJob answers after acting, so the log says what each did by the time the client is done
  check "... a StopJob of epoch 1 leaves it running" \
    'grep -q "job-910: slot (0, 0): StopJob of epoch 1 ignored: it runs epoch 2" "$tmp/fake/worker.log" &&
     [ "$(grep -n "job-910: slot (0, 0): stop requested by the coordinator" "$tmp/fake/worker.log" | cut -d: -f1)" \
       -gt "$(grep -n "StopJob of epoch 1 ignored" "$tmp/fake/worker.log" | cut -d: -f1)" ]'
  check "... and one of epoch 2 stops it" \
    'wait_until 60 "grep -q \"job-910: stopped after step\" \"$tmp/fake/worker.log\""'
  check "the worker is still alive after them, and stops on SIGTERM" \
    'kill -0 $fake_worker && kill -TERM $fake_worker && wait $fake_worker'
  kill -TERM $fake_pid 2>/dev/null
  wait $fake_pid
else
  echo "skip RunSlot checks: no python3-grpcio, python3-protobuf or protoc"
fi

# a valid spec whose model is far bigger than a worker's memory: each worker refuses it at
# RunSlot, naming what it needs and its limit, and stays idle (nothing is allocated)
job=$("$moectl" submit "$tmp/mesh.yaml" --set mesh.slots=2 --set model.d_model=65536 \
  --set model.layers=1024 --set model.d_ff=1048576)
wait_until 60 '[ "$(state_of "$job")" = JOB_FAILED ]'
why=$("$moectl" status "$job" --json 2>/dev/null | json 'd["job"]["error"]')
check "a model bigger than the workers' memory FAILS at RunSlot ($why)" \
  '[ "$(state_of "$job")" = JOB_FAILED ] && [[ "$why" == *"needs at least"*"--memory-limit-mb"* ]]'
wait_until 30 '[ "$("$moectl" cluster status --json | json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])")" = 2 ]'
check "... and both workers are idle again" \
  '[ "$("$moectl" cluster status --json | json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])")" = 2 ]'

# still serving: a 1 x 2 mesh fits, runs and ends
job=$("$moectl" submit "$tmp/mesh.yaml" --set mesh.slots=2)
check "the coordinator still serves: a 1 x 2 job is accepted" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 120 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check "... and succeeds (trainer_open_slot and the data plane)" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { tail -n 5 "$tmp/watch.out"; }
check "only that job and the one too big for the workers were stored" '[ "$(n_jobs)" = 2 ]'

cluster_test_finish
