#!/usr/bin/env bash
# deploy/systemd: the units, and the daemons' side of Type=notify.
#
# Run here: `systemd-analyze verify --root` on both units (the worker template as an
# instance) over a root where `cmake --install` put the build (verify checks that ExecStart's
# binaries exist), and the test fails on any line verify prints about them; a copy with a misspelt key must make it
# complain (so a silent verify means something). Then the notify protocol for real: each daemon
# is started with NOTIFY_SOCKET pointing at a datagram socket this test reads
# (tests/notify_listener.py), as systemd would start it: the coordinator says READY=1 once it
# serves (checked from outside at that instant: the health service answers SERVING), the
# worker not while it cannot reach its coordinator and READY=1 once registered (its log says
# registered, its health SERVING, at that instant); WATCHDOG=1 keeps coming under
# WATCHDOG_USEC; STOPPING=1 arrives on SIGTERM and both exit 0.
# Not run: the units under systemd itself (systemd is not PID 1 here, so nothing can be
# started as a unit): User=, StateDirectory=, LoadCredential=, the sandboxing options and
# Restart= are checked by verify's parser only. $1 (moectl) is not used.
set -u
bin=$MOE_BUILD_DIR/bin
src=$MOE_SOURCE_DIR
py=/usr/bin/python3
dir=$(mktemp -d /tmp/moe_cli_systemd.XXXXXX)
cpid= wpid= lcpid= lwpid=
source "$(dirname "$0")/proc_lib.sh"
trap 'stop "$wpid"; stop "$cpid"; stop "$lwpid" 1; stop "$lcpid" 1; rm -rf "$dir"' EXIT
logs() {
  for f in "$dir"/*.log "$dir"/*.notify; do echo "--- $f"; tail -n 30 "$f"; done 2>/dev/null
}

for need in "$bin/moed-coordinator" "$bin/moed-worker" "$MOE_BUILD_DIR/moed.protoset"; do
  [ -e "$need" ] || { echo "FAIL $need is not built"; exit 1; }
done
command -v systemd-analyze >/dev/null || { echo "FAIL needs systemd-analyze (the systemd package)"; exit 1; }

# ---- systemd-analyze verify, on what `cmake --install` lays out ----
# verify checks that ExecStart's binary exists: install the build into a root of our own, as
# the units expect it (/usr/local), with systemd's own units beside ours (their dependencies).
root=$dir/root
DESTDIR=$root cmake --install "$MOE_BUILD_DIR" --prefix /usr/local >"$dir/install.log" 2>&1
check "cmake --install lays out /usr/local/bin and the descriptor set" \
  '[ -x "$root/usr/local/bin/moed-coordinator" ] && [ -x "$root/usr/local/bin/moed-worker" ] &&
   [ -s "$root/usr/local/share/moed/moed.protoset" ]'
check "  and the installed worker keeps its RUNPATH to the OpenMP OpenBLAS" \
  'readelf -d "$root/usr/local/bin/moed-worker" | grep -q "RUNPATH.*openblas-openmp"'
sysunits=/usr/lib/systemd/system
[ -d "$sysunits" ] || sysunits=/lib/systemd/system
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r "$sysunits" "$root/usr/lib/systemd/system"
cp "$src/deploy/systemd/moed-coordinator.service" "$src/deploy/systemd/moed-worker@.service" \
  "$root/etc/systemd/system/"
verify() { systemd-analyze verify --man=no --root="$root" "$@" 2>&1 | grep -E 'moed-'; }
out=$(verify moed-coordinator.service moed-worker@gpu0.service)
check "systemd-analyze verify says nothing about the units${out:+: $out}" '[ -z "$out" ]'
sed 's/^ProtectSystem=/ProtectSystm=/' "$src/deploy/systemd/moed-coordinator.service" \
  >"$root/etc/systemd/system/moed-typo.service"
out=$(verify moed-typo.service)
check "verify does complain about a misspelt key (so its silence above counts)" \
  '[[ "$out" == *ProtectSystm* ]]'

# systemd's own score of the sandbox (0 most confined, 10 exposed): a guard against dropping
# hardening by accident; docs/deploy/systemd.md quotes the numbers
for u in moed-coordinator.service moed-worker@gpu0.service; do
  score=$(systemd-analyze security --offline=true --root="$root" "$u" 2>/dev/null |
          sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  check "systemd-analyze security scores $u ${score:-?} (at most 3)" \
    '[ -n "$score" ] && awk -v s="$score" "BEGIN { exit !(s <= 3) }"'
done

# ---- the notify protocol: the coordinator ----
umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/cluster.token"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
caddr=127.0.0.1:$port
health="$py $src/tests/grpc_health_client.py $MOE_BUILD_DIR/moed.protoset check"

"$py" "$src/tests/notify_listener.py" "$dir/c.sock" "$dir/coordinator.notify" \
  --on-ready "$health $caddr ''" &
lcpid=$!
wait_for 30 '[ -S "$dir/c.sock" ]'
NOTIFY_SOCKET=$dir/c.sock WATCHDOG_USEC=400000 "$bin/moed-coordinator" --dir "$dir/state" \
  --listen "$caddr" --client-token-file "$dir/client.token" \
  --cluster-token-file "$dir/cluster.token" 2>"$dir/coordinator.log" &
cpid=$!
wait_for 60 'grep -q "^on-ready" "$dir/coordinator.notify" || ! running $cpid'
check "the coordinator sent READY=1 (with a STATUS line)" \
  'grep -qx "READY=1|STATUS=serving" "$dir/coordinator.notify"'
check "  when it said so, its health service answered SERVING" \
  'grep -qx "on-ready: SERVING" "$dir/coordinator.notify"'
wait_for 30 '[ "$(grep -c "^WATCHDOG=1$" "$dir/coordinator.notify")" -ge 2 ]'
check "WATCHDOG=1 keeps coming under WATCHDOG_USEC" \
  '[ "$(grep -c "^WATCHDOG=1$" "$dir/coordinator.notify")" -ge 2 ]'

# ---- the worker: not ready while it cannot register, ready once it has ----
wport=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
waddr=127.0.0.1:$wport
"$py" "$src/tests/notify_listener.py" "$dir/w.sock" "$dir/worker.notify" \
  --on-ready "grep -q 'registered with' '$dir/worker.log' && echo registered; $health $waddr ''" &
lwpid=$!
wait_for 30 '[ -S "$dir/w.sock" ]'
# first against a coordinator address where nothing listens
dead=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NOTIFY_SOCKET=$dir/w.sock "$bin/moed-worker" --coordinator "127.0.0.1:$dead" --listen "$waddr" \
  --cluster-token-file "$dir/cluster.token" --threads 1 2>"$dir/worker.log" &
wpid=$!
wait_for 60 'grep -q "listening on" "$dir/worker.log" || ! running $wpid'
# it retries registering for 30 s; a health check with a 1 s deadline is the time we give it
before=$($health "$waddr" "" 1 2>/dev/null)
check "a worker that cannot register is not SERVING (got $before) and sent no READY=1" \
  '[ "$before" != SERVING ] && running $wpid && ! grep -q "READY=1" "$dir/worker.notify"'
stop "$wpid" 10 # before it joined, SIGTERM ends it at once (its handlers start after joining)
wpid=
: >"$dir/worker.notify"
NOTIFY_SOCKET=$dir/w.sock WATCHDOG_USEC=400000 "$bin/moed-worker" --coordinator "$caddr" \
  --listen "$waddr" --cluster-token-file "$dir/cluster.token" --threads 1 2>"$dir/worker.log" &
wpid=$!
wait_for 60 'grep -q "^on-ready" "$dir/worker.notify" || ! running $wpid'
check "the worker sent READY=1 once registered" \
  'grep -qx "READY=1|STATUS=registered" "$dir/worker.notify"'
check "  when it said so, it had registered and its health answered SERVING" \
  'grep -qx "on-ready: registered SERVING" "$dir/worker.notify"'
wait_for 30 '[ "$(grep -c "^WATCHDOG=1$" "$dir/worker.notify")" -ge 2 ]'
check "the worker's WATCHDOG=1 keeps coming" '[ "$(grep -c "^WATCHDOG=1$" "$dir/worker.notify")" -ge 2 ]'

# ---- SIGTERM: STOPPING=1, exit 0 ----
stop "$wpid" 30; wrc=$rc; wpid=
check "the worker sent STOPPING=1 on SIGTERM and exited 0 (got $wrc)" \
  'grep -qx "STOPPING=1|STATUS=stopping" "$dir/worker.notify" && [ "$wrc" = 0 ]'
stop "$cpid" 30; crc=$rc; cpid=
check "the coordinator sent STOPPING=1 on SIGTERM and exited 0 (got $crc)" \
  'grep -qx "STOPPING=1|STATUS=stopping" "$dir/coordinator.notify" && [ "$crc" = 0 ]'
check "each said READY=1 once" \
  '[ "$(grep -c "^READY=1" "$dir/coordinator.notify")" = 1 ] && [ "$(grep -c "^READY=1" "$dir/worker.notify")" = 1 ]'

[ $fails -eq 0 ] || logs
echo "cli_systemd: $fails failure(s)"
[ $fails -eq 0 ]
