#!/usr/bin/env bash
# bench_recovery.sh BIN_DIR [MB ...] — how long a job takes to train again after one of its
# workers is killed, against the classic path for the same state (a checkpoint on disk).
#
# For each slot-state size (default 100 and 1000 MB; a slot's state is its parameters, both
# AdamW moments and the expert biases: 12 bytes per parameter it holds), on a local cluster of
# real processes: 2 pods x 1 slot and 1 spare worker (`moectl cluster up ... --threads 1`),
# the smallest mesh that recovers a slot from another pod. A job of that size (C=256, L=2,
# E=8, top-2, dropless, d_ff chosen for the size; 2 x 64 tokens per step) runs a few steps,
# then the worker of slot (1, 0) is killed with SIGKILL and the time until the job trains again
# is split (docs/recovery.md) from the job's events and step reports:
#   detection     the kill -> the coordinator's "failure" event (its first fault signal: a
#                 survivor's ReportFault of the closed connection)
#   fence+rebind  fencing every worker, planning, storing the epoch, RunSlot(restore) accepted
#                 (the durations in the "recovered" event's text)
#   restore       RunSlot accepted -> every slot restored (the "recovered" event). Of it, from
#                 the new holder's ReportRestored (the coordinator's log): its setup (building
#                 its trainer: data, arenas, initialisation; joining the data plane) and its
#                 state transfer (bytes received / that time = MB/s). The event's own "state
#                 transfer" is the slowest slot's, and the source's includes waiting for the
#                 new holder's setup.
#   resume        restored -> the first step completed after it (its reported_unix_ms): one
#                 step of compute and whatever the restart of the step loop costs
#   restored      the kill -> every slot back at the step it returns to, ready to train
#   total         the kill -> that first new step
# The classic path in the same run, for the same state: bench_checkpoint writes the state to
# a file with fsync and reads it back cold (see its header), and the process restart is timed
# as `moectl cluster up` bringing every worker of the cluster back (all killed with SIGKILL)
# until each has registered. The comparison is kill -> ready to train on both sides, each
# paying the same detection: in-memory = "restored"; classic = detection + write + restart +
# setup + read, where setup is what the in-memory new holder paid to build its trainer without
# initialising it and join the data plane (its "connect": a restarted process must do the same
# before it can read its state into it and train). The ratio without that setup (the issue's
# definition: write, restart, read) is shown too. Left out on the classic side: the work lost
# since the last checkpoint; on both, the first step after. A last ratio compares only the
# state path: classic restart + read against in-memory fence+rebind + transfer.
# bench_checkpoint's own open time (last column) builds and initialises a trainer, which a
# restart that reads its state would not need; it is shown, not counted.
#
# Numbers are reported, never asserted. Everything runs under one temporary directory
# ($TMPDIR or /tmp), removed at the end with every process started from it.
set -u
bin=${1:?usage: bench_recovery.sh BIN_DIR [STATE_MB ...]}
shift
bin=$(cd "$bin" && pwd)
moectl=$bin/moectl
sizes=${*:-100 1000}
first_mb=${sizes%% *}
repeats=${BENCH_RECOVERY_REPEATS:-3} # kills of the first size (one of each other size)
py=/usr/bin/python3
corpus=/usr/share/common-licenses/GPL-3
# mesh.timeout_s of the jobs: the default. (It once had to be 10 s: the new holder built its
# trainer after joining the epoch's data plane, 4-7 s at 1 GB, and its source's send timed
# out; it now builds it first, without initialising the state it receives.)
timeout_s=${BENCH_RECOVERY_TIMEOUT_S:-2}
[ -x "$moectl" ] && [ -x "$bin/bench_checkpoint" ] || { echo "bench_recovery: no moectl or bench_checkpoint in $bin"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe_bench_recovery.XXXXXX")
unset MOED_COORDINATOR MOED_TOKEN MOED_TOKEN_FILE MOED_TLS_CA MOED_CLUSTER_DIR
export MOED_BIN_DIR=$bin
cleanup() {
  for d in "$tmp"/cluster-*/; do [ -d "$d" ] && "$moectl" cluster down --dir "${d%/}" >/dev/null 2>&1; done
  for p in /proc/[0-9]*; do grep -qsaF -- "$tmp/" "$p/cmdline" && kill -9 "${p#/proc/}" 2>/dev/null; done
  [ -n "${BENCH_RECOVERY_KEEP:-}" ] && echo "bench_recovery: kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

source "$(dirname "$0")/bench_lib.sh"
state_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["state"]'; }
step_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["step"]'; }
workers_json() { "$moectl" cluster status --json 2>/dev/null; }
has_event_after() { # JOB KIND MS: an event KIND at or after MS, or the job ended
  "$moectl" status "$1" --json 2>/dev/null | json "any(e['kind'] == '$2' and e['unix_ms'] >= $3 for e in d['events']) or d['job']['state'] in ('JOB_FAILED', 'JOB_CANCELLED', 'JOB_SUCCEEDED')"
}
step_after() { # JOB FROM MS: a step from FROM on reported after MS
  "$moectl" steps "$1" --from "$2" --json 2>/dev/null | "$py" -c "import json,sys
print(any(json.loads(l)['reported_unix_ms'] > $3 for l in sys.stdin if l.strip()))"
}
# d_ff for a slot state of MB megabytes at C=256, L=2, E=8, V=256 (12 bytes per parameter)
d_ff_for() { "$py" -c "
C, L, E, V = 256, 2, 8, 256
dense = V * C + L * (4 * C * C + E * C + 2 * C) + C
print(max(1, round(($1 * 1e6 / 12 - dense) / (L * E * 3 * C))))"; }

echo "bench_recovery: 2 pods x 1 slot + 1 spare, tcp, 1 thread per worker, mesh.timeout_s $timeout_s; $(nproc) cores," \
     "$(free -g | awk '/^Mem:/ {print $7}') GiB available; load $(cut -d' ' -f1-3 /proc/loadavg)"
rows=()
classic_rows=()
for mb in $sizes; do
  F=$(d_ff_for "$mb")
  spec=$tmp/job-$mb.yaml
  cat >"$spec" <<YAML
name: bench-recovery-$mb
mesh: {pods: 2, slots: 1, timeout_s: $timeout_s}
model: {d_model: 256, layers: 2, heads: 4, seq_len: 64, experts: 8, d_ff: $F}
router: {top_k: 2, dropless: true}
data: {sources: [{path: $corpus}]}
run: {steps: 1000000, batch_size: 2, eval_every: 0}
YAML
  echo
  echo "== slot state ~$mb MB (d_ff $F)"
  # a cluster per size (its logs stay until the end: BENCH_RECOVERY_KEEP=1 keeps them)
  cdir=$tmp/cluster-$mb
  export MOED_CLUSTER_DIR=$cdir
  if ! "$moectl" cluster up --pods 2 --slots 1 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1; then
    cat "$tmp/up.out"; rows+=("| $mb | cluster up failed |"); continue
  fi
  job=$("$moectl" submit "$spec") || { rows+=("| $mb | submit failed |"); "$moectl" cluster down --dir "$cdir" >/dev/null; continue; }
  if ! wait_until 300 '[ "$(step_of "$job")" -ge 6 ] 2>/dev/null'; then
    echo "   the job did not reach step 6: $(state_of "$job")"; rows+=("| $mb | job did not start |")
    "$moectl" cluster down --dir "$cdir" >/dev/null; continue
  fi
  # repeats of the kill for detection's spread: each round restarts the killed process (it
  # joins as the new spare) and kills the worker now playing slot (1, 0)
  n_rounds=$([ "$mb" = "$first_mb" ] && echo "$repeats" || echo 1)
  for round in $(seq 1 "$n_rounds"); do
    label=$mb; [ "$n_rounds" -gt 1 ] && label="$mb (#$round)"
    if [ "$round" -gt 1 ]; then
      "$moectl" cluster up --dir "$cdir" >/dev/null 2>&1
      # shellcheck disable=SC2034 # read by wait_until's condition
      s0=$(step_of "$job")
      wait_until 120 '[ "$(step_of "$job")" -ge $((s0 + 3)) ] && [ "$(workers_json | json "sum(w[\"state\"] == \"WORKER_IDLE\" for w in d[\"workers\"])")" -ge 1 ]' ||
        { echo "   round $round: the job did not go on or no spare came back"; break; }
    fi
    victim=$("$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == (1, 0)][0]")
    vpid=$(workers_json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$victim'][0]")
    before=$(step_of "$job")
    t_kill=$(now_ms)
    kill -9 "$vpid"
    echo "   killed $victim (pid $vpid, slot (1, 0)) at step $before"
    ok=1
    if ! wait_until 300 'has_event_after "$job" recovered "$t_kill" | grep -q True'; then
      echo "   no \"recovered\" event within 300 s"; ok=0
    elif [ "$(state_of "$job")" != JOB_RUNNING ]; then
      echo "   the job ended: $(state_of "$job"): $("$moectl" status "$job" --json | json 'd["job"]["error"]')"; ok=0
    fi
    from=$((before > 10 ? before - 10 : 1))
    if [ $ok = 1 ]; then
      # shellcheck disable=SC2034 # read by wait_until's condition
      t_rec=$("$moectl" status "$job" --json | json "[e['unix_ms'] for e in d['events'] if e['kind'] == 'recovered' and e['unix_ms'] >= $t_kill][0]")
      wait_until 120 'step_after "$job" "$from" "$t_rec" | grep -q True' || { echo "   no step after the recovery within 120 s"; ok=0; }
    fi
    "$moectl" status "$job" --json >"$tmp/status.json"
    "$moectl" steps "$job" --from "$from" --json >"$tmp/steps.json"
    # the split, from the events after the kill, the coordinator's log of each slot's
    # ReportRestored, and the first step reported after "recovered"
    row=$("$py" - "$tmp/status.json" "$tmp/steps.json" "$t_kill" "$label" "$ok" "$cdir/coordinator.log" "$job" "$tmp/total" <<'PY'
import json, re, sys
st = json.load(open(sys.argv[1])); kill = int(sys.argv[3]); mb = sys.argv[4]; ok = sys.argv[5] == "1"
log, job, total_file = sys.argv[6], sys.argv[7], sys.argv[8]
open(total_file, "w").write("nan nan nan nan nan nan")
steps = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
ev = [e for e in st["events"] if e["unix_ms"] >= kill]
for e in ev: print("   %+7d ms  %-12s %s" % (e["unix_ms"] - kill, e["kind"], e["message"]), file=sys.stderr)
first = lambda kinds: next((e for e in ev if e["kind"] in kinds), None)
fail, rec = first(("failure",)), first(("recovered",))
if not ok or not fail or not rec:
    print("| %s | did not recover |" % mb); sys.exit(0)
text = rec["message"]
def num(pat, scale=1.0):
    m = re.search(pat, text)
    return float(m.group(1)) * scale if m else float("nan")
# detection is timed from the lost worker's last sign of life; the first signal's offset from
# that leaves the coordinator's own part: first signal -> first fence round
gap = num(r"detection (\d+) ms") - num(r"first signal at ([+-]\d+) ms")
fencing = num(r"fencing (\d+) ms")
waiting = num(r"waiting for a spare (\d+) ms")
rebind = num(r"rebinding (\d+) ms")
detect = fail["unix_ms"] - kill
fence_rebind = gap + fencing + waiting + rebind
restore = rec["unix_ms"] - fail["unix_ms"] - fence_rebind
# the new holder's report (the slot that received the state): its setup (trainer and data
# plane) and its transfer. The recovered event's "state transfer" is the slowest slot's, and
# a source's includes waiting for the new holder's setup.
setup = transfer = moved = float("nan")
pat = re.compile(re.escape(job) + r": slot \(\d+, \d+\) on \S+ restored at step \d+ \(connect ([\d.]+) s, "
                 r"transfer ([\d.]+) s, (\d+) bytes in")
import datetime
def log_ms(line): # "2026-12-01T09:38:46.518Z ..." (UTC)
    try:
        t = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        return 0
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
for line in open(log, errors="replace"):
    m = pat.search(line)
    if m and log_ms(line) >= kill and (moved != moved or int(m.group(3)) > moved):
        setup, transfer, moved = float(m.group(1)) * 1e3, float(m.group(2)) * 1e3, int(m.group(3))
after = sorted((s for s in steps if s["reported_unix_ms"] > rec["unix_ms"]), key=lambda s: s["reported_unix_ms"])
pre = sorted(s["seconds"] for s in steps if s["reported_unix_ms"] < kill)
step_ms = 1e3 * pre[len(pre) // 2] if pre else float("nan")
if not after:
    print("| %s | recovered, no step after it |" % mb); sys.exit(0)
resume = after[0]["reported_unix_ms"] - rec["unix_ms"]
total = after[0]["reported_unix_ms"] - kill
restored = rec["unix_ms"] - kill
open(total_file, "w").write("%d %.0f %.0f %d %.0f %.0f" % (total, fence_rebind, transfer, restored,
                                                          detect, setup))
rate = moved / 1e6 / (transfer / 1e3) if transfer > 0 else float("nan")
print("   back at step %s, first new step %d; a step took %.0f ms before the kill" %
      (re.search(r"back at step (\d+)", text).group(1), after[0]["step"], step_ms), file=sys.stderr)
print("| %s | %.0f | %.0f | %.0f | %.0f | %.0f (%.0f MB at %.0f MB/s) | %d | %.0f | %.0f | %.0f |" %
      (mb, detect, fence_rebind, restore, setup, transfer, moved / 1e6, rate, restored, resume,
       step_ms, total))
PY
  )
    rows+=("$row")
    cat "$tmp/total" >>"$tmp/totals-$mb"; echo >>"$tmp/totals-$mb"
    [ $ok = 1 ] || break
  done
  read -r total_ms mem_fence_ms mem_transfer_ms restored_ms detect_ms setup_ms <<<"$("$py" -c "
import statistics as st
rows = [l.split() for l in open('$tmp/totals-$mb') if l.strip()]
print(' '.join('%.0f' % st.median(float(r[i]) for r in rows) for i in range(6)))")"
  "$moectl" cancel "$job" >/dev/null 2>&1
  wait_until 60 '[ "$(state_of "$job")" != JOB_RUNNING ]'
  wait_until 60 '[ "$(workers_json | json "sum(w[\"state\"] == \"WORKER_BUSY\" for w in d[\"workers\"])")" = 0 ]'

  # ---- the classic path: disk write (fsync) and read of the same state, process restart ----
  mkdir -p "$tmp/ckpt"
  OMP_NUM_THREADS=1 "$bin/bench_checkpoint" "$spec" "$tmp/ckpt" >"$tmp/ckpt.out" 2>&1
  sed 's/^/   /' "$tmp/ckpt.out"
  kv() { grep -o " $1=[^ ]*" "$tmp/ckpt.out" | head -n1 | cut -d= -f2; }
  w_ms=$(kv write_ms); r_ms=$(kv read_cold_ms); open_ms=$(kv open_ms)
  # every worker of the cluster dies (the one killed above is dead already); `cluster up`
  # starts them again and returns once each has registered with the coordinator
  pids=$(workers_json | json "' '.join(str(w['pid']) for w in d['workers'] if w['state'] != 'WORKER_DEAD')")
  kill -9 $pids
  for p in $pids; do wait_until 10 "[ ! -e /proc/$p ] || grep -qs '^State:.*Z' /proc/$p/status"; done
  t0=$(now_ms)
  "$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1 || { echo "   cluster up (restart) failed:"; cat "$tmp/up2.out"; }
  restart_ms=$(( $(now_ms) - t0 ))
  echo "   restart: \`moectl cluster up\` brought back $(grep -c '^  worker .*pid' "$tmp/up2.out") workers, registered, in $restart_ms ms"
  sed "s/^/     /" "$tmp/up2.out" | head -n 8
  classic_rows+=("$("$py" -c "
f = lambda v: float(v) if v else float('nan')
w, s, r, o = f('${w_ms:-}'), $restart_ms, f('${r_ms:-}'), f('${open_ms:-}')
mf, mt = f('${mem_fence_ms:-}'), f('${mem_transfer_ms:-}')
t, d, u = f('${restored_ms:-}'), f('${detect_ms:-}'), f('${setup_ms:-}')
c = d + w + s + u + r
print('| $mb | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.1fx | %.1fx | %.0f | %.0f | %.1fx | %.0f |' %
      (d, w, s, u, r, c, t, c / t, (c - u) / t, s + r, mf + mt, (s + r) / (mf + mt), o))")")
  "$moectl" cluster down --dir "$cdir" >/dev/null 2>&1
done

echo
echo "in-memory recovery (ms; kill -9 of slot (1, 0)'s worker):"
echo "| state MB | detection | fence+rebind | restore | of which new slot's setup | of which transfer | kill -> restored | resume (first step) | a step before | kill -> first new step |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "kill -> ready to train (ms, medians): classic = detection + checkpoint write with fsync + process restart"
echo "+ the new holder's setup (trainer, data plane) + cold read, in-memory = kill -> restored; state path:"
echo "classic restart + read, in-memory fence+rebind + transfer"
echo "| state MB | detection | write + fsync | restart | setup | read | classic | in-memory | classic / in-memory | without the setup | classic state path | in-memory state path | ratio | bench_checkpoint's open with init (not counted) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${classic_rows[@]}"
