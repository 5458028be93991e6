#!/usr/bin/env bash
# bench_xpod.sh BIN_DIR — the step time of a 2 x 2 job when the link between its pods is slow,
# against the same delay inside a pod (docs/crosspod.md).
#
# Five emulated hosts (tests/linkemu/hosts_lib.sh: network namespaces joined by linkswitch,
# which adds a one-way delay and a rate limit per host pair): host 0 runs the coordinator,
# hosts 1 and 2 the two workers of pod 0, hosts 3 and 4 those of pod 1, one worker per host,
# so every pair of slots talks tcp. Every pair of worker hosts has 1 Gbit/s; the delay goes
# either between the pods (every pair of hosts {1,2} x {3,4}) or inside them (1 <-> 2 and
# 3 <-> 4, nothing between the pods), at round trips of 0, 2, 10 and 50 ms. For each, a job
# of the demo's shape (deploy/specs/demo.yaml: d_model 128, 2 layers, 4 experts, top-2) runs
# BENCH_XPOD_STEPS steps; the step time is the wall time from step BENCH_XPOD_WARMUP to the
# last step over the steps between (polled every 0.1 s), and "added" is that minus the 0 ms
# run's. Where the workers log it (the bucketed sync), "hidden" is the share of the cross-pod
# reductions' time that the step did not wait for (worker/trainer/slot.c), the mean over the
# four slots. Then the outer-step mode (mesh.sync: diloco, H = BENCH_XPOD_H, default 20) at
# the round trips BENCH_XPOD_DILOCO_RTTS (default 0 and 50 ms; "0 50 0 50" alternates them
# against the host's drift) between the pods: (N + 1) H steps, timed over the last N H (N =
# BENCH_XPOD_PERIODS, default 2, whole outer periods, each with its outer step), "added" against
# its own 0 ms row, and against the synchronous 0 ms row in brackets; instead of "hidden",
# "outer ms": an outer step's time as the workers log it (worker/trainer/outer.c), the mean
# over the slots and the least slot's mean: the time includes waiting for the other pod to
# arrive (the pods drift apart over H steps on a loaded host), so the least is the closer
# to what the exchange itself costs. Then the same rows with the overlapped outer step
# (mesh.outer_overlap; BENCH_XPOD_OVERLAP=0 leaves them out): its job's last outer step still
# waits for its own exchange, once in the timed window. BENCH_XPOD_OVERLAP=pair runs the two
# modes' jobs back to back at each round trip instead (diloco, then overlapped), so that the
# host's drift touches both alike: "added" is then the overlapped row against the diloco row
# just before it. BENCH_XPOD_RTTS="" leaves the synchronous rows out. Needs root for the
# namespaces; without them it says why and exits 0 (a benchmark reports, it does not fail).
# Numbers are reported, never asserted.
set -u
bin=${1:?usage: bench_xpod.sh BIN_DIR}
bin=$(cd "$bin" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
corpus=/usr/share/common-licenses/GPL-3
steps=${BENCH_XPOD_STEPS:-25}
warm=${BENCH_XPOD_WARMUP:-5}
rtts=${BENCH_XPOD_RTTS-0 2 10 50}
H=${BENCH_XPOD_H:-20}
diloco_rtts=${BENCH_XPOD_DILOCO_RTTS:-0 50}
periods=${BENCH_XPOD_PERIODS:-2}
overlap=${BENCH_XPOD_OVERLAP:-1}
source "$here/bench_lib.sh"
source "$here/../linkemu/hosts_lib.sh"
export MOE_BUILD_DIR=${MOE_BUILD_DIR:-$(dirname "$bin")}
unset MOED_CLUSTER_DIR MOED_COORDINATOR MOED_TOKEN MOED_TOKEN_FILE MOED_TLS_CA
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe_bench_xpod.XXXXXX")
cleanup() { hosts_down; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 143' INT TERM
hosts_init "$tmp/hosts" 10.213.9
if ! hosts_probe; then
  echo "bench_xpod: skipped, no network namespaces here: $hosts_why"
  exit 0
fi
hosts_up 5 >"$tmp/hosts.out" 2>&1 && hosts_uswitch "$tmp/links.conf" >>"$tmp/hosts.out" 2>&1 ||
  { echo "bench_xpod: the emulated hosts did not come up"; cat "$tmp/hosts.out"; exit 1; }

umask 077
mkdir -p "$tmp"/h{0,1,2,3,4}
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/h0/client.token"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/h0/cluster.token"
caddr=$(hosts_addr 0):7000
hosts_start 0 "$tmp/h0/coordinator.log" "$bin/moed-coordinator" --listen "$caddr" \
  --dir "$tmp/h0/store" --client-token-file "$tmp/h0/client.token" \
  --cluster-token-file "$tmp/h0/cluster.token" --addr-file "$tmp/h0/coordinator.addr"
wait_until 30 '[ -s "$tmp/h0/coordinator.addr" ]' || { echo "bench_xpod: no coordinator"; exit 1; }
for h in 1 2 3 4; do
  a=$(hosts_addr $h)
  cp "$tmp/h0/cluster.token" "$tmp/h$h/cluster.token"
  hosts_start $h "$tmp/h$h/worker.log" "$bin/moed-worker" --coordinator "$caddr" \
    --cluster-token-file "$tmp/h$h/cluster.token" --listen "$a:7001" --data-listen "$a:7101" \
    --pod $(((h - 1) / 2)) --threads 1 --data-root /usr/share/common-licenses --dir "$tmp/h$h/w"
done
mctl() { hosts_run 0 timeout 60 env MOED_COORDINATOR="$caddr" MOED_TOKEN_FILE="$tmp/h0/client.token" "$bin/moectl" "$@"; }
idle() { mctl cluster status --json 2>/dev/null | json 'sum(w["state"] == "WORKER_IDLE" for w in d.get("workers", []))'; }
wait_until 60 '[ "$(idle)" = 4 ] 2>/dev/null' || { echo "bench_xpod: the 4 workers did not register"; exit 1; }

cat >"$tmp/job.yaml" <<YAML
name: xpod
mesh: {pods: 2, slots: 2, timeout_s: 20}
model: {d_model: 128, layers: 2, heads: 4, seq_len: 128, experts: 4, d_ff: 256}
router: {top_k: 2, capacity_factor: 1.25}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: $steps, log_every: 1000, eval_every: 0}
YAML
sed -e "s/^mesh: {/mesh: {sync: diloco, outer_every: $H, /" \
  -e "s/steps: $steps,/steps: $(((periods + 1) * H)),/" \
  "$tmp/job.yaml" >"$tmp/diloco.yaml"
sed -e "s/^mesh: {/mesh: {outer_overlap: true, /" "$tmp/diloco.yaml" >"$tmp/overlap.yaml"

# links WHERE RTT_MS: the links file for a delay between the pods or inside them
links() {
  local d=$(($2 * 500)) a b
  echo "* * 0 1000 0"
  if [ "$1" = between ]; then
    for a in 1 2; do for b in 3 4; do echo "$a $b $d 1000 0"; echo "$b $a $d 1000 0"; done; done
  else
    for a in "1 2" "2 1" "3 4" "4 3"; do echo "$a $d 1000 0"; done
  fi
}
step_of() { mctl status "$1" --json 2>/dev/null | json 'd["job"]["step"]'; }
state_of() { mctl status "$1" --json 2>/dev/null | json 'd["job"]["state"]'; }
# hidden: the mean of the slots' "(N% hidden)" in their logs since line $2 of each
hidden() {
  local h n=0 sum=0 v
  for h in 1 2 3 4; do
    v=$(tail -n +"$(($(cat "$tmp/h$h/mark") + 1))" "$tmp/h$h/worker.log" | grep -o '([0-9]*% hidden)' | tail -n 1 | tr -dc '0-9')
    [ -n "$v" ] && n=$((n + 1)) && sum=$((sum + v))
  done
  [ $n -gt 0 ] && echo "$((sum / n))%" || echo "-"
}

# outer_ms: the mean of the slots' "outer steps: N, X ms each" in their logs since the mark
outer_ms() {
  local h v
  for h in 1 2 3 4; do
    tail -n +"$(($(cat "$tmp/h$h/mark") + 1))" "$tmp/h$h/worker.log" |
      grep -o 'outer steps: [0-9]*, [0-9.]* ms each' | tail -n 1 | awk '{print $4}'
  done | awk 'NR == 1 || $1 < m {m = $1} {s += $1; n++}
              END {if (n) printf "%.1f/%.1f\n", s / n, m; else print "-"}'
}

# run WHERE RTT_MS [SPEC STEPS WARMUP]: prints the step time in ms
run() {
  local spec=${3:-$tmp/job.yaml} steps=${4:-$steps} warm=${5:-$warm}
  links "$1" "$2" >"$tmp/links.conf"
  hosts_links
  wait_until 10 "[ \$(grep -c 'linkswitch: loaded' '$tmp/hosts/linkswitch.log') -gt $nloads ]"
  nloads=$(grep -c 'linkswitch: loaded' "$tmp/hosts/linkswitch.log")
  for h in 1 2 3 4; do wc -l <"$tmp/h$h/worker.log" >"$tmp/h$h/mark"; done
  local job t0 t1
  job=$(mctl submit "$spec") || { echo "bench_xpod: submit failed" >&2; echo "-"; return; }
  wait_until 300 '[ "$(step_of "$job")" -ge '$warm' ] 2>/dev/null'
  t0=$(now_ms)
  wait_until 600 '[ "$(step_of "$job")" -ge '$steps' ] 2>/dev/null || [[ "$(state_of "$job")" =~ FAILED|CANCELLED ]]'
  t1=$(now_ms)
  [ "$(step_of "$job")" -ge "$steps" ] 2>/dev/null || { echo "bench_xpod: $job did not finish ($(state_of "$job"))" >&2; echo "-"; return; }
  wait_until 60 '[[ "$(state_of "$job")" =~ SUCCEEDED|FAILED|CANCELLED ]] && [ "$(idle)" = 4 ]'
  "$py" -c "print('%.1f' % (($t1 - $t0) / ($steps - $warm)))"
}

nloads=$(grep -c 'linkswitch: loaded' "$tmp/hosts/linkswitch.log")
echo "bench_xpod: 2 x 2 job (demo shape), one worker per emulated host, 1 Gbit/s, $((steps - warm)) steps timed"
[ -z "$rtts" ] || printf '%-12s %-8s %10s %10s %8s\n' "round trip" "where" "step ms" "added ms" "hidden"
base=""
for rtt in $rtts; do
  for where in between inside; do
    [ "$rtt" = 0 ] && [ "$where" = inside ] && continue
    ms=$(run $where "$rtt")
    [ "$rtt" = 0 ] && base=$ms
    added=$("$py" -c "print('%.1f' % ($ms - $base))" 2>/dev/null || echo "-")
    printf '%-12s %-8s %10s %10s %8s\n' "$rtt ms" "$([ "$rtt" = 0 ] && echo "-" || echo "$where")" "$ms" "$added" "$(hidden)"
  done
done
# diloco_rows SPEC TITLE: the outer-step mode's rows
diloco_rows() {
  local spec=$1 dbase="" rtt ms added
  echo "$2, H = $H: $(((periods + 1) * H)) steps, the last $((periods * H)) timed"
  printf '%-12s %-8s %10s %18s %12s\n' "round trip" "where" "step ms" "added ms (vs sync)" "outer ms/min"
  for rtt in $diloco_rtts; do
    ms=$(run between "$rtt" "$spec" $(((periods + 1) * H)) "$H")
    [ "$rtt" = 0 ] && dbase=$ms
    added=$("$py" -c "print('%.1f (%+.1f)' % ($ms - $dbase, $ms - $base))" 2>/dev/null ||
      "$py" -c "print('%.1f' % ($ms - $dbase))" 2>/dev/null || echo "-")
    printf '%-12s %-8s %10s %18s %12s\n' "$rtt ms" "$([ "$rtt" = 0 ] && echo "-" || echo between)" "$ms" "$added" "$(outer_ms)"
  done
}
# pair_rows: each round trip's diloco job, then its overlapped one
pair_rows() {
  local rtt ms ms2
  echo "mesh.sync: diloco, then with mesh.outer_overlap: true, H = $H: $(((periods + 1) * H)) steps, the last $((periods * H)) timed"
  printf '%-12s %-8s %10s %12s %10s %12s %10s\n' "round trip" "where" "diloco ms" "outer ms/min" "overlap ms" "outer ms/min" "added ms"
  for rtt in $diloco_rtts; do
    ms=$(run between "$rtt" "$tmp/diloco.yaml" $(((periods + 1) * H)) "$H")
    local o1=$(outer_ms)
    ms2=$(run between "$rtt" "$tmp/overlap.yaml" $(((periods + 1) * H)) "$H")
    printf '%-12s %-8s %10s %12s %10s %12s %10s\n' "$rtt ms" "$([ "$rtt" = 0 ] && echo "-" || echo between)" \
      "$ms" "$o1" "$ms2" "$(outer_ms)" "$("$py" -c "print('%+.1f' % ($ms2 - $ms))" 2>/dev/null || echo "-")"
  done
}
if [ "$overlap" = pair ]; then
  [ -z "$diloco_rtts" ] || pair_rows
  exit 0
fi
[ -z "$diloco_rtts" ] || diloco_rows "$tmp/diloco.yaml" "mesh.sync: diloco"
[ -z "$diloco_rtts" ] || [ "$overlap" = 0 ] ||
  diloco_rows "$tmp/overlap.yaml" "mesh.sync: diloco, mesh.outer_overlap: true"
