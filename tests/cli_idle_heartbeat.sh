#!/usr/bin/env bash
# Idle workers heartbeat seldom, busy ones at the full rate, and a silent worker is still found
# dead (docs/operations.md, "Many workers"): one coordinator with 100 ms heartbeats, a 1 s
# timeout and a 2 s idle interval, and one real worker. Idle, the worker's last heartbeat is
# seen older than the timeout (it heartbeats seldom) while it stays IDLE (the coordinator
# waits as long for it); a job runs and succeeds on it; stopped (SIGSTOP) while idle it is
# declared DEAD, within the idle allowance.
set -u
moectl=$1
bin=$(dirname "$moectl")
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_idle_heartbeat
mkdir -p "$cdir"
umask 077
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cdir/client.token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cdir/cluster.token"
"$bin/moed-coordinator" --dir "$cdir/state" --listen 127.0.0.1:0 --addr-file "$cdir/addr" \
  --client-token-file "$cdir/client.token" --cluster-token-file "$cdir/cluster.token" \
  --heartbeat-interval-ms 100 --heartbeat-timeout-ms 1000 --idle-heartbeat-interval-ms 2000 \
  2>"$cdir/coordinator.log" &
cpid=$!
wait_until 30 '[ -s "$cdir/addr" ]' || { cat "$cdir/coordinator.log"; exit 1; }
export MOED_COORDINATOR=$(cat "$cdir/addr") MOED_TOKEN_FILE=$cdir/client.token
"$bin/moed-worker" --coordinator "$MOED_COORDINATOR" --cluster-token-file "$cdir/cluster.token" \
  --threads 1 --data-root /usr/share/common-licenses --dir "$cdir/worker" 2>"$cdir/worker.log" &
wpid=$!

# "STATE MS_SINCE_HEARTBEAT" of the one worker
worker() { "$moectl" cluster status --json 2>/dev/null |
  json '" ".join(str(x) for x in [(w["state"], w.get("ms_since_heartbeat", 0)) for w in d["workers"]][0])' 2>/dev/null; }
wait_until 30 '[ "$(worker | cut -d" " -f1)" = WORKER_IDLE ]'
check "the worker registered and is idle" '[ "$(worker | cut -d" " -f1)" = WORKER_IDLE ]'
# over ~6 s (three idle intervals): never DEAD, and some heartbeat older than the 1 s timeout
oldest=0 states=
for _ in $(seq 1 30); do
  read -r st ms <<<"$(worker)"
  states+=" $st"
  [ "${ms:-0}" -gt "$oldest" ] && oldest=$ms
  sleep 0.2
done
echo "     (the oldest heartbeat seen while idle: $oldest ms)"
check "idle, it heartbeats less often than the timeout" '[ "$oldest" -gt 1000 ]'
check "... and the coordinator waits for it: never DEAD" '[[ "$states" != *DEAD* ]]'

cat >"$tmp/short.yaml" <<YAML
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: /usr/share/common-licenses/GPL-3}], val_fraction: 0.05}
run: {steps: 30, batch_size: 4, log_every: 10, eval_every: 0}
YAML
job=$("$moectl" submit "$tmp/short.yaml")
"$moectl" watch "$job" >/dev/null 2>&1
check "a job runs on it and succeeds" '[ "$(state_of "$job")" = JOB_SUCCEEDED ]'

wait_until 30 '[ "$(worker | cut -d" " -f1)" = WORKER_IDLE ]'
kill -STOP "$wpid"
stopped=$SECONDS
wait_until 30 '[ "$(worker | cut -d" " -f1)" = WORKER_DEAD ]'
check "stopped while idle, it is declared DEAD ($((SECONDS - stopped)) s)" \
  '[ "$(worker | cut -d" " -f1)" = WORKER_DEAD ]'
kill -CONT "$wpid"
stop "$wpid"
stop "$cpid"
check "the coordinator exits 0 on SIGTERM" '[ "$rc" = 0 ]'
[ $fails -eq 0 ] || tail -n 30 "$cdir/coordinator.log"
echo "cli_idle_heartbeat: $fails failure(s)"
[ $fails -eq 0 ]
