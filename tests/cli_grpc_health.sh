#!/usr/bin/env bash
# The standard health service (grpc.health.v1.Health) on a real coordinator and a real worker,
# called by a stock client without a token: Debian's python3-grpcio with message classes
# built from the shipped descriptor set alone (tests/grpc_health_client.py), which also proves
# that set describes every moed service. Checked: Check and Watch answer SERVING for "" and
# each daemon's services, NOT_FOUND / SERVICE_UNKNOWN for other names; a worker answers no
# SERVING before it has registered (its calls wait: a probe with a deadline fails) and SERVING
# after; a Watch opened before registration sees SERVING once it registers; open Watches are
# bounded; a daemon going down never reports SERVING again; and every moed method still
# refuses a call without a token.
# $1 (moectl) is not used.
set -u
bin=$MOE_BUILD_DIR/bin
set_file=$MOE_BUILD_DIR/moed.protoset
py=/usr/bin/python3 # Debian's python, where python3-grpcio lives
client=$MOE_SOURCE_DIR/tests/grpc_health_client.py
dir=$(mktemp -d /tmp/moe_cli_grpc_health.XXXXXX)
cpid= wpid= watchers=()
source "$(dirname "$0")/proc_lib.sh"
cleanup() {
  for p in "${watchers[@]}"; do stop "$p" 2; done
  stop "$wpid"; stop "$cpid"; rm -rf "$dir"
}
trap cleanup EXIT
logs() {
  echo "--- coordinator log (tail)"; tail -n 30 "$dir/coordinator.log" 2>/dev/null
  echo "--- worker log (tail)"; tail -n 30 "$dir/worker.log" 2>/dev/null
  for f in "$dir"/*.watch; do echo "--- $f"; cat "$f"; done 2>/dev/null
}
hc() { "$py" "$client" "$set_file" "$@" 2>>"$dir/client.err"; }
watch_bg() { # watch_bg <name> <target> <service>: a Watch in the background, lines to <name>.watch
  "$py" "$client" "$set_file" watch "$2" "$3" >"$dir/$1.watch" 2>>"$dir/client.err" &
  watchers+=($!)
}

for need in "$bin/moed-coordinator" "$bin/moed-worker" "$set_file"; do
  [ -e "$need" ] || { echo "FAIL $need is not built"; exit 1; }
done
if ! "$py" -c 'import grpc, google.protobuf' 2>/dev/null; then
  echo "FAIL needs python3-grpcio and python3-protobuf (deploy/install-deps.sh --tests)"
  exit 1
fi

# The descriptor set names every method of moed.proto, and the health service's two.
hc services >"$dir/services"
want=$(grep -cE '^\s*rpc ' "$MOE_SOURCE_DIR/proto/moed.proto")
for s in moed.v1.Jobs/SubmitJob moed.v1.Status/GetCluster moed.v1.Cluster/RegisterWorker \
         moed.v1.Worker/RunSlot grpc.health.v1.Health/Check grpc.health.v1.Health/Watch; do
  check "the descriptor set describes $s" 'grep -qx "$s" "$dir/services"'
done
check "the descriptor set has moed.proto's $want methods and Health's 2" \
  '[ "$(wc -l <"$dir/services")" -eq $((want + 2)) ]'

umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster.token"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
caddr=127.0.0.1:$port

# The worker first, its coordinator not yet up: it serves, but has not registered.
"$bin/moed-worker" --coordinator "$caddr" --cluster-token-file "$dir/cluster.token" --threads 1 \
  2>"$dir/worker.log" &
wpid=$!
wait_for 60 'grep -q "listening on" "$dir/worker.log" || ! running $wpid'
waddr=$(sed -n 's/.* listening on \([^ ,]*\),.*/\1/p' "$dir/worker.log" | head -n 1)
check "the worker listens at ${waddr:-?} before it has registered" \
  '[ -n "$waddr" ] && ! grep -q "registered with" "$dir/worker.log"'
[ -n "$waddr" ] || { logs; exit 1; }
before=$(hc check "$waddr" "" 1)
check "before registering the worker answers no SERVING (got $before)" '[ "$before" != SERVING ]'
check "  and that is because it had not registered" '! grep -q "registered with" "$dir/worker.log"'
watch_bg worker "$waddr" ""

"$bin/moed-coordinator" --dir "$dir/state" --listen "$caddr" --addr-file "$dir/addr" \
  --client-token-file "$dir/client.token" --cluster-token-file "$dir/cluster.token" \
  --heartbeat-timeout-ms 10000 2>"$dir/coordinator.log" &
cpid=$!
wait_for 60 '[ -s "$dir/addr" ] || ! running $cpid'
check "the coordinator is up at $caddr" '[ "$(cat "$dir/addr" 2>/dev/null)" = "$caddr" ]'
[ -s "$dir/addr" ] || { logs; exit 1; }
for s in "" moed.v1.Jobs moed.v1.Status moed.v1.Cluster; do
  got=$(hc check "$caddr" "$s")
  check "coordinator Check '$s': SERVING (got $got)" '[ "$got" = SERVING ]'
done
for s in moed.v1.Worker no.such.Service; do
  got=$(hc check "$caddr" "$s")
  check "coordinator Check '$s': NOT_FOUND (got $got)" '[ "$got" = NOT_FOUND ]'
done
watch_bg coordinator "$caddr" ""
watch_bg unknown "$caddr" no.such.Service
wait_for 30 '[ -s "$dir/coordinator.watch" ] && [ -s "$dir/unknown.watch" ]'
check "coordinator Watch '': SERVING first" '[ "$(head -n 1 "$dir/coordinator.watch")" = SERVING ]'
check "coordinator Watch of an unknown name: SERVICE_UNKNOWN, stream left open" \
  '[ "$(cat "$dir/unknown.watch")" = SERVICE_UNKNOWN ]'

# Registered: the worker serves, and the Watch opened before says so.
wait_for 60 'grep -q "registered with" "$dir/worker.log" || ! running $wpid'
check "the worker registered" 'grep -q "registered with" "$dir/worker.log"'
got=
wait_for 30 'got=$(hc check "$waddr" ""); [ "$got" = SERVING ]'
check "worker Check '': SERVING after registering (got $got)" '[ "$got" = SERVING ]'
got=$(hc check "$waddr" moed.v1.Worker)
check "worker Check 'moed.v1.Worker': SERVING (got $got)" '[ "$got" = SERVING ]'
for s in moed.v1.Jobs no.such.Service; do
  got=$(hc check "$waddr" "$s")
  check "worker Check '$s': NOT_FOUND (got $got)" '[ "$got" = NOT_FOUND ]'
done
wait_for 30 '[ -s "$dir/worker.watch" ]'
check "worker Watch opened before registering: SERVING once registered" \
  '[ "$(head -n 1 "$dir/worker.watch")" = SERVING ]'

# Anyone may open a Watch, so their number is bounded (RPC_HEALTH_MAX_WATCHES, 256 with the
# one opened above), and a closed one makes room again.
got=$(hc watch-many "$waddr" 300 | tr '\n' ' ')
check "worker Watch streams beyond 256 are RESOURCE_EXHAUSTED, room again once closed ($got)" \
  '[ "$got" = "served 255 then RESOURCE_EXHAUSTED again SERVING " ]'
got=$(hc check "$waddr" "")
check "  and Check still answers SERVING (got $got)" '[ "$got" = SERVING ]'

# No token opens health alone: every other service still refuses.
for m in /moed.v1.Status/GetCluster /moed.v1.Jobs/ListJobs /moed.v1.Jobs/SubmitJob \
         /moed.v1.Cluster/RegisterWorker /moed.v1.Cluster/Heartbeat; do
  got=$(hc call "$caddr" "$m")
  check "coordinator $m without a token: UNAUTHENTICATED (got $got)" '[ "$got" = UNAUTHENTICATED ]'
done
for m in /moed.v1.Worker/RunSlot /moed.v1.Worker/StopJob /moed.v1.Worker/InjectFault; do
  got=$(hc call "$waddr" "$m")
  check "worker $m without a token: UNAUTHENTICATED (got $got)" '[ "$got" = UNAUTHENTICATED ]'
done
check "the coordinator and the worker are still running" 'running $cpid && running $wpid'

# Going down: the Watches end and never say SERVING again (NOT_SERVING goes out as the
# daemon stops; it may not arrive before the cancelled stream's end).
stop "$wpid" 30; wrc=$rc; wpid=
wait_for 30 'grep -q "^END" "$dir/worker.watch"'
check "worker exits 0 on SIGTERM (got $wrc)" '[ "$wrc" = 0 ]'
check "worker Watch ended with no SERVING after the first: $(tr '\n' ' ' <"$dir/worker.watch")" \
  'grep -q "^END" "$dir/worker.watch" && ! sed -n "2,\$p" "$dir/worker.watch" | grep -qx SERVING'
stop "$cpid" 30; crc=$rc; cpid=
wait_for 30 'grep -q "^END" "$dir/coordinator.watch"'
check "coordinator exits 0 on SIGTERM (got $crc)" '[ "$crc" = 0 ]'
check "coordinator Watch ended with no SERVING after the first: $(tr '\n' ' ' <"$dir/coordinator.watch")" \
  'grep -q "^END" "$dir/coordinator.watch" && ! sed -n "2,\$p" "$dir/coordinator.watch" | grep -qx SERVING'

[ $fails -eq 0 ] || { logs; cat "$dir/client.err" 2>/dev/null; }
echo "cli_grpc_health: $fails failure(s)"
[ $fails -eq 0 ]
