#!/usr/bin/env bash
# `moectl chaos` itself, apart from the recovery it tests: bad input is refused with a clear
# error and exit 2 (no cluster directory, an unknown kind, an unknown job, a job that has
# ended, a kind the job's mesh cannot take); the schedule is a function of the seed and the
# mesh (--dry-run twice gives the same faults and victims, another seed others, every listed
# kind appears when --faults is at least their number) and injects nothing; a coordinator
# fault kills the coordinator with SIGKILL and restarts it on its port the way `cluster up`
# does, the workers reattach and the job goes on (no recovery needed), --json reports it,
# with each fault's outcome; flip is refused on a job whose replicas are never compared.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_chaos_mechanics

"$moectl" chaos job-1 --dir "$tmp/nothing" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "no cluster directory: exit 2, naming it" '[ $rc -eq 2 ] && grep -q "no local cluster in $tmp/nothing" "$tmp/err"'
"$moectl" chaos job-1 --kinds kill,meteor >"$tmp/out" 2>"$tmp/err"
rc=$?
check "an unknown kind: exit 2, naming it" '[ $rc -eq 2 ] && grep -q "unknown fault kind .meteor." "$tmp/err"'
"$moectl" chaos >/dev/null 2>&1
check "no job: usage, exit 2" '[ $? -eq 2 ]'
"$moectl" chaos job-1 --faults 0 >/dev/null 2>"$tmp/err"
check "--faults 0: exit 2" '[ $? -eq 2 ] && grep -q -- "--faults" "$tmp/err"'

"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
"$moectl" chaos job-99 >/dev/null 2>"$tmp/err"
rc=$?
check "an unknown job: exit 2" '[ $rc -eq 2 ] && grep -q "NOT_FOUND" "$tmp/err"'

cat >"$tmp/long.yaml" <<YAML
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML
job=$("$moectl" submit "$tmp/long.yaml")
wait_until 30 '[ "$(step_of "$job")" -ge 3 ] 2>/dev/null'
check "a 2 x 2 job runs ($job)" '[ "$(state_of "$job")" = JOB_RUNNING ]'

# the schedule as "kind:pod.slot,pod.slot ..." (--dry-run --json: the summary of no fault injected)
schedule() { "$moectl" chaos "$job" --dry-run --json --seed "$1" --faults "$2" 2>/dev/null |
  json '" ".join("%s:%s" % (f["kind"], ",".join("%d.%d" % (v["pod"], v["slot"]) for v in f["victims"])) for f in d["faults"])'; }
a=$(schedule 11 8) b=$(schedule 11 8) c=$(schedule 12 8)
echo "     seed 11: $a"
echo "     seed 12: $c"
check "the same seed gives the same schedule" '[ -n "$a" ] && [ "$a" = "$b" ]'
check "another seed another one" '[ "$a" != "$c" ]'
for k in kill kill2 stop coordinator cut; do
  check "$k is in the schedule of 8 faults" '[[ " $a" == *" $k:"* ]]'
done
kill2_ok() { # every kill2 of seeds 11 and 12: two victims, different pods, different slots
  echo "$a $c" | tr " " "\n" | grep "^kill2:" | "$py" -c 'import sys
ok = True
for l in sys.stdin:
    vs = [tuple(map(int, v.split("."))) for v in l.strip().split(":")[1].split(",")]
    ok &= len(vs) == 2 and vs[0][0] != vs[1][0] and vs[0][1] != vs[1][1]
sys.exit(0 if ok else 1)'
}
check "kill2 victims are in different pods and different slot indices" kill2_ok
"$moectl" chaos "$job" --dry-run --seed 11 --faults 3 >"$tmp/dry.out" 2>&1
check "--dry-run prints the schedule, one line per fault" \
  '[ "$(grep -cE "^  [0-9]+ +(kill|kill2|stop|coordinator|cut) " "$tmp/dry.out")" = 3 ] && grep -q "3 faults from seed 11" "$tmp/dry.out"'
check "... and injects nothing" '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$("$moectl" status "$job" --json | json "d[\"job\"][\"epoch\"]")" = 1 ]'

# a coordinator fault: SIGKILL, restart on its port, the job goes on
gone() { [ ! -e "/proc/$1" ] || grep -qE '^[0-9]+ \(.*\) [ZX] ' "/proc/$1/stat"; } # zombies too
coord=$(cat "$cdir/coordinator.pid")
timeout 120 "$moectl" chaos "$job" --seed 3 --faults 2 --kinds coordinator --gap-steps 3 --timeout 60 --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
cat "$tmp/chaos.err" | sed 's/^/     /'
check "chaos --kinds coordinator --faults 2 exits 0" '[ $rc -eq 0 ]'
check "the coordinator was killed and restarted (pid $coord -> $(cat "$cdir/coordinator.pid"))" \
  '[ "$(cat "$cdir/coordinator.pid")" != "$coord" ] && gone "$coord"'
check "--json: 2 coordinator faults, both survived, the job RUNNING" \
  '[ "$(json "len(d[\"faults\"]) == 2 and all(f[\"kind\"] == \"coordinator\" and f[\"recovered\"] and f[\"recovered_unix_ms\"] >= f[\"injected_unix_ms\"] > 0 for f in d[\"faults\"]) and d[\"final_state\"] == \"RUNNING\" and d[\"ok\"]" <"$tmp/chaos.json")" = True ]'
check "... each accounted for: reattached (or a recovery), counted in the summary" \
  '[ "$(json "all(f[\"outcome\"] in (\"reattached\", \"recovered\", \"moved\", \"held\") and f[\"recovery\"] for f in d[\"faults\"]) and d[\"outcomes\"][\"not_survived\"] == 0 and sum(d[\"outcomes\"].values()) == 2" <"$tmp/chaos.json")" = True ]'
check "... and one line each says so" '[ "$(grep -cE "^fault [12]/2 (reattached|recovered|moved|held) after " "$tmp/chaos.err")" = 2 ] && grep -q "^chaos $job: 2 of 2 faults survived" "$tmp/chaos.err"'
step=$(step_of "$job")
wait_until 20 '[ "$(step_of "$job")" -gt "$step" ] 2>/dev/null'
check "the job trains on after the restarts" '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$(step_of "$job")" -gt "$step" ]'
"$moectl" status "$job" >"$tmp/status.out"
check "status shows the committed step and the recoveries" 'grep -qE "^  recovery  committed step [0-9]+, [0-9]+ recover" "$tmp/status.out"'

"$moectl" cancel "$job" >/dev/null
wait_until 20 '[ "$(state_of "$job")" = JOB_CANCELLED ]'
"$moectl" chaos "$job" >/dev/null 2>"$tmp/err"
rc=$?
check "a job that has ended: exit 2, saying so" '[ $rc -eq 2 ] && grep -q "is CANCELLED, not running" "$tmp/err"'

# a kind the mesh cannot take: kill2 on one pod
cat >"$tmp/one.yaml" <<YAML
mesh: {pods: 1, slots: 2, check_every: 0}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 8, eval_every: 0}
YAML
one=$("$moectl" submit "$tmp/one.yaml")
wait_until 30 '[ "$(state_of "$one")" = JOB_RUNNING ]'
"$moectl" chaos "$one" --kinds kill2 --dry-run >/dev/null 2>"$tmp/err"
rc=$?
check "kill2 on a 1-pod job: exit 2, saying why" '[ $rc -eq 2 ] && grep -q "at least 2 pods x 2 slots" "$tmp/err"'
"$moectl" chaos "$one" --kinds flip --dry-run >/dev/null 2>"$tmp/err"
rc=$?
check "flip on a job with mesh.check_every 0: exit 2, saying why" '[ $rc -eq 2 ] && grep -q "flip needs mesh.check_every" "$tmp/err"'
"$moectl" chaos "$one" --dry-run --faults 4 >"$tmp/dry1.out" 2>&1
check "... and the default kinds leave it out" '[ $? -eq 0 ] && ! grep -q " kill2 " "$tmp/dry1.out"'
"$moectl" cancel "$one" >/dev/null

cluster_test_finish
