#!/usr/bin/env bash
# deploy/slurm/moed.sbatch under a real Slurm. Debian's munged, slurmctld and two slurmd run
# here as a Slurm cluster of two nodes, n1 and n2, from a generated slurm.conf
# (proctrack/linuxproc, task/none, no cgroups or accounting; state, spool, key and logs in the
# test's directory). Slurm's daemons and srun listen on every address, so it all runs in
# network namespaces the test makes: the controller in the test's own, each node in one of its
# own with its own hostname, joined by a bridge on 10.77.0.0/24 that exists only in them; a
# private /etc/hosts names the nodes. The recipe is sbatch'ed as a user does:
#   - on one node, 4 tasks as 2 pods x 2 slots (loopback), tcp and mpi (one `srun --mpi=pmix`
#     step per pod);
#   - on both nodes, 2 tasks each, as 1 pod x 4 slots across the nodes (tcp) and as a pod per
#     node (mpi, TLS on): the daemons listen on their node's hostname;
# each Slurm job completes and its model, in the submit directory, is byte for byte
# `moectl train`'s for its mesh; its tokens lived in a 0700 directory outside the submit
# directory; moectl reaches the coordinator with MOED_CLUSTER_DIR (from the controller's
# namespace, the login node, for the two-node jobs); at the end every worker stopped on
# SIGTERM, no daemon of it runs and its private directories are gone. Then a job stopped by
# the time limit's signal and one scancel'ed while training leave nothing behind either, and a
# job without a spec fails with one line.
# Needs root (munged, slurmd, namespaces) and Debian's slurm-wlm, munge and iproute2
# (deploy/install-deps.sh --tests); skipped (77) with one line where they cannot be had.
set -u
moectl=$1
src=${MOE_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
skip() { echo "skip cli_slurm: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to run munged and slurmd"
for c in munged slurmctld slurmd sbatch srun scontrol unshare nsenter ip; do
  command -v "$c" >/dev/null || skip "no $c (Debian: slurm-wlm munge iproute2; deploy/install-deps.sh --tests)"
done
if [ -z "${MOE_SLURM_NETNS:-}" ]; then
  unshare --net --mount true 2>/dev/null || skip "cannot create network and mount namespaces (unshare)"
  MOE_SLURM_NETNS=1 exec unshare --net --mount bash "$0" "$@"
fi
ip link set lo up && ip link add br0 type bridge && ip addr add 10.77.0.1/24 dev br0 &&
  ip link set br0 up || skip "cannot make a bridge in a network namespace"

corpus=/usr/share/common-licenses/GPL-3
source "$src/tests/cluster_lib.sh"
cluster_test_init cli_slurm
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" # Open MPI's, as in cli_mesh_mpi
bin=$(cd "$(dirname "$moectl")" && pwd)
sl=$tmp/slurm
slurm_pids=()
declare -A node_pid

# ---- a two-node Slurm cluster ----
slurm_stop() {
  local rc=$?
  scancel --full $(squeue -h -o %i 2>/dev/null) >/dev/null 2>&1
  wait_until 60 '[ -z "$(squeue -h 2>/dev/null)" ]'
  for ((k = ${#slurm_pids[@]} - 1; k >= 0; k--)); do # the slurmds, slurmctld, munged
    kill -TERM "${slurm_pids[k]}" 2>/dev/null
    wait_until 30 '! kill -0 ${slurm_pids[k]} 2>/dev/null' || kill -KILL "${slurm_pids[k]}" 2>/dev/null
  done
  local bad; bad=$(grep -lsE "ERROR: (Address|Leak|Thread)Sanitizer|runtime error:" "$tmp"/submit/*.logs/*.log)
  [ -n "$bad" ] && { echo "FAIL sanitizer report in: $bad"; rc=1; }
  (exit $rc)
  cluster_test_cleanup
}
trap slurm_stop EXIT
mkdir -p "$sl/state" "$sl/spool/n1" "$sl/spool/n2" "$sl/munge" "$tmp/submit" "$tmp/home" "$tmp/nodetmp"
chmod 0700 "$sl/munge"
head -c 1024 /dev/urandom >"$sl/munge/munge.key" && chmod 0400 "$sl/munge/munge.key"
# this mount namespace's /etc/hosts: the controller and the nodes
printf '127.0.0.1 localhost\n10.77.0.1 %s\n10.77.0.11 n1\n10.77.0.12 n2\n' "$(hostname -s)" >"$sl/hosts"
mount --bind "$sl/hosts" /etc/hosts || skip "cannot bind-mount a private /etc/hosts"
cat >"$sl/slurm.conf" <<CONF
ClusterName=moetest
SlurmctldHost=$(hostname -s)(10.77.0.1)
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
SlurmdPidFile=$sl/slurmd-%n.pid
SlurmctldLogFile=$sl/slurmctld.log
SlurmdLogFile=$sl/slurmd-%n.log
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
NodeName=n1 NodeAddr=10.77.0.11 CPUs=8 State=UNKNOWN
NodeName=n2 NodeAddr=10.77.0.12 CPUs=8 State=UNKNOWN
PartitionName=moe Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$sl/slurm.conf
munged -F -f --key-file="$sl/munge/munge.key" --socket="$sl/munge/socket" --pid-file="$sl/munge/pid" \
  --log-file="$sl/munge/log" --seed-file="$sl/munge/seed" 2>>"$sl/munge/log" &
slurm_pids+=($!)
wait_until 30 '[ -S "$sl/munge/socket" ]' || { echo "FAIL munged did not start"; tail -n 5 "$sl/munge/log"; exit 1; }
slurmctld -D -f "$sl/slurm.conf" >>"$sl/slurmctld.out" 2>&1 &
slurm_pids+=($!)
# each node: a network and UTS namespace of its own (its hostname), a veth to the bridge;
# slurmd starts once its address is up
for k in 1 2; do
  unshare --net --uts bash -c "hostname n$k; until [ -e '$sl/n$k.ready' ]; do sleep 0.1; done
    exec slurmd -D -f '$sl/slurm.conf' -N n$k" >>"$sl/slurmd-n$k.out" 2>&1 &
  node_pid[n$k]=$!
  slurm_pids+=($!)
  ip link add vn$k type veth peer name en$k && ip link set vn$k master br0 up &&
    ip link set en$k netns "${node_pid[n$k]}" &&
    nsenter -t "${node_pid[n$k]}" -n sh -c "ip link set lo up && ip link set en$k name eth0 &&
      ip addr add 10.77.0.1$k/24 dev eth0 && ip link set eth0 up" ||
    skip "cannot give a network namespace a veth to the bridge"
  touch "$sl/n$k.ready"
done
if ! wait_until 90 '[ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && [ "$(sinfo -h -o %D 2>/dev/null)" = 2 ]'; then
  echo "FAIL the Slurm cluster did not come up (sinfo: $(sinfo -h -o "%D %T" 2>&1))"
  tail -n 8 "$sl/slurmctld.log" "$sl"/slurmd-*.log "$sl"/*.out
  exit 1
fi
echo "ok   munged, slurmctld and two slurmd serve a two-node cluster (srun --mpi=list: $(srun --mpi=list 2>&1 | tr -s '\n\t' ' '))"
# on_node JOB CMD...: CMD in the network namespace of the (first) node JOB runs on
on_node() {
  local n; n=$(scontrol show job -o "$1" 2>/dev/null | grep -o ' NodeList=n[12]' | cut -d= -f2)
  shift
  nsenter -t "${node_pid[${n:-n1}]}" -n "$@"
}

# ---- the references ----
cat >"$tmp/submit/mesh.yaml" <<YAML
name: slurm
mesh: {pods: 1, slots: 1}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 12, batch_size: 8, log_every: 1, eval_every: 6, eval_batches: 2}
YAML
for mesh in 2x2 1x4; do
  OMP_NUM_THREADS=1 "$moectl" train "$tmp/submit/mesh.yaml" --set mesh.pods=${mesh%x*} \
    --set mesh.slots=${mesh#*x} --set run.output="$tmp/reference-$mesh.safetensors" >/dev/null 2>&1
  check "moectl train in-process ($mesh)" '[ -s "$tmp/reference-$mesh.safetensors" ]'
done

# sbatch_recipe VAR=VALUE... [-- SBATCH_FLAG...]: the recipe as a user submits it, from the
# submit directory, with these parameters and sbatch flags; prints the Slurm job's id
sbatch_recipe() {
  local vars=() flags=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  [ $# -gt 0 ] && shift && flags=("$@")
  (cd "$tmp/submit" && env HOME="$tmp/home" TMPDIR="$tmp/nodetmp" MOED_BIN_DIR="$bin" \
     MOED_DATA_ROOTS=/usr/share/common-licenses "${vars[@]}" \
     sbatch --parsable "${flags[@]}" "$src/deploy/slurm/moed.sbatch")
}
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_ended() { [[ "$(job_state "$1")" =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]]; }
job_gone() { job_ended "$1" && [ -z "$(squeue -h -j "$1" 2>/dev/null)" ]; }
show_job() {
  echo "---- slurm-$1.out"; tail -n 15 "$tmp/submit/slurm-$1.out"
  for f in "$tmp/submit/moed-$1.logs"/*.log; do echo "---- $f"; grep -v " INFO " "$f" | tail -n 6; done
}

# ---- the recipe: one node and two, each backend ----
# case: name | mesh | parameters | sbatch flags (on two nodes, the daemons' address is the
# node's hostname, or its eth0's address with MOED_IFACE)
cases=(
  "1 node, tcp|2x2|MOED_PODS_PER_NODE=2|--nodes=1 --ntasks-per-node=4"
  "1 node, mpi|2x2|MOED_PODS_PER_NODE=2 MOED_BACKEND=mpi|--nodes=1 --ntasks-per-node=4"
  "2 nodes, tcp, MOED_IFACE|1x4|MOED_NODES_PER_POD=2 MOED_IFACE=eth0|--nodes=2 --ntasks-per-node=2"
  "2 nodes, mpi, TLS|2x2|MOED_BACKEND=mpi MOED_TLS=1|--nodes=2 --ntasks-per-node=2"
)
for c in "${cases[@]}"; do
  IFS='|' read -r name mesh params flags <<<"$c"
  f0=$fails
  backend=tcp; [[ $params == *mpi* ]] && backend=mpi
  nodes=1; [[ $name == 2* ]] && nodes=2
  # shellcheck disable=SC2086
  id=$(sbatch_recipe MOED_SPEC=mesh.yaml $params -- $flags 2>"$tmp/sbatch.err")
  check "$name: sbatch takes the recipe (job $id)" '[[ "$id" =~ ^[0-9]+$ ]]' || { cat "$tmp/sbatch.err"; continue; }
  jd=$tmp/home/.moed/slurm/$id local=$tmp/nodetmp/moed-$id out=$tmp/submit/moed-$id
  token=""
  if wait_until 120 '[ -s "$jd/coordinator.addr" ] || job_ended $id'; then
    modes=$(stat -c %a "$jd" "$jd/client.token" "$jd/cluster.token" "$local" 2>/dev/null | tr '\n' ' ')
    check "$name: its tokens are in a 0700 directory outside the submit directory, 0600 each ($modes)" \
      '[ "$modes" = "700 600 600 700 " ]'
    token=$(cat "$jd/client.token" 2>/dev/null)
    # moectl from outside the job: a one-node job's coordinator is on that node's loopback, a
    # two-node job's on n1's address, reached from here (the login node); only a job that has
    # already ended excuses a failure
    where=(); [ $nodes = 1 ] && where=(on_node "$id")
    MOED_CLUSTER_DIR=$jd "${where[@]}" "$moectl" cluster status >"$tmp/outside.out" 2>&1
    rc=$?
    check "$name: moectl outside the job reaches the coordinator at $(cat "$jd/coordinator.addr" 2>/dev/null) with MOED_CLUSTER_DIR" \
      '[ $rc -eq 0 ] || job_ended $id'
  fi
  wait_until 240 'job_gone $id'
  state=$(job_state "$id")
  check "$name: the Slurm job COMPLETED ($state)" '[ "$state" = COMPLETED ]'
  check "$name: it ran ${mesh%x*} pod(s) x ${mesh#*x} slots on the $backend backend" \
    'grep -q "= ${mesh%x*} pod(s) x ${mesh#*x} slot(s), backend $backend" "$tmp/submit/slurm-$id.out"'
  check "$name: its model, in the submit directory, is byte for byte moectl train's" \
    'cmp "$out.safetensors" "$tmp/reference-$mesh.safetensors"'
  check "$name: the daemons' logs are in the submit directory" \
    '[ -s "$out.logs/coordinator.log" ] && [ "$(ls "$out.logs"/worker-*.log | wc -l)" = 4 ]'
  S=${mesh#*x}
  check "$name: task i is a worker of pod i / $S" \
    '(for i in 0 1 2 3; do grep -q "data plane on .* (pod $((i / S))[,)]" "$out.logs/worker-$i.log" || exit 1; done)'
  if [ $nodes = 2 ]; then
    n1=n1 n2=n2; [[ $params == *IFACE* ]] && n1=10.77.0.11 n2=10.77.0.12
    check "$name: each node's workers listen on and announce its address ($n1, $n2)" \
      '[ "$(sed -n "s/.*listening on \([^:]*\):[0-9]*, data plane on \1:.*/\1/p" "$out.logs"/worker-*.log | sort | tr "\n" " ")" = "$n1 $n1 $n2 $n2 " ]'
  fi
  [[ $name == *TLS* ]] && check "$name: the certificate names both nodes, and the coordinator speaks TLS" \
    'grep -q "TLS certificate for IP:127.0.0.1,DNS:n1,DNS:n2" "$tmp/submit/slurm-$id.out" && grep -q "(TLS)" "$out.logs/coordinator.log"'
  [ $backend = mpi ] && check "$name: each worker is a rank of its pod's srun step" \
    '[ "$(grep -l "MPI: rank [01] of 2 in mpirun job .*slurm.pmix.$id" "$out.logs"/worker-*.log | wc -l)" = 4 ]'
  check "$name: no token was ever in the submit directory" '[ -n "$token" ] && ! grep -rqsF "$token" "$tmp/submit"'
  check "$name: at the end every worker stopped on SIGTERM, none was killed" \
    '[ "$(grep -l "Terminated: stopping" "$out.logs"/worker-*.log | wc -l)" = 4 ] && ! grep -q Killed "$tmp/submit/slurm-$id.out"'
  check "$name: at the end no daemon of it runs, and its private directories are gone" \
    '[ -z "$(running_from "$local")" ] && [ ! -e "$jd" ] && [ ! -e "$local" ]'
  [ $fails -eq $f0 ] || show_job "$id"
done

# ---- stopped while it trains: by the time limit's signal, and by scancel ----
# --signal=B:TERM@60 (in the recipe) signals the batch shell alone a minute before the time
# limit, as `scancel --batch --signal=TERM` does now; a plain scancel signals every process
# of the job at once. Either way nothing of the job is left, on either node.
sed 's/steps: 12,/steps: 1000000,/' "$tmp/submit/mesh.yaml" >"$tmp/submit/long.yaml"
for how in "time limit" scancel; do
  f0=$fails
  id=$(sbatch_recipe MOED_SPEC=long.yaml -- --nodes=2 --ntasks-per-node=2 2>"$tmp/sbatch.err")
  check "$how: sbatch takes a long two-node job (job $id)" '[[ "$id" =~ ^[0-9]+$ ]]'
  jd=$tmp/home/.moed/slurm/$id local=$tmp/nodetmp/moed-$id
  wait_until 120 'grep -qs "submitted job-" "$tmp/submit/slurm-$id.out" || job_ended $id'
  MOED_CLUSTER_DIR=$jd wait_until 60 '[ "$(step_of job-1 2>/dev/null || echo 0)" -ge 1 ]'
  check "$how: the job trains (step $(MOED_CLUSTER_DIR=$jd step_of job-1 2>/dev/null))" \
    '[ "$(MOED_CLUSTER_DIR=$jd step_of job-1 2>/dev/null || echo 0)" -ge 1 ]'
  if [ "$how" = scancel ]; then scancel "$id"; want=CANCELLED
  else scancel --batch --signal=TERM "$id"; want=FAILED; fi
  wait_until 90 'job_gone $id'
  state=$(job_state "$id")
  check "$how: the Slurm job ends $want ($state)" '[ "$state" = $want ]'
  check "$how: the recipe's trap stopped every daemon and removed its private directories" \
    '[ -z "$(running_from "$local")" ] && [ ! -e "$jd" ] && [ ! -e "$local" ]'
  check "$how: no model was fetched" '[ ! -e "$tmp/submit/moed-$id.safetensors" ]'
  check "$how: the recipe said it was stopping" 'grep -q "signalled: stopping" "$tmp/submit/slurm-$id.out"'
  [ "$how" = scancel ] || check "$how: the workers stopped on SIGTERM, none was killed" \
    '[ "$(grep -l "Terminated: stopping" "$tmp/submit/moed-$id.logs"/worker-*.log | wc -l)" = 4 ] && ! grep -q Killed "$tmp/submit/slurm-$id.out"'
  [ $fails -eq $f0 ] || show_job "$id"
done

# ---- bad input: one clear line, and the Slurm job fails ----
id=$(sbatch_recipe MOED_SPEC= 2>/dev/null)
wait_until 60 'job_gone $id'
check "without MOED_SPEC the job FAILS ($(job_state "$id")) and says why" \
  '[ "$(job_state "$id")" = FAILED ] && grep -q "MOED_SPEC: name the job spec" "$tmp/submit/slurm-$id.out"'

[ $fails -eq 0 ] && echo "cli_slurm: all checks passed" || echo "cli_slurm: $fails checks failed"
exit $((fails > 0))
