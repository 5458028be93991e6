#!/usr/bin/env bash
# The coordinator's /metrics as Prometheus sees it (docs/operations.md "Metrics"). A local
# cluster started with --http (1 pod x 2 slots, buddy replicas, 1 spare) runs a long job.
# Directly: /metrics without the client token is 401, with it the text parses (promtool check
# metrics) and names the job. Then Debian's Prometheus server scrapes the coordinator every
# second with the token (its own config, port and storage under the test's directory, stopped
# by pid), and its HTTP API shows the job's step metric increasing between two queries; a
# worker killed with `moectl chaos` is recovered onto the spare, and Prometheus' recoveries
# counter for the job shows it. Only the Prometheus part skips, with a line saying so, where
# /usr/bin/prometheus is not installed (deploy/install-deps.sh installs it).
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_prometheus
prom_pid=
trap 'rc=$?; [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null; (exit $rc); cluster_test_cleanup' EXIT

"$moectl" cluster up --pods 1 --slots 2 --spares 1 --threads 1 --http --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --http: 1 x 2 slots and a spare" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
http=$(cat "$cdir/coordinator.http" 2>/dev/null)
check "the HTTP address is in coordinator.http ($http)" '[[ "$http" =~ ^127\.0\.0\.1:[0-9]+$ ]]'
check "cluster up prints the live page's URL" 'grep -q "live page    http://$http/" "$tmp/up.out"'
token=$(cat "$cdir/client.token")
check "cluster status prints it too" '"$moectl" cluster status | grep -q "^live page http://$http/"'

cat >"$tmp/job.yaml" <<YAML
name: scraped
mesh: {pods: 1, slots: 2, replicas: 2, spare_wait_s: 20}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 1000000, batch_size: 8, log_every: 100000, eval_every: 500}
YAML
job=$("$moectl" submit "$tmp/job.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 60 '[ "$(step_of "$job")" -gt 0 ] 2>/dev/null'
check "the job runs" '[ "$(step_of "$job")" -gt 0 ] 2>/dev/null'

# ---- /metrics directly ----
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$http/metrics")
check "/metrics without the token: 401" '[ "$code" = 401 ]'
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong" "http://$http/metrics")
check "/metrics with a wrong token: 401" '[ "$code" = 401 ]'
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $token" "http://$http/metrics")
check "POST /metrics: 405 (GET only)" '[ "$code" = 405 ]'
curl -s -D "$tmp/metrics.headers" -H "Authorization: Bearer $token" "http://$http/metrics" >"$tmp/metrics.txt"
check "/metrics with the token: the text format 0.0.4" \
  'grep -qi "^content-type: text/plain; version=0.0.4" "$tmp/metrics.headers"'
check "... the job's step, loss, slots and the workers" \
  'grep -q "^moed_job_step{job_id=\"$job\"} [1-9]" "$tmp/metrics.txt" &&
   grep -q "^moed_job_loss_nats_per_token{job_id=\"$job\"} " "$tmp/metrics.txt" &&
   grep -q "^moed_job_bpb{job_id=\"$job\"} " "$tmp/metrics.txt" &&
   grep -q "^moed_job_alltoall_bytes_total{job_id=\"$job\",pod=\"0\",slot=\"1\"} [1-9]" "$tmp/metrics.txt" &&
   grep -q "^moed_worker_heartbeat_age_seconds{worker=\"w-3\",pod=\"0\"} " "$tmp/metrics.txt" &&
   grep -q "^moed_rpc_server_handled_total{service=\"moed.v1.Cluster\",method=\"ReportStep\",code=\"OK\"} [1-9]" "$tmp/metrics.txt"'
check "... and no pid among the labels" '! grep -q "pid=" "$tmp/metrics.txt"'
# many more connections than the port takes (64), held, then closed: it serves again at once
"$py" - "$http" "$token" >"$tmp/flood.out" 2>&1 <<'PY'
import socket, sys, time, urllib.request
host, port = sys.argv[1].split(":")
held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(200)]
held[0].sendall(b"\x00\xff not http\r\n\r\n")
req = urllib.request.Request("http://%s/metrics" % sys.argv[1],
                             headers={"Authorization": "Bearer " + sys.argv[2]})
try:  # queued behind the held ones: not answered while they are open
    urllib.request.urlopen(req, timeout=1)
except OSError:
    pass
for s in held:
    s.close()
t = time.time()
print(urllib.request.urlopen(req, timeout=5).status, "after %.2f s" % (time.time() - t))
PY
check "200 connections held past the limit and closed: /metrics answers at once ($(tail -n 1 "$tmp/flood.out"))" \
  'grep -q "^200 after" "$tmp/flood.out"'
if command -v promtool >/dev/null; then
  promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.out" 2>&1
  rc=$?
  check "promtool check metrics: the text parses, names follow the conventions" '[ $rc -eq 0 ]'
  [ $rc -eq 0 ] || head -n 20 "$tmp/promtool.out"
else
  echo "skip promtool check metrics: promtool is not installed (Debian's prometheus package)"
fi

# ---- a Prometheus server scraping it ----
if [ ! -x /usr/bin/prometheus ]; then
  echo "skip the Prometheus server checks: /usr/bin/prometheus is not installed (apt-get install prometheus)"
  "$moectl" cancel "$job" >/dev/null 2>&1
  exit $((fails > 0))
fi
prom_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/prometheus.yml" <<YAML
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: moed
    authorization: {type: Bearer, credentials_file: $cdir/client.token}
    static_configs: [{targets: ["$http"]}]
YAML
/usr/bin/prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!

# query EXPR: the value of the first series Prometheus has for EXPR now ("" when none)
query() { "$py" - "$prom_port" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/query?query=%s" % (sys.argv[1], urllib.parse.quote(sys.argv[2]))
try:
    d = json.load(urllib.request.urlopen(url, timeout=5))
    r = d["data"]["result"]
    print(r[0]["value"][1] if d["status"] == "success" and r else "")
except Exception:
    print("")
PY
}
gt() { [ -n "$1" ] && "$py" -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$1" "$2"; }

wait_until 60 '[ "$(query "up{job=\"moed\"}")" = 1 ]'
check "Prometheus scrapes the coordinator (up == 1, with the token)" '[ "$(query "up{job=\"moed\"}")" = 1 ]'
[ "$(query 'up{job="moed"}')" = 1 ] || tail -n 20 "$tmp/prometheus.log"
wait_until 30 '[ -n "$(query "moed_job_step{job_id=\"$job\"}")" ]'
step1=$(query "moed_job_step{job_id=\"$job\"}")
wait_until 30 'gt "$(query "moed_job_step{job_id=\"$job\"}")" "$step1"'
step2=$(query "moed_job_step{job_id=\"$job\"}")
check "the job's step increases between two queries ($step1 -> $step2)" 'gt "$step2" "$step1"'
check "Prometheus has no recovery yet" '[ "$(query "moed_job_recoveries_total{job_id=\"$job\"}")" = 0 ]'

timeout 120 "$moectl" chaos "$job" --faults 1 --kinds kill --timeout 60 --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
check "moectl chaos: a worker killed and the job recovered onto the spare" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || sed 's/^/     /' "$tmp/chaos.err"
wait_until 30 'gt "$(query "moed_job_recoveries_total{job_id=\"$job\"}")" 0'
check "Prometheus: moed_job_recoveries_total for the job went to $(query "moed_job_recoveries_total{job_id=\"$job\"}")" \
  'gt "$(query "moed_job_recoveries_total{job_id=\"$job\"}")" 0'
check "... and the recovery's duration is in the histogram" \
  'gt "$(query "moed_job_recovery_duration_seconds_count{job_id=\"$job\"}")" 0'
wait_until 30 'gt "$(query "moed_job_step{job_id=\"$job\"}")" "$step2"'
check "the step goes on after the recovery" 'gt "$(query "moed_job_step{job_id=\"$job\"}")" "$step2"'

"$moectl" cancel "$job" >/dev/null 2>&1
exit $((fails > 0))
