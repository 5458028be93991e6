#!/usr/bin/env bash
# A slot doubled up on a survivor moves onto a spare once one is there (docs/recovery.md,
# "Moving a doubled slot"). Twice: a 2 x 2 job (the slot's state comes from the other pod) and
# a 1 x 4 job with mesh.replicas 2 (from its buddy), each on exactly 4 workers. The worker of
# slot index 2 is killed with SIGKILL and, with no spare, a survivor plays that slot too, on
# its second data listener. The killed worker is started again (`moectl cluster up`), registers idle, and the
# coordinator moves the slot onto it: events "rebalance", "moving", "moved", one recovery
# counted, no worker playing two slots at the end. The job SUCCEEDS with the model
# `moectl train` makes in one process for the same spec, byte for byte. Last, a 2 x 2 job with
# mesh.move_to_spare: false keeps its doubled slot while the restarted worker stays idle.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_move_to_spare

# one scenario: a P x S mesh (P * S = 4) in its own cluster directory; MOVE: mesh.move_to_spare
scenario() {
  P=$1 S=$2 MOVE=${3:-true}
  cdir=$tmp/cluster-${P}x$S-$MOVE
  export MOED_CLUSTER_DIR=$cdir
  echo "== $P x $S, move_to_spare $MOVE"
  "$moectl" cluster up --pods $P --slots $S --spares 0 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
  rc=$?
  check "cluster up --pods $P --slots $S --spares 0: 4 workers" '[ $rc -eq 0 ]'
  [ $rc -eq 0 ] || { cat "$tmp/up.out"; return 1; }

  cat >"$tmp/move.yaml" <<YAML
name: move-to-spare
mesh: {pods: $P, slots: $S, replicas: 2, spare_wait_s: 20, move_to_spare: $MOVE}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 3000, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
  if [ "$MOVE" = true ]; then
    reference_train "$tmp/move.yaml"
  fi

  job=$("$moectl" submit "$tmp/move.yaml")
  check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
  wait_until 60 '[ "$(step_of "$job")" -ge 20 ] 2>/dev/null'
  check "the job trains (step $(step_of "$job"))" '[ "$(step_of "$job")" -ge 20 ]'

  # the binding as "worker_id ..." in slot order, and the pid of a worker
  bindings() { "$moectl" status "$job" --json | json '" ".join(b["worker_id"] for b in d["job"]["bindings"])'; }
  pid_of() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
  events() { "$moectl" status "$job" --json | json '" ".join(e["kind"] for e in d["events"])'; }
  distinct() { tr ' ' '\n' | sort -u | wc -l; }

  read -r -a before <<<"$(bindings)"
  victim=${before[2]} # slot index 2: (1, 0) of 2 x 2, (0, 2) of 1 x 4
  vpid=$(pid_of "$victim")
  check "slot index 2 is on $victim (pid $vpid)" '[ -n "$vpid" ] && kill -0 "$vpid"'
  kill -9 "$vpid"
  wait_until 60 '[[ " $(events) " == *" recovered "* ]]'
  check "the kill is recovered" '[[ " $(events) " == *" recovered "* ]]'
  doubled=$(bindings)
  check "with no spare, a survivor plays that slot too: 3 workers for 4 slots ($doubled)" \
    '[ "$(distinct <<<"$doubled")" = 3 ] && [[ " $doubled " != *" $victim "* ]]'
  check "the job still RUNNING after the recovery" '[ "$(state_of "$job")" = JOB_RUNNING ]'

  "$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
  check "cluster up starts the killed worker again" '[ $? -eq 0 ]'
  if [ "$MOVE" = false ]; then
    idle() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }
    wait_until 30 '[ "$(idle)" = 1 ]'
    check "the restarted worker is idle" '[ "$(idle)" = 1 ]'
    s0=$(step_of "$job")
    wait_until 60 '[ "$(step_of "$job")" -ge $((s0 + 100)) ] 2>/dev/null'
    check "the job trains on, 100 steps past the idle worker's arrival ($s0 -> $(step_of "$job"))" \
      '[ "$(step_of "$job")" -ge $((s0 + 100)) ]'
    still=$(bindings)
    check "move_to_spare false: no move ($(events)), the slot stays doubled ($still), the worker idle" \
      '[[ " $(events) " != *" rebalance "* ]] && [ "$(distinct <<<"$still")" = 3 ] && [ "$(idle)" = 1 ]'
    moves=$("$moectl" status "$job" --json | json 'd["job"].get("moves", 0)')
    check "no move counted ($moves)" '[ "$moves" = 0 ]'
    "$moectl" cancel "$job" >/dev/null
    "$moectl" cluster down --dir "$cdir" >/dev/null
    check "cluster down stopped everything" '[ -z "$(running_from "$cdir")" ]'
    return
  fi
  wait_until 60 '[[ " $(events) " == *" moved "* ]] || [ "$(state_of "$job")" != JOB_RUNNING ]'
  in_order() { # KIND...: each one's first event comes after the one before
    "$moectl" status "$job" --json | json "[k for e in d['events'] for k in [e['kind']] if k in '$*'.split()] [:$#] == '$*'.split()"; }
  check "the doubled slot moves onto the new idle worker: recovered, rebalance, moving, moved ($(events))" \
    '[ "$(in_order recovered rebalance moving moved)" = True ]'
  after=$(bindings)
  check "every slot on its own worker again ($after)" '[ "$(distinct <<<"$after")" = 4 ]'
  "$moectl" status "$job" >"$tmp/status.out"
  check "status shows the move" 'grep -q "moved" "$tmp/status.out" && grep -q "1 recovery, 1 move$" "$tmp/status.out"'

  timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
  rc=$?
  check_same_model "$job" $rc
  recoveries=$("$moectl" status "$job" --json | json 'd["job"]["recoveries"]')
  check "one recovery counted: a move is not one ($recoveries)" '[ "$recoveries" = 1 ]'
  moves=$("$moectl" status "$job" --json | json 'd["job"]["moves"]')
  check "one move counted ($moves)" '[ "$moves" = 1 ]'

  [ $fails -gt 0 ] && "$moectl" status "$job" 2>&1 | tail -n 30
  "$moectl" cluster down --dir "$cdir" >/dev/null
  check "cluster down stopped everything" '[ -z "$(running_from "$cdir")" ]'
  if [ $fails -gt 0 ]; then
    for f in "$cdir"/*.log; do [ -f "$f" ] && { echo "== $f"; grep -v " INFO " "$f" | tail -n 10; }; done
  fi
}

scenario 2 2
scenario 1 4
scenario 2 2 false
[ $fails -eq 0 ] && echo "cli_move_to_spare: all checks passed" || echo "cli_move_to_spare: $fails checks failed"
exit $((fails > 0))
