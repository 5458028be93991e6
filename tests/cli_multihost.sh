#!/usr/bin/env bash
# moed on four hosts, started by hand as docs/deploy/hosts.md says. The hosts are emulated
# (tests/linkemu/hosts_lib.sh): network namespaces with their own hostnames and IPC namespaces,
# joined by a bridge, each with one address of 10.213.7.0/24 that exists only inside them.
# Host 0 runs moed-coordinator, hosts 1 and 2 the two workers of pod 0 and of pod 1, host 3 a
# spare worker (its own pod 2); each daemon listens on its host's address, with tokens made and
# copied to the hosts the way an operator does, and moectl runs on host 0. A 2 x 2 job runs on
# the pod hosts; the worker of slot (0, 1) is killed with SIGKILL, the spare on host 3 takes
# that slot, and the job SUCCEEDS with the model `moectl train` makes in one process, byte for
# byte. Within a host a pair of slots shares memory, across hosts it talks TCP: seen in the
# workers' mappings of the shared-memory rings (/proc/PID/maps) and, marked [links], in
# `moectl status --json` (slots[i].links[j] = {pod, slot, transport}), before and after the
# spare came in (the [links] checks need that status field of issue 15; without it they fail).
# Needs root; without network namespaces (not root, no `ip`, no veth) it says why on one line
# and exits 77, a skip. Every namespace, interface and process it made is gone at the end,
# also when it fails.
set -u
moectl_bin=$1
bin=$(cd "$(dirname "$moectl_bin")" && pwd)
here=$(dirname "$0")
corpus=/usr/share/common-licenses/GPL-3
source "$here/cluster_lib.sh"
source "$here/linkemu/hosts_lib.sh"
hosts_test_init cli_multihost

cat >"$tmp/job.yaml" <<YAML
name: multihost
mesh: {pods: 2, slots: 2, spare_wait_s: 20}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: ${MULTIHOST_STEPS:-3000}, batch_size: 8, log_every: 500, eval_every: 0}
YAML
# the reference, in one process, while the hosts come up
reference_start "$tmp/job.yaml"

# ---- four hosts: 0 coordinator, 1 pod 0, 2 pod 1, 3 spare ----
hosts_up 4 >"$tmp/hosts.out" 2>&1 && { hosts_bridge || hosts_uswitch; } >>"$tmp/hosts.out" 2>&1
rc=$?
check "4 emulated hosts ($(hosts_name 0)..$(hosts_name 3) at $(hosts_addr 0)..$(hosts_addr 3))" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/hosts.out"; exit 1; }

# the tokens, made on the coordinator's host; the cluster token copied to each worker host
hosts_test_tokens 3

caddr=$(hosts_addr 0):7000
hosts_start 0 "$tmp/h0/coordinator.log" "$bin/moed-coordinator" --listen 0.0.0.0:7000 --advertise "$caddr" \
  --dir "$tmp/h0/store" --client-token-file "$tmp/h0/client.token" \
  --cluster-token-file "$tmp/h0/cluster.token" --addr-file "$tmp/h0/coordinator.addr"
wait_until 30 '[ -s "$tmp/h0/coordinator.addr" ]'
check "the coordinator binds 0.0.0.0 and advertises $caddr" '[ "$(cat "$tmp/h0/coordinator.addr" 2>/dev/null)" = "$caddr" ]'
[ -s "$tmp/h0/coordinator.addr" ] || { tail -n 8 "$tmp/h0/coordinator.log"; exit 1; }

# start_worker HOST POD NAME PORT: a worker on its host's address (its data plane on PORT + 100),
# with its scratch directory on that host. Host 2's workers bind every address and advertise
# their host's (--advertise / --data-advertise); the others listen on it: both forms of
# docs/deploy/hosts.md.
start_worker() {
  local a addrs; a=$(hosts_addr "$1")
  addrs=(--listen "$a:$4" --data-listen "$a:$(($4 + 100))")
  [ "$1" = 2 ] && addrs=(--listen "0.0.0.0:$4" --advertise "$a" --data-listen "0.0.0.0:$(($4 + 100))" --data-advertise "$a")
  mkdir -p "$tmp/h$1/$3"
  hosts_start "$1" "$tmp/h$1/$3.log" "$bin/moed-worker" --coordinator "$caddr" \
    --cluster-token-file "$tmp/h$1/cluster.token" "${addrs[@]}" \
    --pod "$2" --threads 1 --data-root /usr/share/common-licenses --dir "$tmp/h$1/$3"
}
start_worker 1 0 w0 7001; start_worker 1 0 w1 7002
start_worker 2 1 w0 7001; start_worker 2 1 w1 7002
start_worker 3 2 spare 7001

# moectl on host 0, told where the coordinator is and given the client token; the helpers of
# cluster_lib.sh call "$moectl"
# (each call bounded: mctl_for SECONDS ARGS...)
mctl_for() {
  local t=$1; shift
  hosts_run 0 timeout "$t" env MOED_COORDINATOR="$caddr" MOED_TOKEN_FILE="$tmp/h0/client.token" "$bin/moectl" "$@"
}
mctl() { mctl_for 60 "$@"; }
moectl=mctl
alive() { mctl cluster status --json 2>/dev/null | json 'sum(w["state"] in ("WORKER_IDLE", "WORKER_BUSY") for w in d.get("workers", []))'; }
wait_until 60 '[ "$(alive)" = 5 ] 2>/dev/null'
check "5 workers registered and alive ($(alive))" '[ "$(alive)" = 5 ]'
mctl cluster status --json >"$tmp/cluster.json"
# every worker registered from its own host: the hostname and address of that host
where_ok() { json '" ".join(w["host"] + "@" + w["address"].rsplit(":", 1)[0] for w in d["workers"])' <"$tmp/cluster.json"; }
expect=""
for h in 1 1 2 2 3; do expect="$expect $(hosts_name $h)@$(hosts_addr $h)"; done
check "each worker is on its host (hostname@address: $(where_ok))" \
  '[ "$(where_ok | tr " " "\n" | sort)" = "$(tr " " "\n" <<<"${expect# }" | sort)" ]'

# ---- the 2 x 2 job ----
job=$(mctl submit "$tmp/job.yaml")
check "submitted from host 0 ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 90 '[ "$(step_of "$job")" -ge 5 ] 2>/dev/null'
check "the job trains across the hosts (step $(step_of "$job"))" '[ "$(step_of "$job")" -ge 5 ]'

# slot_hosts: "pod,slot=HOST ..." in slot order, HOST the number of the host its worker is on
slot_hosts() { mctl status "$job" --json | json '" ".join("%d,%d=%d" % (s.get("pod", 0), s.get("slot", 0), int(s["worker_address"].rsplit(":", 1)[0].rsplit(".", 1)[1]) - 10) for s in d["slots"])'; }
check "pod 0 on host 1, pod 1 on host 2 ($(slot_hosts))" '[ "$(slot_hosts)" = "0,0=1 0,1=1 1,0=2 1,1=2" ]'

# shm_pairs: the pairs of worker processes that share ring buffers ("PID-PID", lower first):
# a ring is named after the pid of the worker that made it and mapped by both ends
worker_pids() { mctl cluster status --json | json '" ".join(str(w["pid"]) for w in d["workers"] if w["state"] == "WORKER_BUSY")'; }
shm_pairs() {
  local p c
  for p in $(worker_pids); do
    for c in $(grep -o 'moed-comm-[0-9]*-' "/proc/$p/maps" 2>/dev/null | sort -u | tr -dc '0-9\n'); do
      [ "$c" != "$p" ] && { [ "$c" -lt "$p" ] && echo "$c-$p" || echo "$p-$c"; }
    done
  done | words
}
words() { tr ' ' '\n' | grep . | sort -u | tr '\n' ' '; } # sorted, once each, one line
pid_of_slot() { mctl status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s.get('pod', 0), s.get('slot', 0)) == ($1, $2)][0]" | pid_of_worker; }
pid_of_worker() { local id; read -r id; mctl cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$id'][0]"; }
pair() { local a b; a=$(pid_of_slot "$1" "$2"); b=$(pid_of_slot "$3" "$4"); [ "$a" -lt "$b" ] && echo "$a-$b" || echo "$b-$a"; }
expect_shm=$(echo "$(pair 0 0 0 1) $(pair 1 0 1 1)" | words)
wait_until 20 '[ "$(shm_pairs)" = "$expect_shm" ]'
check "shared memory between the slots of one host only: $(shm_pairs)(expected $expect_shm)" \
  '[ "$(shm_pairs)" = "$expect_shm" ]'

# [links] each slot's links in status: "shm" to a slot on its host, "tcp" to any other; the
# pod's other slot among them; both kinds seen (the status field of issue 15, item 1)
links_report() { mctl status "$job" --json | "$py" -c '
import json, sys
d = json.load(sys.stdin)
key = lambda s: (s.get("pod", 0), s.get("slot", 0))
host = {key(s): s["worker_address"].rsplit(":", 1)[0] for s in d["slots"]}
bad, seen = [], set()
for s in d["slots"]:
    links = s.get("links", [])
    if not links: bad.append("slot %s has no links" % (key(s),)); continue
    if not any(key(l) == (key(s)[0], 1 - key(s)[1]) for l in links):
        bad.append("slot %s: no link to its pod mate" % (key(s),))
    for l in links:
        want = "shm" if host[key(s)] == host[key(l)] else "tcp"
        seen.add(l.get("transport"))
        if l.get("transport") != want: bad.append("%s->%s %s, not %s" % (key(s), key(l), l.get("transport"), want))
if not bad and seen != {"shm", "tcp"}: bad.append("transports seen: %s" % sorted(seen))
print("; ".join(bad) if bad else "ok")'; }
wait_until 10 '[ "$(links_report)" = ok ]'
check "[links] status: shm within a host, tcp across hosts ($(links_report))" '[ "$(links_report)" = ok ]'

# ---- a worker of host 1 dies; the spare on host 3 takes its slot ----
spare=$(json '[w["worker_id"] for w in d["workers"] if w.get("pod", 0) == 2][0]' <"$tmp/cluster.json")
victim_pid=$(pid_of_slot 0 1)
on_host1() { [ -n "$victim_pid" ] && [ "$(readlink "/proc/$victim_pid/ns/uts")" = "$(readlink "/proc/$(hosts_anchor 1)/ns/uts")" ]; }
check "slot (0, 1)'s worker (pid $victim_pid) runs on host 1" on_host1
on_host1 || exit 1 # never a kill -9 of a pid that is not that worker
at=$(step_of "$job")
check "the job still RUNNING at the kill, at step $at of ${MULTIHOST_STEPS:-3000}" \
  '[ "$(state_of "$job")" = JOB_RUNNING ]'
kill -9 "$victim_pid"
events() { mctl status "$job" --json | json '" ".join(e["kind"] for e in d["events"])'; }
wait_until 90 '[[ " $(events) " == *" recovered "* ]] || [ "$(state_of "$job")" != JOB_RUNNING ]'
check "the kill is recovered ($(events))" '[[ " $(events) " == *" recovered "* ]]'
holder() { mctl status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s.get('pod', 0), s.get('slot', 0)) == (0, 1)][0]"; }
check "the spare $spare (host 3) plays slot (0, 1) now ($(slot_hosts))" \
  '[ "$(holder)" = "$spare" ] && [ "$(slot_hosts)" = "0,0=1 0,1=3 1,0=2 1,1=2" ]'
expect_shm=$(pair 1 0 1 1 | words)
wait_until 20 '[ "$(shm_pairs)" = "$expect_shm" ]'
check "shared memory only within pod 1's host now: $(shm_pairs)(expected $expect_shm)" \
  '[ "$(shm_pairs)" = "$expect_shm" ]'
wait_until 10 '[ "$(links_report)" = ok ]'
check "[links] status after the recovery: shm within host 2, tcp to and from the spare ($(links_report))" \
  '[ "$(links_report)" = ok ]'

# ---- the end: moectl train's model ----
mctl_for 300 watch "$job" >"$tmp/watch.out" 2>&1
echo $? >"$tmp/watch.rc"
reference_wait
rc=$(cat "$tmp/watch.rc")
check_same_model "$job" $rc
recoveries=$(mctl status "$job" --json | json 'd["job"]["recoveries"]')
check "one recovery counted ($recoveries)" '[ "$recoveries" = 1 ]'

# ---- a worker on host 3 that advertises loopback to a coordinator on another host: refused,
# with the reason in status and in its own log, and never given work ----
hosts_start 3 "$tmp/h3/loopback.log" "$bin/moed-worker" --coordinator "$caddr" \
  --cluster-token-file "$tmp/h3/cluster.token" --listen 0.0.0.0:7009 --advertise 127.0.0.1 \
  --data-listen 0.0.0.0:7109 --pod 3 --threads 1 --data-root /usr/share/common-licenses \
  --dir "$tmp/h3/loopback"
refusal() { mctl cluster status --json | json '" ".join(w.get("refused", "") for w in d["workers"] if w.get("pod", 0) == 3)'; }
wait_until 30 '[[ "$(refusal)" == *loopback* ]]'
check "a worker advertising 127.0.0.1 from host 3 is refused: $(refusal)" \
  '[[ "$(refusal)" == *"is loopback but it connected from $(hosts_addr 3)"* ]]'
wait_until 10 'grep -q "gives this worker no job: .*loopback" "$tmp/h3/loopback.log"'
check "... and its log says why" 'grep -q "gives this worker no job: .*loopback" "$tmp/h3/loopback.log"'
if [ $fails -gt 0 ]; then
  mctl status "$job" 2>&1 | tail -n 30
  for f in "$tmp"/h*/*.log; do echo "== $f"; grep -v " INFO " "$f" | tail -n 8; done
fi

# the namespaces by inode: after hosts_down no name is left, and no process is in one
inodes=$(for n in 0 1 2 3; do stat -L -c 'net:[%i]' "/run/netns/$(hosts_ns $n)"; done; stat -L -c 'net:[%i]' "/run/netns/$hosts_tag-sw")
hosts_down
left=$(for p in /proc/[0-9]*; do grep -qxF "$(readlink "$p/ns/net" 2>/dev/null)" <<<"$inodes" && echo "${p#/proc/}"; done)
check "every namespace and process of the hosts is gone (${left:-none left})" \
  '! ip netns list | grep -q "^$hosts_tag-" && [ -z "$left" ]'
[ $fails -eq 0 ] && echo "cli_multihost: all checks passed" || echo "cli_multihost: $fails checks failed"
exit $((fails > 0))
