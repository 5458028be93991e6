# Sourced by the tests that start local clusters (cli_cluster, cli_coordinator_restart,
# cli_worker_faults). `cluster_test_init NAME` makes the test's private directory ($tmp, with
# the cluster directory $cdir inside, which the client commands find through
# MOED_CLUSTER_DIR), and arms a cleanup that stops every cluster under $tmp and anything still
# running from it (a daemon whose pid file was lost), whatever way the test ends; a sanitizer
# report in any daemon's log then fails the test.
# Needs $moectl. Gives (with proc_lib.sh: check NAME CONDITION, wait_for, running, stop) json EXPR, wait_until SECONDS CONDITION,
# cluster_test_finish [JOB], chaos_kill_cut JOB SEED H, cancel_at_outer_step YAML H PERIODS,
# resume_same_model YAML JOB SET, reference_train YAML [LABEL] (reference_start YAML and
# reference_wait [LABEL]), state_of JOB, step_of JOB, running_from DIR (pids of processes whose command line names
# DIR/), check_same_model JOB RC, losses_of JOB (its stored per-step losses, "step loss"
# lines), start_fake_worker PBDIR (a worker under a stand-in coordinator), and $fails (the
# number of failed checks), sanitizer_reports LOG... (shows any sanitizer report; 1 if one).
py=/usr/bin/python3

cluster_test_init() {
  test_name=$1
  tmp=$(mktemp -d "/tmp/moe_$1.XXXXXX")
  cdir=$tmp/cluster
  trap cluster_test_cleanup EXIT
  unset MOED_COORDINATOR MOED_TOKEN MOED_TOKEN_FILE MOED_TLS_CA
  export MOED_CLUSTER_DIR=$cdir
  fails=0
}

cluster_test_cleanup() {
  local rc=$?
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null
  # the daemons' logs survive `cluster down` (not --purge): a sanitizer report in any of them
  # fails the test, whatever its checks said (the ASan build runs these tests too)
  for d in "$tmp"/*/; do "$moectl" cluster down --dir "${d%/}" >/dev/null 2>&1; done
  sanitizer_reports "$tmp"/*/*.log || rc=1
  for d in "$tmp"/*/; do "$moectl" cluster down --dir "${d%/}" --purge >/dev/null 2>&1; done
  for p in /proc/[0-9]*; do grep -qsaF -- "$tmp/" "$p/cmdline" && kill -9 "${p#/proc/}" 2>/dev/null; done
  rm -rf "$tmp"
  exit $rc
}

# reference_train YAML [LABEL]: the reference: `moectl train` of YAML in one process into
# $tmp/reference.safetensors (what check_same_model compares with), checked. reference_start
# YAML starts it in the background ($ref_pid) while the test sets up its cluster, and
# reference_wait [LABEL] waits for it and checks it (a failure shows its last lines).
reference_train() {
  reference_start "$1"
  reference_wait "${2:-}"
}
reference_start() {
  OMP_NUM_THREADS=1 "${moectl_bin:-$moectl}" train "$1" --quiet \
    --set run.output="$tmp/reference.safetensors" 2>"$tmp/train.err" &
  ref_pid=$!
}
reference_wait() {
  wait "$ref_pid"
  local rc=$?
  ref_pid=
  check "${1:-the reference: moectl train in one process}" \
    "[ $rc -eq 0 ] && [ -s '$tmp/reference.safetensors' ]"
  [ $rc -eq 0 ] || tail -n 5 "$tmp/train.err"
}
# chaos_kill_cut JOB SEED H: `moectl chaos` kills a worker of JOB and cuts a data-plane
# connection (--json into $tmp/chaos.json); both survived, the job ends with the reference's
# model, and every recovery returned to a multiple of H (an outer step)
chaos_kill_cut() {
  timeout 400 "$moectl" watch "$1" >"$tmp/watch.out" 2>&1 &
  watch_pid=$!
  timeout 300 "$moectl" chaos "$1" --seed "$2" --faults 2 --kinds kill,cut \
    --gap-steps 25 --timeout 60 --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
  local rc=$?
  sed 's/^/     /' "$tmp/chaos.err"
  check "moectl chaos exits 0: both faults survived" "[ $rc -eq 0 ]"
  check "a kill and a cut were injected" \
    '[ "$(json "sorted(f[\"kind\"] for f in d[\"faults\"] if f[\"injected\"])" <"$tmp/chaos.json")" = "['"'"'cut'"'"', '"'"'kill'"'"']" ]'
  wait "$watch_pid"
  rc=$?
  watch_pid=
  check_same_model "$1" $rc
  check "every recovery returned to an outer step" "recoveries_at_multiples $1 $3"
}
# cancel_at_outer_step YAML H PERIODS: a job of YAML cancelled once it committed PERIODS
# outer steps of H; its survivors export its state whole at an outer step. Sets $cjob.
cancel_at_outer_step() {
  local h=$2 at=$(($2 * $3)) estep
  cjob=$("$moectl" submit "$1")
  wait_until 90 '[ "$(committed_of "$cjob")" -ge $at ] 2>/dev/null'
  "$moectl" cancel "$cjob" >/dev/null
  wait_until 60 'export_done "$cjob"'
  estep=$(exported "$cjob" step)
  check "a cancelled job exports its state whole, at an outer step ($estep)" \
    '[ "$(exported "$cjob" complete)" = True ] && [ "$estep" -gt 0 ] && [ $((estep % h)) = 0 ]'
}
# resume_same_model YAML JOB SET: --resume-from JOB with `--set SET` (another mesh.sync or H) is
# refused naming mesh.sync; without it the resumed job ends with the reference's model
resume_same_model() {
  local out rjob
  out=$("$moectl" submit "$1" --resume-from "$2" --set "$3" 2>&1)
  check "--resume-from with $3 is refused naming mesh.sync" \
    '[[ "$out" == *"the spec'"'"'s mesh.sync"*"differs from the job'"'"'s"* ]]'
  rjob=$("$moectl" submit "$1" --resume-from "$2")
  timeout 300 "$moectl" watch "$rjob" >"$tmp/watch.out" 2>&1
  check_same_model "$rjob" $?
}
# cluster_test_finish [JOB]: the end of a test on the cluster $cdir: stops it and checks that
# nothing of it still runs; on a failed check, shows the tail of JOB's status and what the
# daemons' logs said besides INFO lines; prints the verdict and exits 0 or 1
cluster_test_finish() {
  [ $fails -gt 0 ] && [ -n "${1:-}" ] && "$moectl" status "$1" 2>&1 | tail -n 30
  "$moectl" cluster down --dir "$cdir" >/dev/null
  check "cluster down stopped everything" '[ -z "$(running_from "$cdir")" ]'
  if [ $fails -gt 0 ]; then
    for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 10; }; done
  fi
  [ $fails -eq 0 ] && echo "$test_name: all checks passed" || echo "$test_name: $fails checks failed"
  exit $((fails > 0))
}

# hosts_test_init NAME [NET]: a test on emulated hosts (tests/linkemu/hosts_lib.sh, sourced by
# the caller) on the /24 NET: $tmp, $fails, and a cleanup that stops every process of the hosts,
# removes them and fails the test on a sanitizer report in their logs ($tmp/h*/*.log; a killed
# reference training $ref_pid is stopped too). Where namespaces cannot be made: SKIP, exit 77.
hosts_test_init() {
  unset MOED_CLUSTER_DIR MOED_COORDINATOR MOED_TOKEN MOED_TOKEN_FILE MOED_TLS_CA
  tmp=$(mktemp -d "/tmp/moe_$1.XXXXXX")
  fails=0
  trap hosts_test_cleanup EXIT
  trap 'exit 143' INT TERM
  hosts_init "$tmp/hosts" ${2:+"$2"}
  if ! hosts_probe; then
    echo "SKIP $1: network namespaces cannot be created here: $hosts_why"
    exit 77
  fi
}

hosts_test_cleanup() {
  local rc=$?
  [ -n "${ref_pid:-}" ] && kill "$ref_pid" 2>/dev/null
  hosts_down
  sanitizer_reports "$tmp"/h*/*.log || rc=1
  rm -rf "$tmp"
  exit $rc
}

# hosts_test_tokens N: a client and a cluster token made in $tmp/h0 (the coordinator's host),
# the cluster token copied to $tmp/h1 .. $tmp/hN (the worker hosts); sets umask 077 for the
# rest of the test, so that what the daemons write there is private too
hosts_test_tokens() {
  local h
  umask 077
  mkdir -p "$tmp/h0"
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/h0/client.token"
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp/h0/cluster.token"
  for h in $(seq 1 "$1"); do mkdir -p "$tmp/h$h" && cp "$tmp/h0/cluster.token" "$tmp/h$h/"; done
}

# sanitizer_reports LOG...: shows each sanitizer report in the logs; 1 if there was one
sanitizer_reports() {
  local bad; bad=$(grep -lsE "ERROR: (Address|Leak|Thread)Sanitizer|runtime error:" "$@")
  [ -z "$bad" ] && return 0
  for f in $bad; do echo "FAIL sanitizer report in $f:"; grep -sE -A12 "Sanitizer|runtime error:" "$f" | head -n 40; done
  return 1
}
source "$(dirname "${BASH_SOURCE[0]}")/proc_lib.sh" # check, wait_for, running, stop
# json EXPR: evaluates a Python expression over the JSON document `d` read from stdin
json() { "$py" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_until() {
  local end=$((SECONDS + $1))
  until eval "$2"; do [ $SECONDS -ge $end ] && return 1; sleep 0.2; done
}
state_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["state"]'; }
step_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["step"]'; }
committed_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"].get("committed_step", 0)'; }
# a job's export manifest (docs/recovery.md, "Export and resume"): one field, and whether it ended
exported() { "$moectl" status "$1" --json 2>/dev/null | json "d['job'].get('exported', {}).get('$2', '')"; }
export_done() { [ -n "$("$moectl" status "$1" --json 2>/dev/null | json "d['job'].get('exported', {}) and not d['job']['exported'].get('in_progress') or ''")" ]; }
# every recovery of job $1 returned to a multiple of $2 (diloco: an outer step)
recoveries_at_multiples() { "$moectl" status "$1" --json | "$py" -c "import json,re,sys
ev=[e for e in json.load(sys.stdin)[\"events\"] if e[\"kind\"] == \"recovering\"]
steps=[int(m) for e in ev for m in re.findall(r\"returns to step (\d+)\", e[\"message\"])]
print(\"     recovery targets:\", steps)
sys.exit(0 if ev and len(steps) == len(ev) and all(s % $2 == 0 for s in steps) else 1)"; }
running_from() { for p in /proc/[0-9]*; do grep -qsaF -- "$1/" "$p/cmdline" && echo "${p#/proc/}"; done; }
# check_same_model JOB RC: the job SUCCEEDED (RC: the exit status of its `moectl watch`, whose
# output's tail, $tmp/watch.out, is shown when it is not 0) and the model it made is byte for
# byte $tmp/reference.safetensors (what `moectl train` made in one process)
check_same_model() {
  check "the job SUCCEEDS (watch exits 0)" "[ $2 -eq 0 ]"
  [ "$2" -eq 0 ] || tail -n 15 "$tmp/watch.out"
  "$moectl" fetch "$1" -o "$tmp/cluster.safetensors" >/dev/null 2>&1
  check "its model is byte for byte the reference" 'cmp "$tmp/cluster.safetensors" "$tmp/reference.safetensors"'
}
# every stored step of a job as "step loss" (the loss with all its digits, as Python prints it)
losses_of() { "$moectl" steps "$1" --json | "$py" -c 'import json,sys
for l in sys.stdin: d=json.loads(l); print(d["step"], repr(float(d["loss"])))'; }
# moectl train --json progress lines as "step loss"
train_losses() { "$py" -c 'import json,sys
for l in sys.stdin:
    d=json.loads(l)
    if d.get("event") == "step": print(d["step"], repr(float(d["loss"])))'; }
# start_fake_worker PBDIR: a real moed-worker registered with tests/fake_coordinator.py (PBDIR
# holds moed_pb2.py), so that a test can call its Worker service as its coordinator would,
# with the credential only a coordinator holds. Sets $fake_pid (the stand-in), $fake_worker
# (the worker), $fake_addr (its Worker service) and $fake_cred (the credential); returns 1
# when it did not register. Needs $cdir's cluster.token; the files are in $tmp/fake.
start_fake_worker() {
  local src=${MOE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
  mkdir -p "$tmp/fake"
  "$py" "$src/tests/fake_coordinator.py" "$1" "$cdir/cluster.token" "$tmp/fake/addr" \
    "$tmp/fake/cred" 2>"$tmp/fake/coordinator.log" &
  fake_pid=$!
  wait_until 30 '[ -s "$tmp/fake/addr" ]'
  "$(dirname "$moectl")/moed-worker" --coordinator "$(cat "$tmp/fake/addr")" \
    --cluster-token-file "$cdir/cluster.token" --threads 1 \
    --data-root /usr/share/common-licenses --dir "$tmp/fake/scratch" 2>"$tmp/fake/worker.log" &
  fake_worker=$!
  wait_until 30 '[ "$(wc -l <"$tmp/fake/cred" 2>/dev/null)" = 2 ]' || return 1
  fake_cred=$(sed -n 1p "$tmp/fake/cred")
  fake_addr=$(sed -n 2p "$tmp/fake/cred")
}
