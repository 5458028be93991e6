#!/usr/bin/env bash
# The coordinator's side of recovery (coordinator/recovery.c, docs/recovery.md) against fake
# workers that speak only the control plane (tests/fake_workers.py, Debian's python3-grpcio):
# a 2 x 2 job whose slot (1, 0) is lost is fenced, planned (every slot back at the frozen step,
# the new holder's state from rank 0, the spare of the lost slot's physical pod), recorded as
# epoch 2 and restored, with committed_step, recoveries and the events failure / recovering /
# recovered; a spare that refuses its RunSlot restarts the recovery without it, which waits for
# a newcomer (recovery_waiting); losing every copy of slot index 1 FAILS the job naming the slot, both workers and the
# committed step; a job with no spare fails after mesh.spare_wait_s; and a plan whose step T
# had a single copy (pod 0 finished a step pod 1 did not), whose holder dies before the restore
# ends, is planned again at the step before (T was not committed yet); a wrong state hash is a
# replica_mismatch naming both workers, then a repair whose fence asks for the copies' hashes,
# and when no copy of that slot index has an agreed hash the job FAILS saying so. Workers killed
# but not yet timed out stay in the cluster for that last job: a newcomer at one's address makes it
# DEAD at once, and RunSlots to the others requeue the job until it runs on live ones. The end-to-end version
# with real workers and tensors is cli_chaos_*.sh. $1 (moectl) is not used.
set -u
bin=$MOE_BUILD_DIR/bin
py=/usr/bin/python3 # Debian's python, where python3-grpcio lives
if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "skip cli_recovery_plan: needs python3-grpcio, python3-protobuf and protobuf-compiler"
  exit 0
fi
dir=$(mktemp -d /tmp/moe_cli_recovery_plan.XXXXXX)
cpid=
source "$(dirname "$0")/proc_lib.sh"
trap 'stop "$cpid"; rm -rf "$dir"' EXIT

mkdir -p "$dir/py"
protoc --python_out="$dir/py" -I "$MOE_SOURCE_DIR/proto" "$MOE_SOURCE_DIR/proto/moed.proto"
umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster.token"
# fast heartbeats: the fakes heartbeat every 100 ms, a killed one is dead after 1 s
"$bin/moed-coordinator" --dir "$dir/state" --listen 127.0.0.1:0 --addr-file "$dir/addr" \
  --client-token-file "$dir/client.token" --cluster-token-file "$dir/cluster.token" \
  --heartbeat-interval-ms 100 --heartbeat-timeout-ms 1000 2>"$dir/coordinator.log" &
cpid=$!
for _ in $(seq 1 600); do
  [ -s "$dir/addr" ] && break
  running "$cpid" || break
  sleep 0.05
done
addr=$(cat "$dir/addr" 2>/dev/null)
check "the coordinator is up at ${addr:-?}" '[ -n "$addr" ] && running $cpid'
[ -n "$addr" ] || { tail -n 30 "$dir/coordinator.log"; exit 1; }

timeout 300 "$py" "$MOE_SOURCE_DIR/tests/fake_workers.py" "$dir/py" "$addr" "$dir/client.token" \
  "$dir/cluster.token" /usr/share/common-licenses/GPL-3 "$dir/coordinator.log"
rc=$?
check "the fake workers' checks all hold" '[ $rc -eq 0 ]'
check "the coordinator is still running" 'running $cpid'
stop "$cpid"
crc=$rc
cpid=
check "the coordinator exits 0 on SIGTERM (got $crc)" '[ "$crc" = 0 ]'
bad=$(grep -sE "ERROR: (Address|Leak|Thread)Sanitizer|runtime error:" "$dir/coordinator.log" | head -n 1)
check "no sanitizer report in the coordinator's log" '[ -z "$bad" ]'
[ $fails -eq 0 ] || { echo "--- coordinator log (tail)"; grep -v " INFO " "$dir/coordinator.log" | tail -n 40; }
echo "cli_recovery_plan: $fails failure(s)"
[ $fails -eq 0 ]
