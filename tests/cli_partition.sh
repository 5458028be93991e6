#!/usr/bin/env bash
# A partition between the pods' hosts is held, not fatal (docs/recovery.md, "Partitions").
# Three emulated hosts (tests/linkemu/hosts_lib.sh, joined by linkswitch): host 0 runs the
# coordinator and moectl, host 1 the two workers of pod 0, host 2 those of pod 1. A 2 x 2 job
# trains; the link between hosts 1 and 2 is cut (DROP) for 2 minutes while the coordinator
# still reaches both. Every worker answers its fence holding its state, so the coordinator
# holds the recovery (event partition_held, `moectl status` says HELD and who cannot reach
# whom) instead of counting its failed rebinds to the 8 attempts that used to fail the job
# after ~80 s; once the link is back, the next rebind works (partition_healed, recovered) and
# the job SUCCEEDS with the model `moectl train` makes in one process, byte for byte. Then a
# job with mesh.partition_wait_s: 5 meets a cut that lasts longer: it FAILS with a reason
# naming the pods and mesh.partition_wait_s, and the coordinator keeps serving (once the link
# is back, the four workers are idle again and a short job SUCCEEDS on them). Last, one
# worker per host: a 2 x 1 job without spares whose host-2 worker is cut off from the
# coordinator (not from its peer) for 20 s: its fence times out, so instead of failing after
# mesh.spare_wait_s the recovery waits for it (partition_held, HELD); back, it keeps its slot
# and the job ends with `moectl train`'s model for that mesh, byte for byte.
# Needs root; without network namespaces it says why and exits 77, a skip. Every namespace
# and process it made is gone at the end, also when it fails.
set -u
moectl_bin=$1
bin=$(cd "$(dirname "$moectl_bin")" && pwd)
here=$(dirname "$0")
corpus=/usr/share/common-licenses/GPL-3
cut_s=${PARTITION_CUT_S:-120}
source "$here/cluster_lib.sh"
source "$here/linkemu/hosts_lib.sh"
hosts_test_init cli_partition 10.213.13

cat >"$tmp/job.yaml" <<YAML
name: partition
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: ${PARTITION_STEPS:-1500}, batch_size: 8, log_every: 100, eval_every: 0}
YAML
reference_start "$tmp/job.yaml"

# ---- three hosts: 0 coordinator, 1 pod 0, 2 pod 1, through the userspace switch ----
links() { printf '* * 0 1000 0\n' >"$tmp/links.conf"; [ "$1" = cut ] && printf '1 2 0 1000 1\n2 1 0 1000 1\n' >>"$tmp/links.conf"; hosts_links; }
hosts_up 3 >"$tmp/hosts.out" 2>&1 && hosts_uswitch "$tmp/links.conf" >>"$tmp/hosts.out" 2>&1
rc=$?
check "3 emulated hosts joined by linkswitch" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/hosts.out"; exit 1; }
links open

hosts_test_tokens 2
caddr=$(hosts_addr 0):7000
hosts_start 0 "$tmp/h0/coordinator.log" "$bin/moed-coordinator" --listen "$caddr" \
  --dir "$tmp/h0/store" --client-token-file "$tmp/h0/client.token" \
  --cluster-token-file "$tmp/h0/cluster.token" --addr-file "$tmp/h0/coordinator.addr"
wait_until 30 '[ -s "$tmp/h0/coordinator.addr" ]'
check "the coordinator runs on host 0 ($caddr)" '[ -s "$tmp/h0/coordinator.addr" ]'
[ -s "$tmp/h0/coordinator.addr" ] || { tail -n 8 "$tmp/h0/coordinator.log"; exit 1; }
for h in 1 2; do
  for w in 1 2; do
    hosts_start $h "$tmp/h$h/w$w.log" "$bin/moed-worker" --coordinator "$caddr" \
      --cluster-token-file "$tmp/h$h/cluster.token" --listen "$(hosts_addr $h):700$w" \
      --data-listen "$(hosts_addr $h):710$w" --pod $((h - 1)) --threads 1 \
      --data-root /usr/share/common-licenses --dir "$tmp/h$h/w$w"
  done
done

mctl_for() {
  local t=$1; shift
  hosts_run 0 timeout "$t" env MOED_COORDINATOR="$caddr" MOED_TOKEN_FILE="$tmp/h0/client.token" "$bin/moectl" "$@"
}
mctl() { mctl_for 60 "$@"; }
moectl=mctl
count() { mctl cluster status --json 2>/dev/null | json "sum(w['state'] in ($1) for w in d.get('workers', []))"; }
alive() { count '"WORKER_IDLE", "WORKER_BUSY"'; }
idle() { count '"WORKER_IDLE",'; }
wait_until 60 '[ "$(idle)" = 4 ] 2>/dev/null'
check "4 workers registered, idle ($(idle))" '[ "$(idle)" = 4 ]'
events() { mctl status "$1" --json | json '" ".join(e["kind"] for e in d["events"])'; }
event_text() { mctl status "$1" --json | json "'\n'.join(e['message'] for e in d['events'] if e['kind'] == '$2')"; }
has_event() { [[ " $(events "$1") " == *" $2 "* ]]; }

# ---- a 2-minute partition between the pods is held; the job finishes as if nothing happened ----
job=$(mctl submit "$tmp/job.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 90 '[ "$(step_of "$job")" -ge 20 ] 2>/dev/null'
check "the job trains across the hosts (step $(step_of "$job"))" '[ "$(step_of "$job")" -ge 20 ]'
links cut
cut_at=$SECONDS
echo "     cut hosts 1 <-> 2 at step $(step_of "$job"), for $cut_s s"
wait_until 60 'has_event "$job" partition_held || [ "$(state_of "$job")" != JOB_RUNNING ]'
check "the partition is held (event partition_held after $((SECONDS - cut_at)) s; $(events "$job"))" \
  'has_event "$job" partition_held'
held=$(event_text "$job" partition_held)
check "... naming the pods that cannot reach each other: $held" \
  '[[ "$held" == *"pod 0 and pod 1 cannot reach each other"* ]]'
mctl status "$job" >"$tmp/status.held"
check "moectl status says HELD and why: $(grep -E "HELD|  held " "$tmp/status.held" | tr -s ' ' | tr '\n' ' ')" \
  'head -n 1 "$tmp/status.held" | grep -q "RUNNING, HELD (partition)" && grep -q "^  held      since .*pod 0 and pod 1 cannot reach each other.*mesh.partition_wait_s" "$tmp/status.held"'
wait_until $((cut_s + 10)) '[ $((SECONDS - cut_at)) -ge $cut_s ] || [ "$(state_of "$job")" != JOB_RUNNING ]'
check "after $((SECONDS - cut_at)) s of partition the job is still RUNNING ($(state_of "$job"))" \
  '[ "$(state_of "$job")" = JOB_RUNNING ]'
check "... every worker alive ($(alive) of 4)" '[ "$(alive)" = 4 ]'
n_rec=$(events "$job" | tr ' ' '\n' | grep -c '^recovering$')
check "... its retries are not logged one by one ($n_rec recovering events)" '[ "$n_rec" -le 2 ]'
links open
healed_at=$SECONDS
wait_until 90 'has_event "$job" recovered || [ "$(state_of "$job")" != JOB_RUNNING ]'
check "the link is back: partition_healed, then recovered ($((SECONDS - healed_at)) s after; $(events "$job"))" \
  'has_event "$job" partition_healed && has_event "$job" recovered'
check "moectl status no longer says HELD" '! mctl status "$job" | grep -q HELD'
mctl_for 600 watch "$job" >"$tmp/watch.out" 2>&1
echo $? >"$tmp/watch.rc"
reference_wait
check_same_model "$job" "$(cat "$tmp/watch.rc")"
recoveries=$(mctl status "$job" --json | json 'd["job"]["recoveries"]')
check "one recovery counted ($recoveries)" '[ "$recoveries" = 1 ]'

# ---- mesh.partition_wait_s passes: the job fails saying why; the coordinator serves on ----
wait_until 30 '[ "$(idle)" = 4 ]'
sed -e "s/mesh: {pods: 2, slots: 2}/mesh: {pods: 2, slots: 2, partition_wait_s: 5}/" \
  -e "s/steps: [0-9]*/steps: 1000000/" "$tmp/job.yaml" >"$tmp/short.yaml"
job2=$(mctl submit "$tmp/short.yaml")
wait_until 90 '[ "$(step_of "$job2")" -ge 5 ] 2>/dev/null'
check "a job with mesh.partition_wait_s 5 trains ($job2, step $(step_of "$job2"))" \
  '[ "$(step_of "$job2")" -ge 5 ]'
links cut
cut_at=$SECONDS
wait_until 120 '[ "$(state_of "$job2")" != JOB_RUNNING ]'
check "a longer cut FAILS it ($(state_of "$job2") after $((SECONDS - cut_at)) s)" \
  '[ "$(state_of "$job2")" = JOB_FAILED ]'
err=$(mctl status "$job2" --json | json 'd["job"]["error"]')
check "... the reason names the pods, for how long, and mesh.partition_wait_s: $err" \
  '[[ "$err" == *"pod 0 and pod 1 cannot reach each other"*" for "*"mesh.partition_wait_s = 5 s"* ]]'
links open
wait_until 60 '[ "$(idle)" = 4 ]'
check "the coordinator serves on: the 4 workers are idle again ($(idle))" '[ "$(idle)" = 4 ]'
sed -e "s/steps: [0-9]*/steps: 30/" "$tmp/job.yaml" >"$tmp/tiny.yaml"
job3=$(mctl submit "$tmp/tiny.yaml")
mctl_for 120 watch "$job3" >/dev/null 2>&1
check "... and the next job SUCCEEDS ($job3: $(state_of "$job3"))" '[ "$(state_of "$job3")" = JOB_SUCCEEDED ]'

# ---- a worker cut off from the coordinator, that no plan can do without, is waited for ----
# A 2 x 1 job on one worker per host (the others leave): slot (1, 0)'s worker on host 2 loses
# the coordinator (its peer on host 1 still reaches it). It is found silent, and its fence times
# out: cut off, not known dead. No spare, and the survivor holds the same slot index, so it
# cannot play both: instead of failing after mesh.spare_wait_s (3 s) the recovery waits for it;
# back, it is fenced again and the job goes on with it, ending with moectl train's model.
sed -e "s/mesh: {pods: 2, slots: 2}/mesh: {pods: 2, slots: 1, spare_wait_s: 3}/" "$tmp/job.yaml" >"$tmp/cut.yaml"
reference_start "$tmp/cut.yaml"
for pid in $(mctl cluster status --json | json '" ".join(str(w["pid"]) for w in d["workers"] if w["address"].endswith(":7002") and w["state"] == "WORKER_IDLE")'); do
  kill -TERM "$pid"
done
wait_until 30 '[ "$(alive)" = 2 ]'
check "two workers left; one per host is alive ($(alive))" '[ "$(alive)" = 2 ]'
job4=$(mctl submit "$tmp/cut.yaml")
wait_until 90 '[ "$(step_of "$job4")" -ge 20 ] 2>/dev/null'
check "a 2 x 1 job trains on hosts 1 and 2 ($job4, step $(step_of "$job4"))" '[ "$(step_of "$job4")" -ge 20 ]'
cut_worker=$(mctl status "$job4" --json | json "[s['worker_id'] for s in d['slots'] if s.get('pod', 0) == 1][0]")
printf '* * 0 1000 0\n0 2 0 1000 1\n2 0 0 1000 1\n' >"$tmp/links.conf"; hosts_links
cut_at=$SECONDS
wait_until 60 'has_event "$job4" partition_held || [ "$(state_of "$job4")" != JOB_RUNNING ]'
check "host 2 cut from the coordinator: the recovery waits for $cut_worker (partition_held after $((SECONDS - cut_at)) s; $(events "$job4"))" \
  'has_event "$job4" partition_held && [[ "$(event_text "$job4" partition_held)" == *"$cut_worker"*"cut off from the coordinator"* ]]'
wait_until 30 '[ $((SECONDS - cut_at)) -ge 20 ] || [ "$(state_of "$job4")" != JOB_RUNNING ]'
check "... still RUNNING $((SECONDS - cut_at)) s into the cut, past mesh.spare_wait_s, HELD" \
  '[ "$(state_of "$job4")" = JOB_RUNNING ] && mctl status "$job4" | head -n 1 | grep -q HELD'
links open
wait_until 60 'has_event "$job4" recovered || [ "$(state_of "$job4")" != JOB_RUNNING ]'
check "the link is back: $cut_worker is fenced again and keeps its slot ($(events "$job4"))" \
  'has_event "$job4" partition_healed && has_event "$job4" recovered && [ "$(mctl status "$job4" --json | json "[s[\"worker_id\"] for s in d[\"slots\"] if s.get(\"pod\", 0) == 1][0]")" = "$cut_worker" ]'
mctl_for 600 watch "$job4" >"$tmp/watch.out" 2>&1
echo $? >"$tmp/watch.rc"
reference_wait "the reference of the 2 x 1 job"
check_same_model "$job4" "$(cat "$tmp/watch.rc")"

if [ $fails -gt 0 ]; then
  for j in "$job" "$job2" "${job4:-}"; do mctl status "$j" 2>&1 | tail -n 25; done
  for f in "$tmp"/h*/*.log; do echo "== $f"; grep -v " INFO " "$f" | tail -n 8; done
fi
[ $fails -eq 0 ] && echo "cli_partition: all checks passed" || echo "cli_partition: $fails checks failed"
exit $((fails > 0))
