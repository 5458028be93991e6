#!/usr/bin/env bash
# Distillation and starting from a model (docs/model.md, "Distillation", "Starting from a
# model"). A teacher (d_model 48) is trained with `moectl train`; a smaller student (d_model 32)
# distils from it as a 2-pod x 2-slot job:
#   - `moectl train` (every shard in one process) reports the KL part beside the CE part, and
#     its loss is (1 - alpha) ce + alpha T^2 kl + the router terms;
#   - the same job on a local cluster of 2 x 2 workers and a spare, with one worker killed
#     (kill -9) while it trains, recovers and SUCCEEDS with the model `moectl train` made, byte
#     for byte (every slot reads the whole teacher beneath its data roots, a new holder reads it
#     again); the stored steps carry the KL part;
#   - run.init_from: a 2 x 2 job starting from the distilled student (fresh optimizer) is byte
#     for byte `moectl train` with the same init_from, and starts at the loss the student had
#     reached, far below a fresh start's;
#   - bad input gets one line and no output: a teacher with another vocabulary, a missing
#     teacher, an init_from of another shape (naming the tensor and both shapes); on the
#     cluster, a missing teacher and one outside the data roots fail the job at once, naming
#     the field, and every daemon keeps serving.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_distill
data=$tmp/data
mkdir -p "$data" "$tmp/outside"
export OMP_NUM_THREADS=1

cat >"$tmp/teacher.yaml" <<YAML
name: teacher
model: {d_model: 48, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 96}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 40, batch_size: 8, eval_every: 0}
YAML
"$moectl" train "$tmp/teacher.yaml" --quiet --set run.output="$data/teacher.safetensors" 2>"$tmp/teacher.err"
check "the teacher: moectl train" '[ -s "$data/teacher.safetensors" ]'

cat >"$tmp/student.yaml" <<YAML
name: student
mesh: {pods: 2, slots: 2, spare_wait_s: 30}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 1200, batch_size: 8, log_every: 100, eval_every: 0}
distill: {teacher: $data/teacher.safetensors, alpha: 0.7, temperature: 2}
YAML
"$moectl" train "$tmp/student.yaml" --json --set run.output="$tmp/reference.safetensors" \
  >"$tmp/student.jsonl" 2>"$tmp/student.err"
check "the distilled student: moectl train playing the 2 x 2 mesh" '[ -s "$tmp/reference.safetensors" ]'
check "every step reports a KL part > 0 beside the CE part, and loss = 0.3 ce + 0.7 * 4 kl + router terms" \
  '"$py" -c "import json,sys
st = [d for d in map(json.loads, open(\"$tmp/student.jsonl\")) if d.get(\"event\") == \"step\"]
ok = len(st) >= 12 and all(d[\"kl\"] > 0 for d in st)
# the router terms: aux (coef 0.01) and z (0.001); ce, aux, kl and z are printed to 6 decimals
ok = ok and all(abs(d[\"loss\"] - (0.3 * d[\"ce\"] + 2.8 * d[\"kl\"] + 0.01 * d[\"aux\"] + 0.001 * d[\"z\"])) < 2e-5 for d in st)
print(\"     kl: step 1 %.4f, step 1200 %.4f; ce %.4f -> %.4f\" % (st[0][\"kl\"], st[-1][\"kl\"], st[0][\"ce\"], st[-1][\"ce\"]))
sys.exit(0 if ok and st[-1][\"kl\"] < st[0][\"kl\"] else 1)"'

# ---- bad input to moectl train: one line, exit 2, no output ----
bad() { # NAME EXPECTED-WORDS... -- moectl train arguments
  local name=$1; shift
  local words=()
  while [ "$1" != -- ]; do words+=("$1"); shift; done
  shift
  rm -f "$tmp/bad.safetensors"
  "$moectl" train "$@" --quiet --set run.output="$tmp/bad.safetensors" >"$tmp/bad.out" 2>"$tmp/bad.err"
  local rc=$?
  grep -v " cli INFO " "$tmp/bad.err" >"$tmp/bad.msg" # the log's line about the data read
  echo "     $name: $(cat "$tmp/bad.msg")"
  local has=1
  for w in "${words[@]}"; do grep -qF -- "$w" "$tmp/bad.msg" || has=0; done
  check "$name: exit 2, one line naming it, no model" \
    '[ $rc -eq 2 ] && [ "$(wc -l <"$tmp/bad.msg")" = 1 ] && [ $has = 1 ] && [ ! -e "$tmp/bad.safetensors" ]'
}
"$moectl" train "$tmp/teacher.yaml" --quiet --set model.vocab=300 --set run.steps=1 \
  --set run.output="$data/vocab300.safetensors" 2>/dev/null
bad "a teacher with another vocabulary" "distill.teacher" "vocabulary is 300" "(model.vocab) 256" -- \
  "$tmp/student.yaml" --set distill.teacher="$data/vocab300.safetensors"
bad "a missing teacher" "distill.teacher '$data/nope.safetensors'" "No such file" -- \
  "$tmp/student.yaml" --set distill.teacher="$data/nope.safetensors"
bad "an init_from of another shape" "run.init_from" "'tok_embedding.weight'" "is [256, 48]" "expected [256, 32]" -- \
  "$tmp/student.yaml" --set distill.teacher= --set run.init_from="$data/teacher.safetensors"
bad "an init_from with more layers" "run.init_from" "'blocks.1." "not in a model of this spec" -- \
  "$tmp/teacher.yaml" --set model.layers=1 --set run.init_from="$data/teacher.safetensors"

# ---- the 2 x 2 job on a cluster, a worker killed ----
"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --data-root "$data" \
  --data-root /usr/share/common-licenses --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1, data roots $data and the licences" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
pids() { "$moectl" cluster status --json | json '" ".join(str(w["pid"]) for w in d["workers"])'; }
daemons="$(cat "$cdir/coordinator.pid") $(pids)"

job=$("$moectl" submit "$tmp/student.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 90 '[ "$(step_of "$job")" -ge 30 ] 2>/dev/null'
slot_worker() { "$moectl" status "$job" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($1, $2)][0]"; }
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
victim=$(worker_pid "$(slot_worker 1 1)")
kill -9 "$victim"
echo "     killed the worker of slot (1, 1) (pid $victim) at step $(step_of "$job")"
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check "the kill was recovered" '[ "$("$moectl" status "$job" --json | json "d[\"job\"][\"recoveries\"]")" -ge 1 ]'
check_same_model "$job" $rc
kl_steps() { "$moectl" steps "$1" --json | "$py" -c 'import json,sys
print(sum(1 for l in sys.stdin if float(json.loads(l).get("kl", 0)) > 0))'; }
check "the stored steps carry the KL part" '[ "$(kl_steps "$job")" -ge 1000 ]'

# ---- init_from: a fresh optimizer from the distilled student, mesh = in-process ----
cp "$tmp/reference.safetensors" "$data/student.safetensors"
from=(--set distill.teacher= --set run.init_from="$data/student.safetensors" --set run.steps=30 --set run.log_every=1)
"$moectl" train "$tmp/student.yaml" "${from[@]}" --json --set run.output="$tmp/reference-init.safetensors" \
  2>"$tmp/init.err" | train_losses >"$tmp/init.loss"
"$moectl" train "$tmp/student.yaml" --set distill.teacher= --set run.steps=30 --set run.log_every=1 \
  --json --set run.output="$tmp/fresh.safetensors" 2>/dev/null | train_losses >"$tmp/fresh.loss"
first_init=$(head -n 1 "$tmp/init.loss" | cut -d' ' -f2) first_fresh=$(head -n 1 "$tmp/fresh.loss" | cut -d' ' -f2)
echo "     step 1 loss: from the student $first_init, from the seed $first_fresh"
check "init_from starts where the student was: step 1's loss far below a fresh start's" \
  '"$py" -c "import sys; sys.exit(0 if float(\"$first_init\") < float(\"$first_fresh\") - 1 else 1)"'
job2=$("$moectl" submit "$tmp/student.yaml" "${from[@]}")
timeout 120 "$moectl" watch "$job2" >"$tmp/watch.out" 2>&1
rc=$?
cp "$tmp/reference-init.safetensors" "$tmp/reference.safetensors"
check_same_model "$job2" $rc
losses_of "$job2" >"$tmp/init-cluster.loss"
check "... and every step's loss equals the in-process one" 'diff -q "$tmp/init.loss" "$tmp/init-cluster.loss" >/dev/null'

# ---- bad input on the cluster: the job fails at once, naming the field; daemons unharmed ----
cp "$data/teacher.safetensors" "$tmp/outside/teacher.safetensors"
for case in "missing:$data/nope.safetensors:No such file" \
            "outside:$tmp/outside/teacher.safetensors:outside the worker's data roots" \
            "vocab:$data/vocab300.safetensors:vocabulary is 300"; do
  IFS=: read -r what path words <<<"$case"
  j=$("$moectl" submit "$tmp/student.yaml" --set distill.teacher="$path" 2>/dev/null)
  wait_until 60 '[ "$(state_of "$j")" = JOB_FAILED ]'
  err=$("$moectl" status "$j" --json | json 'd["job"]["error"]')
  echo "     $what: $err"
  check "teacher $what: the job FAILS naming distill.teacher ($words)" \
    '[ "$(state_of "$j")" = JOB_FAILED ] && [[ "$err" == *"distill.teacher"* && "$err" == *"$words"* ]]'
done
check "every daemon still runs ($daemons)" \
  'for p in $daemons; do [ "$p" = "$victim" ] || kill -0 "$p" || exit 1; done'
check "... and serves: a last small job succeeds" \
  'j=$("$moectl" submit "$tmp/student.yaml" --set run.steps=5) && timeout 120 "$moectl" watch "$j" >/dev/null 2>&1'

cluster_test_finish
