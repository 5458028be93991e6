#!/usr/bin/env bash
# deploy/slurm/moed.sbatch under a real Slurm: Debian's munged, slurmctld and slurmd run here
# as a one-node cluster (a generated slurm.conf: proctrack/linuxproc, task/none, no cgroups,
# state, spool and logs in the test's directory), in a network namespace of the test's own
# (Slurm's daemons and srun listen on every address; in the namespace that is the loopback
# and one documentation-range address on it, 192.0.2.1, that exists only there). The recipe
# is sbatch'ed as 1 node x 4 tasks = 2 pods x 2 slots, with the tcp backend and with the mpi
# backend (one `srun --mpi=pmix` step per pod): each job completes, its model lands in the
# submit directory byte for byte `moectl train`'s, its tokens lived in a 0700 directory
# outside the submit directory, moectl reaches the coordinator from outside the job with
# MOED_CLUSTER_DIR, and at the end no daemon of it runs and its private directories are gone.
# A third job is scancel'ed while it trains: its trap stops everything just the same.
# Needs root (munged and slurmd) and Debian's slurm-wlm and munge (deploy/install-deps.sh
# --tests); skipped (77) with one line where they cannot be had.
set -u
moectl=$1
src=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
skip() { echo "skip cli_slurm: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to run munged and slurmd"
for c in munged slurmctld slurmd sbatch srun scontrol unshare ip; do
  command -v "$c" >/dev/null || skip "no $c (Debian: slurm-wlm munge iproute2; deploy/install-deps.sh --tests)"
done
if [ -z "${MOE_SLURM_NETNS:-}" ]; then
  unshare --net true 2>/dev/null || skip "cannot create a network namespace (unshare --net)"
  MOE_SLURM_NETNS=1 exec unshare --net bash "$0" "$@"
fi
ip link set lo up && ip addr add 192.0.2.1/32 dev lo || { echo "FAIL cannot set up the namespace's loopback"; exit 1; }

corpus=/usr/share/common-licenses/GPL-3
source "$src/tests/cluster_lib.sh"
cluster_test_init cli_slurm
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" # Open MPI's, as in cli_mesh_mpi
bin=$(cd "$(dirname "$moectl")" && pwd)
sl=$tmp/slurm
slurm_pids=()

# ---- a one-node Slurm cluster ----
slurm_stop() {
  local rc=$?
  scancel --full "$(squeue -h -o %i 2>/dev/null)" >/dev/null 2>&1
  wait_until 60 '[ -z "$(squeue -h 2>/dev/null)" ]'
  for ((k = ${#slurm_pids[@]} - 1; k >= 0; k--)); do # slurmd, slurmctld, munged
    kill -TERM "${slurm_pids[k]}" 2>/dev/null
    wait_until 30 '! kill -0 ${slurm_pids[k]} 2>/dev/null' || kill -KILL "${slurm_pids[k]}" 2>/dev/null
  done
  local bad; bad=$(grep -lsE "ERROR: (Address|Leak|Thread)Sanitizer|runtime error:" "$tmp"/submit/*.logs/*.log)
  [ -n "$bad" ] && { echo "FAIL sanitizer report in: $bad"; rc=1; }
  (exit $rc)
  cluster_test_cleanup
}
trap slurm_stop EXIT
mkdir -p "$sl/state" "$sl/spool/moenode" "$sl/munge" "$tmp/submit" "$tmp/home" "$tmp/nodetmp"
chmod 0700 "$sl/munge"
head -c 1024 /dev/urandom >"$sl/munge/munge.key" && chmod 0400 "$sl/munge/munge.key"
cat >"$sl/slurm.conf" <<CONF
ClusterName=moetest
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$sl/munge/socket
CredType=cred/munge
StateSaveLocation=$sl/state
SlurmdSpoolDir=$sl/spool/%n
SlurmctldPidFile=$sl/slurmctld.pid
SlurmdPidFile=$sl/slurmd.pid
SlurmctldLogFile=$sl/slurmctld.log
SlurmdLogFile=$sl/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=30
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=moenode NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=8 State=UNKNOWN
PartitionName=moe Nodes=moenode Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$sl/slurm.conf
munged -F -f --key-file="$sl/munge/munge.key" --socket="$sl/munge/socket" --pid-file="$sl/munge/pid" \
  --log-file="$sl/munge/log" --seed-file="$sl/munge/seed" 2>>"$sl/munge/log" &
slurm_pids+=($!)
wait_until 30 '[ -S "$sl/munge/socket" ]' || { echo "FAIL munged did not start"; tail -n 5 "$sl/munge/log"; exit 1; }
slurmctld -D -f "$sl/slurm.conf" >>"$sl/slurmctld.out" 2>&1 &
slurm_pids+=($!)
slurmd -D -f "$sl/slurm.conf" -N moenode >>"$sl/slurmd.out" 2>&1 &
slurm_pids+=($!)
if ! wait_until 90 '[ "$(sinfo -h -o %T 2>/dev/null)" = idle ]'; then
  echo "FAIL the one-node Slurm cluster did not come up (sinfo: $(sinfo -h -o %T 2>&1))"
  tail -n 8 "$sl/slurmctld.log" "$sl/slurmd.log" "$sl"/*.out
  exit 1
fi
echo "ok   munged, slurmctld and slurmd serve a one-node cluster (srun --mpi=list: $(srun --mpi=list 2>&1 | tr -s '\n\t' ' '))"

# ---- the reference ----
cat >"$tmp/submit/mesh.yaml" <<YAML
name: slurm
mesh: {pods: 1, slots: 1}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 12, batch_size: 8, log_every: 1, eval_every: 6, eval_batches: 2}
YAML
OMP_NUM_THREADS=1 "$moectl" train "$tmp/submit/mesh.yaml" --set mesh.pods=2 --set mesh.slots=2 \
  --set run.output="$tmp/reference.safetensors" >/dev/null 2>&1
check "moectl train in-process (2 pods x 2 slots)" '[ -s "$tmp/reference.safetensors" ]'

# sbatch_recipe VAR=VALUE...: the recipe as a user submits it, from the submit directory
sbatch_recipe() {
  (cd "$tmp/submit" && env HOME="$tmp/home" TMPDIR="$tmp/nodetmp" MOED_BIN_DIR="$bin" \
     MOED_DATA_ROOTS=/usr/share/common-licenses MOED_PODS_PER_NODE=2 "$@" \
     sbatch --parsable "$src/deploy/slurm/moed.sbatch")
}
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_ended() { [[ "$(job_state "$1")" =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]]; }
show_job() {
  echo "---- slurm-$1.out"; tail -n 15 "$tmp/submit/slurm-$1.out"
  for f in "$tmp/submit/moed-$1.logs"/*.log; do echo "---- $f"; grep -v " INFO " "$f" | tail -n 6; done
}

# ---- the recipe, with each backend ----
# (the mpi job also runs its control plane over TLS, MOED_TLS=1)
for backend in tcp mpi; do
  tls=0; [ $backend = mpi ] && tls=1
  id=$(sbatch_recipe MOED_SPEC=mesh.yaml MOED_BACKEND=$backend MOED_TLS=$tls 2>"$tmp/sbatch.err")
  check "$backend: sbatch takes the recipe (job $id)" '[[ "$id" =~ ^[0-9]+$ ]]' || { cat "$tmp/sbatch.err"; continue; }
  jd=$tmp/home/.moed/slurm/$id local=$tmp/nodetmp/moed-$id out=$tmp/submit/moed-$id
  token=""
  if wait_until 120 '[ -s "$jd/coordinator.addr" ] || job_ended $id'; then
    modes=$(stat -c %a "$jd" "$jd/client.token" "$jd/cluster.token" "$local" 2>/dev/null | tr '\n' ' ')
    check "$backend: its tokens are in a 0700 directory outside the submit directory, 0600 each ($modes)" \
      '[ "$modes" = "700 600 600 700 " ]'
    token=$(cat "$jd/client.token" 2>/dev/null)
    # moectl from outside the job, as from a login node; only a job that already ended excuses it
    MOED_CLUSTER_DIR=$jd "$moectl" cluster status >"$tmp/outside.out" 2>&1
    rc=$?
    check "$backend: moectl outside the job reaches its coordinator with MOED_CLUSTER_DIR=$jd" \
      '[ $rc -eq 0 ] || job_ended $id'
  fi
  wait_until 240 'job_ended $id && [ -z "$(squeue -h -j $id 2>/dev/null)" ]'
  state=$(job_state "$id")
  check "$backend: the Slurm job COMPLETED ($state)" '[ "$state" = COMPLETED ]'
  check "$backend: it ran 2 pods x 2 slots on the $backend backend" \
    'grep -q "= 2 pod(s) x 2 slot(s), backend $backend" "$tmp/submit/slurm-$id.out"'
  check "$backend: its model, in the submit directory, is byte for byte moectl train's" \
    'cmp "$out.safetensors" "$tmp/reference.safetensors"'
  check "$backend: the daemons' logs are in the submit directory" \
    '[ -s "$out.logs/coordinator.log" ] && [ "$(ls "$out.logs"/worker-*.log | wc -l)" = 4 ]'
  [ $tls = 1 ] && check "mpi: with MOED_TLS=1 every daemon spoke TLS" \
    'grep -q "(TLS)" "$out.logs/coordinator.log" && grep -q "TLS certificate for IP:127.0.0.1" "$tmp/submit/slurm-$id.out"'
  [ $backend = mpi ] && check "mpi: each worker is a rank of its pod's srun step" \
    '[ "$(grep -l "MPI: rank [01] of 2 in mpirun job .*slurm.pmix.$id" "$out.logs"/worker-*.log | wc -l)" = 4 ]'
  check "$backend: no token was ever in the submit directory" '[ -n "$token" ] && ! grep -rqsF "$token" "$tmp/submit"'
  check "$backend: at the end every worker stopped on SIGTERM, none was killed" \
    '[ "$(grep -l "Terminated: stopping" "$out.logs"/worker-*.log | wc -l)" = 4 ] && ! grep -q Killed "$tmp/submit/slurm-$id.out"'
  check "$backend: at the end no daemon of it runs, and its private directories are gone" \
    '[ -z "$(running_from "$local")" ] && [ ! -e "$jd" ] && [ ! -e "$local" ]'
  [ $fails -eq 0 ] || show_job "$id"
done

# ---- stopped while it trains: by the time limit's signal, and by scancel ----
# --signal=B:TERM@60 (in the recipe) signals the batch shell alone a minute before the time
# limit, as `scancel --batch --signal=TERM` does now; a plain scancel signals every process
# of the job at once. Either way nothing of the job is left.
sed 's/steps: 12,/steps: 1000000,/' "$tmp/submit/mesh.yaml" >"$tmp/submit/long.yaml"
for how in "time limit" scancel; do
  id=$(sbatch_recipe MOED_SPEC=long.yaml 2>"$tmp/sbatch.err")
  check "$how: sbatch takes a long job (job $id)" '[[ "$id" =~ ^[0-9]+$ ]]'
  jd=$tmp/home/.moed/slurm/$id local=$tmp/nodetmp/moed-$id
  wait_until 120 'grep -qs "submitted job-" "$tmp/submit/slurm-$id.out" || job_ended $id'
  MOED_CLUSTER_DIR=$jd wait_until 60 '[ "$(step_of job-1 2>/dev/null || echo 0)" -ge 1 ]'
  check "$how: the job trains (step $(MOED_CLUSTER_DIR=$jd step_of job-1 2>/dev/null))" \
    '[ "$(MOED_CLUSTER_DIR=$jd step_of job-1 2>/dev/null || echo 0)" -ge 1 ]'
  if [ "$how" = scancel ]; then scancel "$id"; want=CANCELLED
  else scancel --batch --signal=TERM "$id"; want=FAILED; fi
  wait_until 90 'job_ended $id && [ -z "$(squeue -h -j $id 2>/dev/null)" ]'
  state=$(job_state "$id")
  check "$how: the Slurm job ends $want ($state)" '[ "$state" = $want ]'
  check "$how: the recipe's trap stopped every daemon and removed its private directories" \
    '[ -z "$(running_from "$local")" ] && [ ! -e "$jd" ] && [ ! -e "$local" ]'
  check "$how: no model was fetched" '[ ! -e "$tmp/submit/moed-$id.safetensors" ]'
  check "$how: the recipe said it was stopping" 'grep -q "signalled: stopping" "$tmp/submit/slurm-$id.out"'
  [ "$how" = scancel ] || check "$how: the workers stopped on SIGTERM, none was killed" \
    '[ "$(grep -l "Terminated: stopping" "$tmp/submit/moed-$id.logs"/worker-*.log | wc -l)" = 4 ] && ! grep -q Killed "$tmp/submit/slurm-$id.out"'
  [ $fails -eq 0 ] || show_job "$id"
done

# ---- bad input: one clear line, and the Slurm job fails ----
id=$(sbatch_recipe MOED_SPEC= 2>/dev/null)
wait_until 60 'job_ended $id && [ -z "$(squeue -h -j $id 2>/dev/null)" ]'
check "without MOED_SPEC the job FAILS ($(job_state "$id")) and says why" \
  '[ "$(job_state "$id")" = FAILED ] && grep -q "MOED_SPEC: name the job spec" "$tmp/submit/slurm-$id.out"'

[ $fails -eq 0 ] && echo "cli_slurm: all checks passed" || echo "cli_slurm: $fails checks failed"
exit $((fails > 0))
