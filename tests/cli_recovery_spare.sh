#!/usr/bin/env bash
# A spare prepares the arenas of the slot a recovery may give it (worker/daemon/spare.c,
# docs/recovery.md "Where a recovery's time goes"). A 2 x 1 job with two spares, on a cluster
# whose workers may hold MOED_SPARE_ARENA_MB=20 prepared: the slot's arenas are ~7 MB each,
# so each idle spare maps and faults in 2 of the 4 it could use (the cap), and its resident
# memory shows them. Then the worker of slot (1, 0) is killed with SIGKILL: the survivor
# reports its closed connection at once (its peer watcher, or the operation it waited in), the spare
# becomes the new holder and takes the 2 prepared arenas, the state lands in them, and the job
# SUCCEEDS with the model `moectl train` makes in one process, byte for byte. The other
# spare, once the job has ended, is told there is nothing to stand by for and releases its
# arenas.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_recovery_spare
cap_mb=20

MOED_SPARE_ARENA_MB=$cap_mb "$moectl" cluster up --pods 2 --slots 1 --spares 2 --threads 1 \
  --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 1 --spares 2 (--spare-arena-mb $cap_mb)" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/job.yaml" <<YAML
name: recovery-spare
mesh: {pods: 2, slots: 1, spare_wait_s: 30, timeout_s: 10}
model: {d_model: 128, layers: 2, heads: 4, seq_len: 32, experts: 4, d_ff: 512}
router: {top_k: 2}
data: {sources: [{path: $corpus}]}
run: {steps: 600, batch_size: 2, log_every: 100, eval_every: 0}
YAML
reference_train "$tmp/job.yaml"

worker_field() { "$moectl" cluster status --json | json "[w['$2'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
idle_workers() { "$moectl" cluster status --json | json "' '.join(w['worker_id'] for w in d['workers'] if w['state'] == 'WORKER_IDLE')"; }
log_of() { # the log of the worker with pid $1
  local f; for f in "$cdir"/worker-*.pid; do [ "$(cat "$f")" = "$1" ] && echo "${f%.pid}.log"; done; }
# resident_arenas PID MB: how many arenas of MB megabytes (rounded as the log rounds) its
# wholly resident mappings hold: the prepared arenas, faulted in before any use
resident_arenas() { "$py" - "$1" "$2" <<'PY'
import re, sys
pid, mb = sys.argv[1], float(sys.argv[2])
n, size = 0, None
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
    if m:
        size = int(m.group(2), 16) - int(m.group(1), 16)
    elif line.startswith("Rss:") and mb > 0:
        k = round(size / 1e6 / mb) # the kernel merges neighbouring arenas into one mapping
        if k >= 1 and abs(size / 1e6 - k * mb) < 0.051 * k and int(line.split()[1]) * 1024 >= size:
            n += k
print(n)
PY
}

job=$("$moectl" submit "$tmp/job.yaml")
wait_until 60 '[ "$(step_of "$job")" -ge 2 ] 2>/dev/null'
spares=$(idle_workers)
check "the job trains and two spares stand by ($spares)" '[ "$(wc -w <<<"$spares")" -eq 2 ]' ||
  { "$moectl" cluster status; exit 1; }
logs=()
for s in $spares; do logs+=("$(log_of "$(worker_field "$s" pid)")"); done
prepared() { grep -q "spare: .* prepared for a slot of $job" "$1"; }
# an idle spare hears of the job at its next idle heartbeat (every 5 s by default)
wait_until 30 'prepared "${logs[0]}" && prepared "${logs[1]}"'
i=0
for s in $spares; do
  pid=$(worker_field "$s" pid)
  line=$(grep "spare: .* prepared for a slot of $job" "${logs[$i]}" | tail -n 1)
  echo "     $s: ${line#* INFO }"
  n=$(sed -n 's/.*spare: \([0-9]*\) arenas of \([0-9.]*\) MB.*/\1/p' <<<"$line")
  mb=$(sed -n 's/.*spare: \([0-9]*\) arenas of \([0-9.]*\) MB.*/\2/p' <<<"$line")
  want=$("$py" -c "print(min(4, int($cap_mb / $mb)) if $mb > 0 else -1)" 2>/dev/null)
  check "$s prepared as many arenas as the cap allows ($n of ${mb:-?} MB; cap $cap_mb MB: $want)" \
    '[ -n "$n" ] && [ "$n" = "$want" ] && [ "$n" -ge 1 ]'
  res=$(resident_arenas "$pid" "${mb:-0}")
  check "... and they are resident ($res arenas of $mb MB wholly in memory)" '[ "$res" = "$n" ]'
  i=$((i + 1))
done
check "the job still runs (the spares were in time)" '[ "$(state_of "$job")" = JOB_RUNNING ]'

victim=$("$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == (1, 0)][0]")
vpid=$(worker_field "$victim" pid)
kill -9 "$vpid"
echo "     killed $victim (pid $vpid, slot (1, 0)) at step $(step_of "$job")"
events() { "$moectl" status "$1" --json | json '"\n".join(e["kind"] + ": " + e["message"] for e in d["events"])'; }
wait_until 60 '[[ "$(events "$job")" == *"recovered: "* ]] || [ "$(state_of "$job")" != JOB_RUNNING ]'
events "$job" >"$tmp/events.txt"
check "the job recovered" 'grep -q "^recovered: " "$tmp/events.txt"'
# the survivor's peer watcher (the closed connection, or before it the exiting process), or
# its own operation when it was waiting in one for the dead peer (a read or write then meets
# the reset connection)
check "the fault was reported as the dead peer's exit" \
  'grep "^failure: " "$tmp/events.txt" | head -n 1 |
     grep -Eq "rank 1 (closed its connection|is exiting)|reading rank 1.s buffer failed: process gone|connection to rank 1 broke while (receiving|sending): Connection reset by peer"'
holder=$("$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == (1, 0)][0]")
other=$(tr ' ' '\n' <<<"$spares" | grep -vx "$holder")
holder_log=${logs[0]} other_log=${logs[1]}
[ "$holder" = "${spares%% *}" ] || holder_log=${logs[1]} other_log=${logs[0]}
check "a spare ($holder) took over slot (1, 0) and its $n prepared arenas" \
  '[[ " $spares " == *" $holder "* ]] && grep -q "$job: slot (1, 0) took $n arenas prepared while it stood by" "$holder_log"'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check_same_model "$job" $rc
wait_until 30 'grep -q "spare: released .* (no job to stand by for)" "$other_log"'
check "the other spare ($other) released its arenas once the job ended" \
  'grep -q "spare: released .* (no job to stand by for)" "$other_log"'

[ $fails -gt 0 ] && cat "$tmp/events.txt"
cluster_test_finish
