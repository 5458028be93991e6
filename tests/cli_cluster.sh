#!/usr/bin/env bash
# moectl against a real local cluster (a coordinator and two worker processes on 127.0.0.1):
# cluster up/status, submit, watch to completion, fetch — and the fetched model is byte for
# byte the model `moectl train` writes in-process for the same spec. Then the ways it can go
# wrong: a spec the coordinator refuses stores nothing, unknown jobs are NOT_FOUND (exit 2),
# a wrong token is refused (exit 4) and logged, a cancelled job ends a watch with exit 3, a
# cluster cannot be started twice in one directory; and a TLS cluster serves over TLS.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_cluster
tdir=$tmp/tls-cluster
n_jobs() { "$moectl" jobs --json | json 'len(d["jobs"])'; }

# ---- up ----
"$moectl" cluster up --workers 2 --dir "$cdir" >"$tmp/up.out" 2>"$tmp/up.err"
rc=$?
check "cluster up exits 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out" "$tmp/up.err"; tail -n 20 "$cdir"/*.log; exit 1; }
check "cluster up says where the cluster is" 'grep -q "$cdir" "$tmp/up.out" && grep -q "127.0.0.1:" "$tmp/up.out"'
check "tokens are 0600" '[ "$(stat -c %a "$cdir/client.token")" = 600 ] && [ "$(stat -c %a "$cdir/cluster.token")" = 600 ]'
check "the cluster directory is 0700" '[ "$(stat -c %a "$cdir")" = 700 ]'
check "tokens are 64 hex digits" 'grep -qE "^[0-9a-f]{64}$" "$cdir/client.token"'

"$moectl" cluster up --workers 2 --dir "$cdir" >/dev/null 2>"$tmp/up2.err"
check "a second cluster up in the same directory is refused (exit 2)" '[ $? -eq 2 ] && grep -q "already running" "$tmp/up2.err"'

alive=$("$moectl" cluster status --json | json 'sum(w["state"] in ("WORKER_IDLE","WORKER_BUSY") for w in d["workers"])')
check "cluster status --json: 2 alive workers" '[ "$alive" = 2 ]'
"$moectl" cluster status --cluster-dir "$cdir" >"$tmp/status.out"
check "cluster status table: 2 alive, a healthy pod" 'grep -q "2 alive" "$tmp/status.out" && grep -q healthy "$tmp/status.out"'

# ---- submit, watch, fetch; the same model as an in-process run ----
# The data path is relative: submit makes it absolute from the current directory, as train reads it.
cat >"$tmp/tiny.yaml" <<YAML
name: tiny
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: GPL-3}]}
run: {steps: 30, batch_size: 4, log_every: 5, eval_every: 10, output: $tmp/local.safetensors}
YAML
job=$(cd "$(dirname "$corpus")" && "$moectl" submit "$tmp/tiny.yaml")
check "submit prints the job id alone" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout 60 "$moectl" watch "$job" >"$tmp/watch.out" 2>"$tmp/watch.err"
rc=$?
check "watch exits 0 when the job succeeds" '[ $rc -eq 0 ]'
check "watch printed steps and the outcome" 'grep -q "step 30/30" "$tmp/watch.out" && grep -q "SUCCEEDED" "$tmp/watch.out"'
[ $rc -eq 0 ] || { cat "$tmp/watch.out" "$tmp/watch.err"; "$moectl" status "$job"; }
check "watch --json on a finished job: one update, SUCCEEDED" \
  '[ "$("$moectl" watch "$job" --json | tail -n 1 | json "d[\"job\"][\"state\"]")" = JOB_SUCCEEDED ]'
"$moectl" status "$job" >"$tmp/status-job.out"
check "status shows the state, steps and loss" 'grep -q "SUCCEEDED" "$tmp/status-job.out" && grep -q "30/30" "$tmp/status-job.out" && grep -q "loss" "$tmp/status-job.out"'

"$moectl" fetch "$job" -o "$tmp/fetched.safetensors" >/dev/null
check "fetch exits 0 and leaves no temporary file" '[ $? -eq 0 ] && [ -s "$tmp/fetched.safetensors" ] && [ ! -e "$tmp/fetched.safetensors.tmp" ]'
(cd "$(dirname "$corpus")" && OMP_NUM_THREADS=1 "$moectl" train "$tmp/tiny.yaml" --quiet 2>/dev/null)
check "the fetched model equals moectl train's, byte for byte" 'cmp "$tmp/fetched.safetensors" "$tmp/local.safetensors"'
check "jobs lists it SUCCEEDED" '"$moectl" jobs | grep "^$job " | grep -q SUCCEEDED'
addr=$(cat "$cdir/coordinator.addr")
check "global options before the command: moectl --coordinator A --token-file F jobs" \
  '"$moectl" --coordinator "$addr" --token-file "$cdir/client.token" jobs | grep "^$job " | grep -q SUCCEEDED'
check "... --cluster-dir=DIR --json before status" \
  '"$moectl" --cluster-dir="$cdir" --json status "$job" | grep -q JOB_SUCCEEDED'
"$moectl" --coordinator "$addr" train "$tmp/tiny.yaml" >"$tmp/out" 2>"$tmp/err"
check "... refused before an in-process command (exit 2, named)" '[ $? -eq 2 ] && grep -q "coordinator.*train" "$tmp/err"'

# ---- refusals ----
before=$(n_jobs)
"$moectl" submit "$tmp/tiny.yaml" --set data.sources.0.path=$corpus --set router.top_k=99 >"$tmp/out" 2>"$tmp/err"
rc=$?
check "a spec the coordinator refuses: exit 2, naming router.top_k" '[ $rc -eq 2 ] && grep -q "router.top_k" "$tmp/err" && [ ! -s "$tmp/out" ]'
check "... and nothing is stored" '[ "$(n_jobs)" = "$before" ]'
"$moectl" submit "$tmp/tiny.yaml" --set run.stepz=3 >/dev/null 2>"$tmp/err"
check "an unknown --set key: exit 2, named" '[ $? -eq 2 ] && grep -q "run.stepz" "$tmp/err"'
for cmd in status cancel watch; do
  "$moectl" $cmd job-999 >/dev/null 2>"$tmp/err"
  check "$cmd job-999: exit 2, not found" '[ $? -eq 2 ] && grep -qi "not.found" "$tmp/err"'
done
"$moectl" fetch job-999 -o "$tmp/none.safetensors" >/dev/null 2>"$tmp/err"
check "fetch job-999: exit 2, not found, no file" '[ $? -eq 2 ] && grep -qi "not.found" "$tmp/err" && ! ls "$tmp"/none.* >/dev/null 2>&1'
MOED_TOKEN=wrong "$moectl" jobs >/dev/null 2>"$tmp/err"
check "a wrong token: exit 4, UNAUTHENTICATED" '[ $? -eq 4 ] && grep -q UNAUTHENTICATED "$tmp/err"'
check "... and the coordinator logged the rejection" 'grep -q "rejected .*wrong client token" "$cdir/coordinator.log"'
"$moectl" jobs --coordinator 127.0.0.1:1 >/dev/null 2>"$tmp/err"
check "no coordinator at the address: exit 4" '[ $? -eq 4 ] && grep -q UNAVAILABLE "$tmp/err"'

# ---- cancel a long job while watching it ----
long=$("$moectl" submit "$tmp/tiny.yaml" --set data.sources.0.path=$corpus --set run.steps=1000000 --set name=long)
check "submit a long job" '[[ "$long" =~ ^job-[0-9]+$ ]]'
wait_until 30 '[ "$(step_of "$long")" -ge 2 ] 2>/dev/null'
check "the long job runs" '[ "$(state_of "$long")" = JOB_RUNNING ]'
"$moectl" watch "$long" >"$tmp/watch-long.out" 2>&1 &
watch_pid=$!
wait_until 30 '[ -s "$tmp/watch-long.out" ]'
"$moectl" cancel "$long" >"$tmp/cancel.out"
check "cancel exits 0" '[ $? -eq 0 ]'
wait_until 30 '! kill -0 $watch_pid 2>/dev/null' || kill $watch_pid # never hang on it
wait $watch_pid
rc=$?
watch_pid=
check "watch of a cancelled job exits 3" '[ $rc -eq 3 ]'
wait_until 10 '[ "$(state_of "$long")" = JOB_CANCELLED ]'
check "its state is CANCELLED" '[ "$(state_of "$long")" = JOB_CANCELLED ]'
"$moectl" fetch "$long" -o "$tmp/cancelled.safetensors" >/dev/null 2>"$tmp/err"
check "fetch of a cancelled job: exit 1, no file" '[ $? -eq 1 ] && [ ! -e "$tmp/cancelled.safetensors" ] && [ ! -e "$tmp/cancelled.safetensors.tmp" ]'

# ---- down ----
"$moectl" cluster down --dir "$cdir" >/dev/null
check "cluster down exits 0" '[ $? -eq 0 ]'
check "cluster down stopped every process and removed the pid files" '[ -z "$(running_from "$cdir")" ] && ! ls "$cdir"/*.pid >/dev/null 2>&1'
check "cluster down keeps the state" '[ -d "$cdir/coordinator" ] && [ -s "$cdir/client.token" ]'
"$moectl" jobs >/dev/null 2>"$tmp/err"
check "jobs without a cluster: exit 4" '[ $? -eq 4 ]'

# ---- TLS ----
if command -v openssl >/dev/null; then
  "$moectl" cluster up --workers 1 --tls --dir "$tdir" >"$tmp/tls-up.out" 2>&1
  rc=$?
  check "cluster up --tls exits 0" '[ $rc -eq 0 ]'
  [ $rc -eq 0 ] || { cat "$tmp/tls-up.out"; tail -n 20 "$tdir"/*.log; }
  check "the key is 0600" '[ "$(stat -c %a "$tdir/tls/key.pem")" = 600 ]'
  MOED_CLUSTER_DIR=$tdir "$moectl" jobs >"$tmp/out" 2>"$tmp/err"
  check "jobs over TLS with the cluster's certificate" '[ $? -eq 0 ]'
  MOED_CLUSTER_DIR=$tdir MOED_TLS_CA= "$moectl" jobs >/dev/null 2>&1
  check "a plaintext client cannot talk to it (exit 4)" '[ $? -eq 4 ]'
  # a job end to end: the coordinator's RunSlot reaches the worker over TLS too
  tjob=$(cd "$(dirname "$corpus")" && MOED_CLUSTER_DIR=$tdir "$moectl" submit "$tmp/tiny.yaml" 2>&1)
  MOED_CLUSTER_DIR=$tdir "$moectl" watch "$tjob" >/dev/null 2>&1
  check "a job runs on the TLS cluster (RunSlot over TLS to the worker)" '[ $? -eq 0 ]'
  worker_port=$(MOED_CLUSTER_DIR=$tdir "$moectl" cluster status --json | json 'd["workers"][0]["address"]')
  "$py" - "$worker_port" <<'PY' >/dev/null 2>&1
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
with socket.create_connection((host, int(port)), timeout=5) as s, ctx.wrap_socket(s) as t:
    sys.exit(0 if t.version() else 1)
PY
  check "the worker's own port speaks TLS" '[ $? -eq 0 ]'
  # what a crash in the middle of an atomic write would leave (common/fileio.h's temporaries)
  touch "$tdir/cluster.json.tmp.Ab12Cd" "$tdir/coordinator.addr.tmp.Ef34Gh" \
    "$tdir/worker-0.pid.tmp.Ij56Kl" "$tdir/client.token.tmp"
  "$moectl" cluster down --dir "$tdir" --purge >/dev/null
  check "cluster down --purge removes what cluster up made, half-written files too" '[ ! -e "$tdir" ]'
else
  echo "skip TLS: no openssl command"
fi

if [ $fails -gt 0 ]; then # what the daemons said, for whoever reads the failure
  "$moectl" jobs 2>&1
  for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 15; tail -n 5 "$f"; }; done
fi
[ $fails -eq 0 ] && echo "cli_cluster: all checks passed" || echo "cli_cluster: $fails checks failed"
exit $((fails > 0))
