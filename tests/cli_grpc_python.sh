#!/usr/bin/env bash
# A stock gRPC client that is not part of moed — Debian's python3-grpcio, with messages that
# protoc generates here from proto/moed.proto alone — talks to a real coordinator and a real
# worker on loopback: reads the cluster, trains a tiny job to the end through SubmitJob,
# GetJob and WatchJob, and sends the bad input the issue names (garbage, truncated and
# oversized messages, no or wrong token, unknown job, malformed spec, unknown method), after
# each of which the coordinator must still be alive and answering. The client's checks live
# in tests/grpc_stock_client.py. $1 (moectl) is not used: nothing of moed is on the client side.
set -u
bin=$MOE_BUILD_DIR/bin
py=/usr/bin/python3 # Debian's python, where python3-grpcio lives (not a pyenv one on PATH)
dir=$(mktemp -d /tmp/moe_cli_grpc_python.XXXXXX)
cpid=
wpid=
source "$(dirname "$0")/proc_lib.sh"
trap 'stop "$wpid"; stop "$cpid"; rm -rf "$dir"' EXIT
logs() {
  echo "--- coordinator log (tail)"; tail -n 30 "$dir/coordinator.log" 2>/dev/null
  echo "--- worker log (tail)"; tail -n 30 "$dir/worker.log" 2>/dev/null
}

for need in "$bin/moed-coordinator" "$bin/moed-worker"; do
  [ -x "$need" ] || { echo "FAIL $need is not built"; exit 1; }
done
if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
  echo "FAIL needs python3-grpcio, python3-protobuf and protobuf-compiler (deploy/install-deps.sh)"
  exit 1
fi

# Only the .proto file, compiled now: what any stock client would do.
mkdir -p "$dir/py"
protoc --python_out="$dir/py" -I "$MOE_SOURCE_DIR/proto" "$MOE_SOURCE_DIR/proto/moed.proto"
check "protoc compiles proto/moed.proto for Python" '[ -s "$dir/py/moed_pb2.py" ]'

umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster.token"

"$bin/moed-coordinator" --dir "$dir/state" --listen 127.0.0.1:0 --addr-file "$dir/addr" \
  --client-token-file "$dir/client.token" --cluster-token-file "$dir/cluster.token" \
  --heartbeat-timeout-ms 10000 2>"$dir/coordinator.log" &
cpid=$!
for _ in $(seq 1 600); do
  [ -s "$dir/addr" ] && break
  running "$cpid" || break
  sleep 0.05
done
addr=$(cat "$dir/addr" 2>/dev/null)
check "the coordinator is up at ${addr:-?}" '[ -n "$addr" ] && running $cpid'
[ -n "$addr" ] || { logs; exit 1; }

"$bin/moed-worker" --coordinator "$addr" --cluster-token-file "$dir/cluster.token" --threads 1 \
  --data-root /usr/share/common-licenses 2>"$dir/worker.log" &
wpid=$!

"$py" "$MOE_SOURCE_DIR/tests/grpc_stock_client.py" --pb-dir "$dir/py" --target "$addr" \
  --client-token-file "$dir/client.token" --cluster-token-file "$dir/cluster.token" \
  --coordinator-pid "$cpid" --worker-pid "$wpid" --data /usr/share/common-licenses/GPL-3
rc=$?
check "the stock client's checks all hold" '[ $rc -eq 0 ]'
check "the coordinator is still running" 'running $cpid'
check "the worker is still running" 'running $wpid'

# An orderly stop: SIGTERM, exit 0, for both.
stop "$wpid" 30
wrc=$rc
wpid=
stop "$cpid" 30
crc=$rc
cpid=
check "the worker exits 0 on SIGTERM (got $wrc)" '[ $wrc -eq 0 ]'
check "the coordinator exits 0 on SIGTERM (got $crc)" '[ $crc -eq 0 ]'
check "the coordinator logged the rejected tokens" \
  'grep -q "rejected /moed.v1.Status/GetCluster" "$dir/coordinator.log"'

[ $fails -eq 0 ] || logs
echo "cli_grpc_python: $fails failure(s)"
[ $fails -eq 0 ]
