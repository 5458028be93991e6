#!/usr/bin/env bash
# A chaos soak (docs/operations.md, "Chaos testing"): a 2-pod x 2-slot job on 2 x 2 workers and
# 1 spare goes through `moectl chaos --faults $faults` of every kind in $kinds, from a fixed
# seed, each fault as soon as the job has survived the one before (so faults land during moves
# a kill2's doubled slot makes once the killed workers are back, during reattachment, ...).
# Every fault is accounted for by what the job did about it (recovered, moved, reattached,
# repaired or held, read from its event history), an outcome its kind allows; the accounts
# agree with the coordinator's counters; the job SUCCEEDS with the model `moectl train` makes
# in one process, byte for byte; the committed step never goes down.
# Flips land anywhere, also in the state a recovery or a move has just restored (repaired
# against the hash the pods agreed on for that step before the fault). Then a second run of
# kills and flips (CHAOS_SOAK_FLIPS faults, CHAOS_SOAK_FLIP_KINDS): each flip is repaired by
# replay and accounted for as `repaired`, and a worker wrong twice is drained.
# CHAOS_SOAK_FAULTS, CHAOS_SOAK_SEED, CHAOS_SOAK_KINDS and CHAOS_SOAK_STEPS change the run,
# CHAOS_SOAK_KEEP=DIR keeps chaos's output (chaos.*, flips.*) and the cluster's logs there
# (a 100-fault soak: CHAOS_SOAK_FAULTS=100 CHAOS_SOAK_STEPS=20000). A fault costs the job up to
# ~150 steps on an idle machine (the polls between faults, the workers' run-ahead while the
# coordinator restarts), fewer under load: run.steps leaves room for all of them.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_chaos_soak

faults=${CHAOS_SOAK_FAULTS:-30}
seed=${CHAOS_SOAK_SEED:-5}
kinds=${CHAOS_SOAK_KINDS:-kill,kill2,stop,coordinator,cut,flip}
# then a run of flips and kills (CHAOS_SOAK_FLIP_KINDS empty: none): the coordinator repairs
# what the replicas' every-step check finds (mesh.check_every 1, the default)
flip_kinds=${CHAOS_SOAK_FLIP_KINDS-kill,flip}
flips=${CHAOS_SOAK_FLIPS:-8}
steps=${CHAOS_SOAK_STEPS:-9000}
limit=$(((faults + flips) * 20 + 100)) # seconds for the chaos runs

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1: 5 workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }

cat >"$tmp/soak.yaml" <<YAML
name: chaos-soak
mesh: {pods: 2, slots: 2, spare_wait_s: 20, check_every: 1}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: $steps, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
reference_train "$tmp/soak.yaml" "the reference: moectl train in one process ($steps steps)"

job=$("$moectl" submit "$tmp/soak.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
timeout $((limit + 300)) "$moectl" watch "$job" >"$tmp/watch.out" 2>&1 &
watch_pid=$!

# soak NAME KINDS FAULTS SEED: one `moectl chaos` run on the job, and what must hold of it;
# its output in $tmp/NAME.err and $tmp/NAME.json
soak() {
  local name=$1 kinds=$2 faults=$3 seed=$4 start=$SECONDS
  timeout $((faults * 20 + 100)) "$moectl" chaos "$job" --seed "$seed" --faults "$faults" \
    --kinds "$kinds" --gap-steps 10 --timeout 60 --json >"$tmp/$name.json" 2>"$tmp/$name.err"
  rc=$?
  grep -E "^(fault|chaos|  )" "$tmp/$name.err" | grep -vE "^fault [0-9]+/[0-9]+ at step|: stop: SIGSTOP" | sed 's/^/     /'
  echo "     (chaos took $((SECONDS - start)) s)"
  check "$name: moectl chaos --faults $faults --kinds $kinds exits 0: every fault survived" '[ $rc -eq 0 ]'
  [ $rc -eq 0 ] || tail -n 25 "$tmp/$name.err"
  faults_json() { json "$1" <"$tmp/$name.json" 2>/dev/null; }
  check "$name: $faults faults injected, each judged survived with an outcome" \
    '[ "$(faults_json "sum(f[\"injected\"] and f[\"recovered\"] and f[\"outcome\"] != \"none\" and f[\"recovery\"] != \"\" for f in d[\"faults\"])")" = "$faults" ]'
  check "$name: every kind of $kinds was injected" \
    '[ "$(faults_json "sorted({f[\"kind\"] for f in d[\"faults\"]}) == sorted(\"$kinds\".split(\",\"))")" = True ]'
  check "$name: each outcome is one its kind allows (a kill is never held)" \
    '[ "$(faults_json "all(f[\"outcome\"] in $allowed[f[\"kind\"]] for f in d[\"faults\"])")" = True ]'
  check "$name: the summary's outcomes add up to the faults" \
    '[ "$(faults_json "sum(d[\"outcomes\"].values()) == len(d[\"faults\"]) and d[\"outcomes\"][\"not_survived\"] == 0")" = True ]'
  check "$name: each account lies in its fault's window of events" \
    '[ "$(faults_json "all(f[\"seq\"] <= f[\"settled_seq\"] and (f[\"first_seq\"] < 0 or f[\"seq\"] <= f[\"first_seq\"] <= f[\"last_seq\"] < f[\"settled_seq\"]) for f in d[\"faults\"])")" = True ]'
  check "$name: one line per fault says how it was accounted for" \
    '[ "$(grep -c "^fault [0-9]*/$faults .* after " "$tmp/$name.err")" = "$faults" ]'
  check "$name: committed step never went down in what chaos saw" \
    '[ "$(faults_json "not d[\"committed_step_decreased\"] and len(d[\"committed_steps\"]) > 1")" = True ]'
  # a recovery accounted to two faults is one of the job's
  local n
  n=$(faults_json 'sum(f["outcome"] == "recovered" and not (f["shared_with"] and f["shared_with"] < f["index"]) for f in d["faults"])')
  distinct=$((distinct + ${n:-0}))
  n=$(faults_json 'sum(f["kind"] in ("kill", "kill2") and not (f["shared_with"] and f["shared_with"] < f["index"]) for f in d["faults"])')
  kills=$((kills + ${n:-0}))
}
allowed='{"kill": {"recovered", "moved"}, "kill2": {"recovered", "moved"}, "stop": {"recovered", "moved", "held"}, "cut": {"recovered", "moved", "held"}, "coordinator": {"reattached", "recovered", "moved", "held"}, "flip": {"repaired", "recovered"}}'
distinct=0
kills=0
soak chaos "$kinds" "$faults" "$seed"
# then flips and kills only: more flips per fault, so that one worker is wrong twice
[ -n "$flip_kinds" ] && soak flips "$flip_kinds" "$flips" $((seed + 1))

wait "$watch_pid"
rc=$?
watch_pid=
check_same_model "$job" $rc

"$moectl" status "$job" --json >"$tmp/final.json"
recoveries=$(json 'd["job"]["recoveries"]' <"$tmp/final.json")
moves=$(json 'd["job"].get("moves", 0)' <"$tmp/final.json")
check "the job counts a recovery for every fault accounted as recovered ($recoveries >= $distinct)" \
  '[ "$recoveries" -ge "$distinct" ]'
check "... and a recovery or move for every kill ($recoveries + $moves >= $kills)" \
  '[ $((recoveries + moves)) -ge "$kills" ]'

[ $fails -gt 0 ] && "$moectl" status "$job" 2>&1 | tail -n 30
[ -n "${CHAOS_SOAK_KEEP:-}" ] && cp "$tmp"/*.err "$tmp"/*.json "$cdir"/*.log "$CHAOS_SOAK_KEEP"/
cluster_test_finish
