#!/usr/bin/env bash
# The mpi backend: `cluster up --pods 2 --slots 2 --backend mpi` launches each pod's two
# workers with one `mpirun -np 2` (on 127.0.0.1 only), the workers register their MPI rank and
# mpirun job, and a 2-pod x 2-slot job with mesh.backend = mpi binds slot s of each pod to MPI
# rank s of one mpirun, trains, and gives byte for byte the model `moectl train` gives for the
# same mesh; its status lists each slot's pod peer as "mpi" and the other pod's slots as "shm"
# (the cross-pod links are the tcp backend's, on one host). `cluster down` stops the workers
# and the mpiruns.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
if ! command -v mpirun >/dev/null; then
  echo "skip cli_mesh_mpi: no mpirun (Debian: openmpi-bin)"
  exit 0
fi
cluster_test_init cli_mesh_mpi
# Under AddressSanitizer: Open MPI leaves its plugins' allocations behind at MPI_Finalize (and
# unloads the plugins, so no stack can be named); our own code's leaks are the tcp tests' to find.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"

"$moectl" cluster up --pods 2 --slots 2 --backend mpi --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --backend mpi exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
check "two mpiruns run, one per pod" '[ -s "$cdir/mpirun-0.pid" ] && [ -s "$cdir/mpirun-1.pid" ] && kill -0 "$(cat "$cdir/mpirun-0.pid")" && kill -0 "$(cat "$cdir/mpirun-1.pid")"'
"$moectl" cluster status --json >"$tmp/cs.json"
check "4 workers registered ranks 0 and 1 of two distinct mpirun jobs" \
  '[ "$(json "sorted((w[\"pod\"], w[\"mpi_rank\"], w[\"mpi_size\"]) for w in d[\"workers\"]) == [(0,0,2),(0,1,2),(1,0,2),(1,1,2)] and len(set(w[\"mpi_job\"] for w in d[\"workers\"])) == 2" <"$tmp/cs.json")" = True ]'
check "the ranks of a pod share an mpirun job" \
  '[ "$(json "all(len({w[\"mpi_job\"] for w in d[\"workers\"] if w[\"pod\"] == p}) == 1 for p in (0, 1))" <"$tmp/cs.json")" = True ]'

cat >"$tmp/mesh.yaml" <<YAML
name: mesh-mpi
mesh: {pods: 2, slots: 2, backend: mpi}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 12, batch_size: 8, log_every: 1, eval_every: 6, eval_batches: 2}
YAML
OMP_NUM_THREADS=1 "$moectl" train "$tmp/mesh.yaml" --json --set run.output="$tmp/local.safetensors" \
  2>/dev/null | train_losses >"$tmp/local.loss"
check "moectl train in-process" '[ -s "$tmp/local.safetensors" ]'
job=$("$moectl" submit "$tmp/mesh.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 120 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check "the mpi job succeeds" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || tail -n 12 "$tmp/watch.out"
"$moectl" status "$job" --json >"$tmp/st.json"
check "slot s of each pod is MPI rank s of that pod's mpirun" "$py" -c "import json,sys
st = json.load(open('$tmp/st.json')); cs = json.load(open('$tmp/cs.json'))
w = {x['worker_id']: x for x in cs['workers']}
ok = all(w[s['worker_id']]['mpi_rank'] == s['slot'] for s in st['slots'])
ok &= all(len({w[s['worker_id']]['mpi_job'] for s in st['slots'] if s['pod'] == p}) == 1 for p in (0, 1))
sys.exit(0 if ok and len(st['slots']) == 4 else 1)"
check "... and the backend is mpi" '[ "$(json "d[\"job\"][\"backend\"]" <"$tmp/st.json")" = mpi ]'
# status: a pod's peer through MPI, the other pod's slots over the tcp backend's links (shared
# memory on this one host)
check "status lists the pod peer as mpi and the other pod's two slots as shm" "$py" -c "import json,sys
st = json.load(open('$tmp/st.json'))
ok = all(sorted((l['pod'], l['slot'], l['transport']) for l in s['links']) ==
         sorted((p, q, 'mpi' if p == s['pod'] else 'shm') for p in (0, 1) for q in (0, 1)
                if (p, q) != (s['pod'], s['slot'])) for s in st['slots'])
sys.exit(0 if ok else 1)"
if [ $rc -eq 0 ]; then
  "$moectl" fetch "$job" -o "$tmp/cluster.safetensors" >/dev/null
  check "the fetched model is byte for byte the in-process model" 'cmp "$tmp/cluster.safetensors" "$tmp/local.safetensors"'
  losses_of "$job" >"$tmp/cluster.loss"
  check "the stored loss of every step equals the in-process loss" 'diff "$tmp/cluster.loss" "$tmp/local.loss" >/dev/null'
fi

"$moectl" cluster down --dir "$cdir" >/dev/null
check "cluster down stops the workers and the mpiruns" \
  '[ -z "$(running_from "$cdir")" ] && ! ls "$cdir"/*.pid >/dev/null 2>&1'
if [ $fails -gt 0 ]; then
  for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 10; }; done
fi
[ $fails -eq 0 ] && echo "cli_mesh_mpi: all checks passed" || echo "cli_mesh_mpi: $fails checks failed"
exit $((fails > 0))
