# proc_lib.sh — sourced by the shell tests that start daemons by hand (not through `moectl
# cluster up`): the check counter, polling a condition, and stopping a process by pid.
# cluster_lib.sh builds on it.

fails=0
# check NAME CONDITION: prints "ok   NAME" or "FAIL NAME" (and counts it)
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }

# wait_for SECONDS CONDITION: polls the condition every 50 ms; 1 if it never held
wait_for() {
  local n=$(($1 * 20))
  for _ in $(seq 1 $n); do eval "$2" && return 0; sleep 0.05; done
  return 1
}

# running PID: alive and not a zombie waiting for us (kill -0 succeeds on zombies)
running() {
  local s
  s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)
  [ -n "$s" ] && [ "$s" != Z ]
}

# stop PID [SECONDS]: SIGTERM, SIGKILL if it lingers past SECONDS (default 5); $rc gets its
# exit status. An empty PID is nothing to stop.
stop() {
  rc=
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 1 $((${2:-5} * 20))); do running "$1" || break; sleep 0.05; done
  running "$1" && { echo "note: pid $1 ignored SIGTERM, killing it"; kill -KILL "$1" 2>/dev/null; }
  wait "$1" 2>/dev/null
  rc=$?
}
