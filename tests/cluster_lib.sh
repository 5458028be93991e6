# Sourced by the tests that start local clusters (cli_cluster, cli_coordinator_restart,
# cli_worker_faults). `cluster_test_init NAME` makes the test's private directory ($tmp, with
# the cluster directory $cdir inside, which the client commands find through
# MOED_CLUSTER_DIR), and arms a cleanup that stops every cluster under $tmp and anything still
# running from it (a daemon whose pid file was lost), whatever way the test ends.
# Needs $moectl. Gives: check NAME CONDITION, json EXPR, wait_until SECONDS CONDITION,
# state_of JOB, step_of JOB, and $fails (the number of failed checks).
py=/usr/bin/python3

cluster_test_init() {
  tmp=$(mktemp -d "/tmp/moe_$1.XXXXXX")
  cdir=$tmp/cluster
  trap cluster_test_cleanup EXIT
  unset MOED_COORDINATOR MOED_TOKEN MOED_TOKEN_FILE MOED_TLS_CA
  export MOED_CLUSTER_DIR=$cdir
  fails=0
}

cluster_test_cleanup() {
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null
  for d in "$tmp"/*/; do "$moectl" cluster down --dir "${d%/}" --purge >/dev/null 2>&1; done
  for p in /proc/[0-9]*; do grep -qsaF -- "$tmp/" "$p/cmdline" && kill -9 "${p#/proc/}" 2>/dev/null; done
  rm -rf "$tmp"
}

check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }
# json EXPR: evaluates a Python expression over the JSON document `d` read from stdin
json() { "$py" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_until() {
  local end=$((SECONDS + $1))
  until eval "$2"; do [ $SECONDS -ge $end ] && return 1; sleep 0.2; done
}
state_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["state"]'; }
step_of() { "$moectl" status "$1" --json 2>/dev/null | json 'd["job"]["step"]'; }
