#!/usr/bin/env bash
# Addresses and TLS mistakes, with daemons started by hand (not `cluster up`), all on 127.0.0.1:
# a wildcard --advertise is refused at start (worker and coordinator); a worker bound to
# 0.0.0.0 that advertises 127.0.0.1 is reached and trains; a worker advertising an address where
# nothing listens is refused, with the reason in `cluster status` and in its own log, probed
# again only after a backoff, and never given a slot while a job runs on the good ones; a
# worker whose TLS certificate the coordinator cannot verify is refused naming that; and each
# TLS mistake of a client (wrong CA, hostname mismatch, TLS against plaintext and back, a
# required client certificate, nothing listening) is named by moectl within seconds, as is a
# worker's wrong CA at start. (The loopback-vs-remote rule is unit-tested in test_netaddr and
# exercised across network namespaces by the multi-host test.)
set -u
moectl=$1
bin=$(dirname "$moectl")
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_addresses
h=$tmp/hand
mkdir -p "$h"
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done; pids=(); }
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$h/cluster.token"

# ---- a wildcard or malformed --advertise is refused at start, in one line ----
"$bin/moed-worker" --coordinator 127.0.0.1:1 --cluster-token-file "$h/cluster.token" \
  --advertise 0.0.0.0 >"$h/out" 2>"$h/err"
check "moed-worker --advertise 0.0.0.0: exit 2, one line naming the wildcard" \
  '[ $? -eq 2 ] && [ $(wc -l <"$h/err") -eq 1 ] && grep -q "advertise .0.0.0.0. is a wildcard" "$h/err"'
MOED_DATA_ADVERTISE="a b" "$bin/moed-worker" --coordinator 127.0.0.1:1 \
  --cluster-token-file "$h/cluster.token" >"$h/out" 2>"$h/err"
check "MOED_DATA_ADVERTISE malformed: exit 2, named" '[ $? -eq 2 ] && grep -q "data-advertise .a b. is not HOST" "$h/err"'
"$bin/moed-coordinator" --dir "$h/never" --advertise "[::]:7000" >"$h/out" 2>"$h/err"
check "moed-coordinator --advertise [::]: exit 2, named" '[ $? -eq 2 ] && grep -q "is a wildcard" "$h/err" && [ ! -e "$h/never" ]'

# ---- a coordinator and three workers by hand ----
"$bin/moed-coordinator" --dir "$h/co" --listen 127.0.0.1:0 --addr-file "$h/co.addr" \
  --cluster-token-file "$h/cluster.token" >/dev/null 2>"$h/co.log" &
pids+=($!)
wait_until 30 '[ -s "$h/co.addr" ]'
export MOED_COORDINATOR=$(cat "$h/co.addr")
start_worker() { # NAME ARGS...: a worker with the corpus as its data root
  local name=$1; shift
  "$bin/moed-worker" --coordinator "$MOED_COORDINATOR" --cluster-token-file "$h/cluster.token" \
    --threads 1 --data-root "$(dirname "$corpus")" "$@" >/dev/null 2>"$h/$name.log" &
  pids+=($!)
}
start_worker good --listen 127.0.0.1:0
start_worker wild --listen 0.0.0.0:0 --advertise 127.0.0.1
start_worker bad --advertise 127.0.0.1:1
status_json() { "$moectl" cluster status --json 2>/dev/null; }
n_reachable() { status_json | json 'sum(1 for w in d["workers"] if w.get("reachable"))'; }
bad_reason() { status_json | json '[w.get("refused","") for w in d["workers"] if w["address"] == "127.0.0.1:1"][0]' 2>/dev/null; }
wait_until 60 '[ "$(n_reachable)" = 2 ] && bad_reason | grep -q "connection refused"'
check "two workers reachable, the third refused: connection refused at 127.0.0.1:1" \
  '[ "$(n_reachable)" = 2 ] && bad_reason | grep -q "cannot reach its Worker service at 127.0.0.1:1: cannot connect to 127.0.0.1:1: connection refused"'
check "the wildcard-bound worker advertises 127.0.0.1, its data plane too" \
  '[ "$(status_json | json "sum(1 for w in d[\"workers\"] if w[\"address\"].startswith(\"127.0.0.1:\") and w[\"data_address\"].startswith(\"127.0.0.1:\") and w.get(\"reachable\"))")" = 2 ] && grep -q "listening on 127.0.0.1:" "$h/wild.log"'
"$moectl" cluster status >"$h/status.out"
check "cluster status shows REFUSED and the reason" 'grep -q REFUSED "$h/status.out" && grep -q "refused: the coordinator cannot reach" "$h/status.out"'
wait_until 20 'grep -q "the coordinator gives this worker no job: .*connection refused" "$h/bad.log"'
check "the refused worker's log says why" 'grep -q "the coordinator gives this worker no job: .*connection refused" "$h/bad.log"'

# ---- a job runs on the good workers only ----
cat >"$h/tiny.yaml" <<YAML
name: tiny
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
mesh: {pods: 1, slots: 2}
data: {sources: [{path: $corpus}]}
run: {steps: 10, batch_size: 4, log_every: 5}
YAML
job=$("$moectl" submit "$h/tiny.yaml" 2>"$h/submit.err")
timeout 120 "$moectl" watch "$job" >"$h/watch.out" 2>&1
rc=$?
check "a 1 x 2 job succeeds on the two reachable workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$h/submit.err" "$h/watch.out"; tail -n 20 "$h/co.log"; }
check "the refused worker was never sent a slot" '! grep -q "slot (" "$h/bad.log"'
"$moectl" events "$job" >"$h/events.out" 2>&1
check "the job was never requeued or recovered" 'grep -q running "$h/events.out" && ! grep -qiE "requeue|recover" "$h/events.out"'
# the probe is retried with a backoff (1 s doubling), not per heartbeat, and said once
probes=$(grep -c "w-[0-9]* refused: the coordinator cannot reach" "$h/co.log")
check "the refusal is logged once by the coordinator (it is the same each probe)" '[ "$probes" = 1 ]'
check "... and once by the worker" '[ "$(grep -c "gives this worker no job" "$h/bad.log")" = 1 ]'
stop_all

# ---- TLS ----
if ! command -v openssl >/dev/null; then
  echo "skip TLS: no openssl command"
  [ $fails -eq 0 ]; exit
fi
cert() { # NAME SUBJECT-ALT-NAME
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout "$h/$1.key" -out "$h/$1.pem" \
    -subj "/CN=moed-test" -addext "subjectAltName=$2" >/dev/null 2>&1
}
cert good IP:127.0.0.1
cert other IP:127.0.0.1
cert elsewhere DNS:elsewhere.example
co_start() { # NAME ARGS...
  local name=$1; shift
  "$bin/moed-coordinator" --dir "$h/$name" --listen 127.0.0.1:0 --addr-file "$h/$name.addr" \
    --cluster-token-file "$h/cluster.token" "$@" >/dev/null 2>"$h/$name.log" &
  pids+=($!)
  wait_until 30 '[ -s "$h/$name.addr" ]'
}
co_start tls --tls-cert "$h/good.pem" --tls-key "$h/good.key" --worker-tls-ca "$h/other.pem"
co_start named --tls-cert "$h/elsewhere.pem" --tls-key "$h/elsewhere.key"
co_start plain
tls=$(cat "$h/tls.addr") named=$(cat "$h/named.addr") plain=$(cat "$h/plain.addr")
quick() { # WHAT EXPECTED ARGS...: moectl jobs ARGS fails with exit 4 within 5 s, saying EXPECTED
  local what=$1 want=$2; shift 2
  local t0=$SECONDS
  MOED_COORDINATOR= "$moectl" jobs "$@" >/dev/null 2>"$h/tls.err"
  local rc=$? took=$((SECONDS - t0))
  check "$what: exit 4 within 5 s, '$want'" '[ $rc -eq 4 ] && [ $took -le 5 ] && grep -q "$want" "$h/tls.err"'
  [ $rc -eq 4 ] && grep -q "$want" "$h/tls.err" || cat "$h/tls.err"
}
MOED_COORDINATOR= "$moectl" jobs --coordinator "$tls" --ca "$h/good.pem" >/dev/null 2>&1
check "the right CA works" '[ $? -eq 0 ]'
quick "a CA that did not sign the certificate" \
  "TLS handshake with $tls failed: certificate verify failed (self-signed certificate)" \
  --coordinator "$tls" --ca "$h/other.pem"
quick "a certificate for another name" "TLS handshake with $named failed: hostname mismatch" \
  --coordinator "$named" --ca "$h/elsewhere.pem"
quick "a CA for a plaintext coordinator" "TLS handshake with $plain failed: the server does not speak TLS" \
  --coordinator "$plain" --ca "$h/good.pem"
quick "plaintext against TLS" "$tls speaks TLS but this call was plaintext" --coordinator "$tls"
quick "nothing listening" "cannot connect to 127.0.0.1:1: connection refused" --coordinator 127.0.0.1:1 --ca "$h/good.pem"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
openssl s_server -accept "127.0.0.1:$port" -cert "$h/good.pem" -key "$h/good.key" -Verify 1 \
  -CAfile "$h/good.pem" -alpn h2 -quiet </dev/null >/dev/null 2>&1 &
ss=$!
if wait_until 10 '(exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null'; then
  quick "a server that requires a client certificate" "the server asked for a client certificate" \
    --coordinator "127.0.0.1:$port" --ca "$h/good.pem"
fi
kill $ss 2>/dev/null; wait $ss 2>/dev/null

# a worker with the wrong CA stops at once, naming it (it used to retry silently for 31 s)
t0=$SECONDS
"$bin/moed-worker" --coordinator "$tls" --cluster-token-file "$h/cluster.token" \
  --tls-ca "$h/other.pem" >/dev/null 2>"$h/wrongca.log"
rc=$? took=$((SECONDS - t0))
check "a worker with the wrong CA: exit 1 within 10 s, naming the verify failure" \
  '[ $rc -eq 1 ] && [ $took -le 10 ] && grep -q "cannot register with the coordinator: TLS handshake with $tls failed: certificate verify failed" "$h/wrongca.log"'
[ $rc -eq 1 ] || tail -n 5 "$h/wrongca.log"

# a TLS worker whose certificate the coordinator's --worker-tls-ca does not verify is refused
"$bin/moed-worker" --coordinator "$tls" --cluster-token-file "$h/cluster.token" --threads 1 \
  --tls-ca "$h/good.pem" --tls-cert "$h/good.pem" --tls-key "$h/good.key" >/dev/null 2>"$h/tlsw.log" &
pids+=($!)
tls_reason() { MOED_COORDINATOR= "$moectl" cluster status --coordinator "$tls" --ca "$h/good.pem" --json 2>/dev/null | json 'd["workers"][0].get("refused","")' 2>/dev/null; }
wait_until 30 'tls_reason | grep -q "certificate verify failed"'
check "the coordinator refuses a worker it cannot verify, naming the TLS failure" \
  'tls_reason | grep -q "cannot reach its Worker service at 127.0.0.1:[0-9]*: TLS handshake with 127.0.0.1:[0-9]* failed: certificate verify failed"'
stop_all

if [ $fails -gt 0 ]; then
  for f in "$h"/*.log; do echo "== $f"; tail -n 8 "$f"; done
fi
[ $fails -eq 0 ]
