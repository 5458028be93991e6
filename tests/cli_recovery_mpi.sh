#!/usr/bin/env bash
# Recovery with the mpi backend, where a pod is one failure domain (docs/recovery.md): Open MPI
# can neither report a dead rank nor repair a communicator, so a killed rank takes its whole
# mpirun down. A 2 x 2 mpi job loses one rank to kill -9 (`moectl chaos --kinds kill`); chaos
# relaunches that pod as a new mpirun, the way `cluster up` does, the coordinator binds the new
# pod and rebuilds it from the other pod's replicas, and the job SUCCEEDS with the model of
# `moectl train`, byte for byte. Skipped (77) without mpirun.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
if ! command -v mpirun >/dev/null; then
  echo "skip cli_recovery_mpi: no mpirun (Debian: openmpi-bin)"
  exit 77
fi
cluster_test_init cli_recovery_mpi
# Open MPI's plugins leave allocations behind at MPI_Finalize (see cli_mesh_mpi.sh)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

"$moectl" cluster up --pods 2 --slots 2 --backend mpi --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --backend mpi" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }

cat >"$tmp/mpi.yaml" <<YAML
name: recovery-mpi
mesh: {pods: 2, slots: 2, backend: mpi, spare_wait_s: 30}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 2000, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
reference_train "$tmp/mpi.yaml"

mpiruns_before="$(cat "$cdir"/mpirun-0.pid) $(cat "$cdir"/mpirun-1.pid)"
job=$("$moectl" submit "$tmp/mpi.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1 &
watch_pid=$!
timeout 200 "$moectl" chaos "$job" --seed 1 --faults 1 --kinds kill --gap-steps 20 --timeout 90 \
  --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
sed 's/^/     /' "$tmp/chaos.err"
check "moectl chaos --kinds kill exits 0: the lost pod was rebuilt" '[ $rc -eq 0 ]'
pod=$(json 'd["faults"][0]["victims"][0]["pod"]' <"$tmp/chaos.json" 2>/dev/null)
mpiruns_after="$(cat "$cdir"/mpirun-0.pid) $(cat "$cdir"/mpirun-1.pid)"
check "the killed rank's pod ($pod) runs as a new mpirun ($mpiruns_before -> $mpiruns_after)" \
  '[ -n "$pod" ] && [ "$(echo $mpiruns_before | cut -d" " -f$((pod + 1)))" != "$(echo $mpiruns_after | cut -d" " -f$((pod + 1)))" ]'
wait "$watch_pid"
rc=$?
watch_pid=
check_same_model "$job" $rc
"$moectl" status "$job" --json >"$tmp/final.json"
check "the job counts a recovery" '[ "$(json "d[\"job\"][\"recoveries\"]" <"$tmp/final.json")" -ge 1 ]'
check "... and its slots of pod $pod are played by other workers than at the start" \
  '[ "$(json "d[\"job\"][\"epoch\"]" <"$tmp/final.json")" -ge 2 ]'

cluster_test_finish "$job"
