#!/usr/bin/env bash
# Data paths are the workers' business, and status shows how each slot pair talks, on a real
# local cluster of 2 pods x 2 workers whose data root is $tmp/data:
#  - `moectl submit` of a path missing on this machine prints a one-line note and submits;
#  - a path inside the root that is missing, an empty file or an empty directory fails the job
#    at once at RunSlot; one whose problem only loading shows (a directory of binary files, a
#    file shorter than a sequence) fails it at once from the slot's thread: either way the
#    error names the field, the path and the worker's host, the job was bound once and never
#    recovered (no "failure"/"recovering" events, 0 recoveries), and the workers are IDLE again;
#  - the file present on three workers' disks and missing on the fourth's (its data root
#    replaced before it restarted, as another host's disk would be) fails the job at once,
#    naming that worker;
#  - a good job's `moectl status --json` lists every peer of every slot with transport "shm"
#    (one host) and the human form says so; with MOE_COMM_SHM=0 the same job's pairs are
#    "tcp"; both models are byte for byte `moectl train`'s;
#  - after the coordinator is killed (SIGKILL) and restarted, a running job lists its links
#    again (the coordinator does not store them: the slots send them again once they
#    re-register).
set -u
moectl=$1
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_data_links
corpus=/usr/share/common-licenses/GPL-3
data=$tmp/data
host=$(hostname)

mkdir -p "$data/emptydir" "$data/bindir"
cp "$corpus" "$data/corpus.txt"
: >"$data/empty.txt"
printf 'a\0b' >"$data/bindir/x.bin"
echo short >"$data/short.txt"
up() {
  "$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" --data-root "$data" \
    >"$tmp/up.out" 2>&1 || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
}
up
idle_count() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }

cat >"$tmp/mesh.yaml" <<YAML
name: links
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $data/corpus.txt}]}
run: {steps: 8, batch_size: 8, log_every: 1}
YAML

# a job that must fail at once: FAILED within 30 s, bound once, never recovered; prints its error
fails_at_once() { # LABEL JOB
  local fjob=$2 # (the conditions are evaluated inside wait_until and check: not $2 there)
  wait_until 30 '[ "$(state_of "$fjob")" = JOB_FAILED ]'
  check "$1: the job FAILS" '[ "$(state_of "$fjob")" = JOB_FAILED ]'
  "$moectl" status "$fjob" --json >"$tmp/st.json"
  err=$(json 'd["job"]["error"]' <"$tmp/st.json")
  echo "     error: $err"
  # "running" may come or not: every slot may accept RunSlot before one fails loading
  local kinds; kinds=$(json '" ".join(e["kind"] for e in d["events"] if e["kind"] != "running")' <"$tmp/st.json")
  check "$1: bound once, no recovery (events: $kinds)" \
    '[ "$kinds" = "submitted scheduled failed" ] && [ "$(json "d[\"job\"][\"recoveries\"]" <"$tmp/st.json")" = 0 ]'
  check "$1: all 4 workers are IDLE again within 15 s" 'wait_until 15 "[ \"\$(idle_count)\" = 4 ]"'
}

for case in "missing.txt:No such file or directory" "empty.txt:empty" \
            "emptydir:an empty directory" "bindir:no text files" \
            "short.txt:training part has 6 bytes"; do
  name=${case%%:*} want=${case#*:}
  job=$("$moectl" submit "$tmp/mesh.yaml" --set "data.sources.0.path=$data/$name" 2>"$tmp/submit.err")
  check "$name: submitted" '[ -n "$job" ]'
  [ -n "$job" ] || { cat "$tmp/submit.err"; continue; }
  if [ "$name" = missing.txt ]; then
    check "missing here: one note, naming the field and the path" \
      '[ "$(wc -l <"$tmp/submit.err")" = 1 ] && grep -q "note: data.sources.0.path $data/missing.txt is not on this machine; the workers will check it" "$tmp/submit.err"'
  fi
  fails_at_once "$name" "$job"
  check "$name: the error names the field, the path, what is wrong and the host" \
    '[[ "$err" == *"data.sources[0].path '"'$data/$name'"'"* && "$err" == *"$want"* && "$err" == *"(on host $host)"* ]]'
done
check "a device here is still refused at submit" \
  '! "$moectl" submit "$tmp/mesh.yaml" --set data.sources.0.path=/dev/null 2>"$tmp/dev.err" && grep -q "not a file or a directory" "$tmp/dev.err"'

# ---- a good job: the pairs of one host share memory ----
(cd "$tmp" && OMP_NUM_THREADS=1 "$moectl" train "$tmp/mesh.yaml" --quiet \
  --set run.output="$tmp/reference.safetensors" 2>"$tmp/train.err")
check "moectl train made the reference" '[ -s "$tmp/reference.safetensors" ] || { cat "$tmp/train.err"; false; }'
links_are() { # JOB TRANSPORT: every slot lists its 3 peers, each with TRANSPORT
  "$moectl" status "$1" --json | json 'all(sorted((l["pod"], l["slot"]) for l in s["links"]) == sorted((p, q) for p in range(2) for q in range(2) if (p, q) != (s["pod"], s["slot"])) and all(l["transport"] == "'"$2"'" for l in s["links"]) for s in d["slots"])'
}
job=$("$moectl" submit "$tmp/mesh.yaml")
wait_until 60 '[ "$(links_are "$job" shm)" = True ] || [ "$(state_of "$job")" = JOB_SUCCEEDED ]'
"$moectl" status "$job" >"$tmp/status.txt"
timeout 120 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check_same_model "$job" $?
check "shm: every slot lists its 3 peers, all \"shm\"" '[ "$(links_are "$job" shm)" = True ]'
check "shm: moectl status says it in words" \
  'grep -q "links     (0, 0) shm within pod 0, shm to pod 1" "$tmp/status.txt" && grep -q "(1, 1) shm to pod 0, shm within pod 1" "$tmp/status.txt"'

# ---- the file on three workers' disks, not on the fourth's ----
# Each worker holds its data root open from its start: the three that stay keep the old
# directory (the corpus in it) after it is renamed; the fourth, restarted, opens the new one.
victim_pid=$(cat "$cdir/worker-3.pid")
victim_id=$("$moectl" cluster status --json | json '[w["worker_id"] for w in d["workers"] if w["pid"] == '"$victim_pid"'][0]')
kill -TERM "$victim_pid"
wait_until 30 '! kill -0 "$victim_pid" 2>/dev/null'
gone() { "$moectl" cluster status --json | json '[w["state"] for w in d["workers"] if w["worker_id"] == "'"$victim_id"'"][0] in ("WORKER_LEFT", "WORKER_DEAD")'; }
wait_until 30 '[ "$(gone)" = True ]'
mv "$data" "$tmp/data-held"
mkdir "$data"
up
new_id=$("$moectl" cluster status --json | json '[w["worker_id"] for w in d["workers"] if w["pid"] == '"$(cat "$cdir/worker-3.pid")"'][0]')
check "worker-3 restarted as a new worker" '[ -n "$new_id" ] && [ "$new_id" != "$victim_id" ]'
job=$("$moectl" submit "$tmp/mesh.yaml" 2>"$tmp/submit.err")
check "submitted (the corpus is not on this machine now: a note)" '[ -n "$job" ] && grep -q "not on this machine" "$tmp/submit.err"'
fails_at_once "one worker lacks it" "$job"
check "the error names the worker that lacks it, the path and its host" \
  '[[ "$err" == *"worker $new_id could not start it"*"No such file or directory (on host $host)"* ]]'
rmdir "$data"
mv "$tmp/data-held" "$data"

# ---- MOE_COMM_SHM=0: the same pairs over tcp ----
"$moectl" cluster down --dir "$cdir" >/dev/null 2>&1
MOE_COMM_SHM=0 up
job=$("$moectl" submit "$tmp/mesh.yaml")
wait_until 60 '[ "$(links_are "$job" tcp)" = True ] || [ "$(state_of "$job")" = JOB_SUCCEEDED ]'
timeout 120 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check_same_model "$job" $?
check "MOE_COMM_SHM=0: every slot lists its 3 peers, all \"tcp\"" '[ "$(links_are "$job" tcp)" = True ]'

# ---- a restarted coordinator keeps no links: the slots send them again ----
job=$("$moectl" submit "$tmp/mesh.yaml" --set run.steps=1000000 --set run.eval_every=0)
wait_until 60 '[ "$(links_are "$job" tcp)" = True ]'
check "a long job lists its links" '[ "$(links_are "$job" tcp)" = True ]'
coord_pid=$(cat "$cdir/coordinator.pid")
kill -9 "$coord_pid"
wait_until 10 '! kill -0 "$coord_pid" 2>/dev/null'
up
step0=$(step_of "$job")
wait_until 60 '[ "$(links_are "$job" tcp)" = True ]'
check "after the coordinator's restart, the same job lists them again (step $step0 -> $(step_of "$job"))" \
  '[ "$(links_are "$job" tcp)" = True ] && [ "$(state_of "$job")" = JOB_RUNNING ]'
"$moectl" cancel "$job" >/dev/null

if [ $fails -ne 0 ]; then
  echo "--- coordinator.log"; tail -n 30 "$cdir/coordinator.log"
  exit 1
fi
echo "all checks passed"
