#!/usr/bin/env bash
# A job with a learned vocabulary on a local cluster is the same computation as in one
# process: a tokenizer trained on the corpus, the corpus's tokens prepared once and a larger
# teacher on the same tokens (all read by the workers beneath their data roots, like the
# sources), a 2 x 2 job distils from it; one of its
# workers is killed with SIGKILL mid-job; the job recovers onto the spare and SUCCEEDS with the
# model `moectl train` makes in one process, byte for byte (tokenizer included), and the stored
# loss of every step is the in-process loss; steps and status report bits per byte of text. A
# tokenizer outside the workers' data roots fails a job at once, naming the field.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_mesh_tokenizer
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
slot_worker() { "$moectl" status "$1" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($2, $3)][0]"; }
events() { "$moectl" status "$1" --json | json '"\n".join(e["kind"] + ": " + e["message"] for e in d["events"])'; }
export OMP_NUM_THREADS=1
mkdir -p "$tmp/data"

"$moectl" tokenizer train "$corpus" --vocab 500 -o "$tmp/data/tok.model" >/dev/null
check "a tokenizer of 500 pieces" '[ -s "$tmp/data/tok.model" ]'
cat >"$tmp/job.yaml" <<YAML
name: mesh-tokenizer
mesh: {pods: 2, slots: 2, spare_wait_s: 60}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.1, tokenizer: $tmp/data/tok.model, prepared: $tmp/data/prep}
run: {steps: 400, batch_size: 8, log_every: 1, eval_every: 200, eval_batches: 2}
YAML
"$moectl" data prepare "$tmp/job.yaml" -o "$tmp/data/prep" >/dev/null 2>&1
check "its tokens prepared" '[ -s "$tmp/data/prep/index.json" ]'
# a larger teacher on the same tokens, which the job distils from (issue 20: tokenizer and
# teacher together)
"$moectl" train "$tmp/job.yaml" --quiet --set model.d_model=48 --set model.d_ff=96 \
  --set run.steps=60 --set run.eval_every=0 --set run.output="$tmp/data/teacher.safetensors" 2>/dev/null
check "a teacher (d_model 48) trained on the same tokenizer" '[ -s "$tmp/data/teacher.safetensors" ]'
echo "distill: {teacher: $tmp/data/teacher.safetensors, alpha: 0.5, temperature: 2}" >>"$tmp/job.yaml"
"$moectl" train "$tmp/job.yaml" --json --set run.output="$tmp/reference.safetensors" 2>"$tmp/train.err" |
  train_losses >"$tmp/local.loss"
check "the reference: moectl train in one process" '[ -s "$tmp/reference.safetensors" ] && [ "$(wc -l <"$tmp/local.loss")" = 400 ]'

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --data-root /usr/share \
  --data-root "$tmp/data" --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
job=$("$moectl" submit "$tmp/job.yaml")
wait_until 120 '[ "$(committed_of "$job")" -ge 30 ] 2>/dev/null'
check "the 2 x 2 job trains ($job, committed step $(committed_of "$job"))" \
  '[ "$(state_of "$job")" = JOB_RUNNING ] && [ "$(committed_of "$job")" -ge 30 ]' ||
  { "$moectl" status "$job" 2>&1 | tail -n 20; exit 1; }
victim=$(slot_worker "$job" 1 0)
kill -9 "$(worker_pid "$victim")"
echo "     killed $victim (slot (1, 0)) at step $(step_of "$job")"
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
rc=$?
check "the job recovered" 'events "$job" | grep -q "^recovered: "'
check_same_model "$job" $rc
losses_of "$job" >"$tmp/cluster.loss"
check "the stored loss of every step equals the in-process loss" 'diff "$tmp/cluster.loss" "$tmp/local.loss" >/dev/null'
"$moectl" steps "$job" --json >"$tmp/steps.json"
check "every stored step distilled: its KL part to the teacher > 0" \
  '"$py" -c "import json,sys; m = [json.loads(l) for l in open(sys.argv[1])]; sys.exit(not (len(m) == 400 and all(d.get(\"kl\", 0) > 0 for d in m)))" "$tmp/steps.json"'
check "every stored step has bits per byte below bits per token, and evaluations held-out bits per byte" \
  '"$py" -c "import json,sys,math
m = [json.loads(l) for l in open(sys.argv[1])]
sys.exit(not (all(0 < d[\"bits_per_byte\"] < d[\"ce\"] / math.log(2) for d in m) and
              any(d.get(\"val_bits_per_byte\", 0) > 0 for d in m)))" "$tmp/steps.json"'
"$moectl" status "$job" >"$tmp/status.out"
check "status shows the loss in bits per byte" 'grep -q "bits/byte" "$tmp/status.out"'
"$moectl" eval "$tmp/cluster.safetensors" "$corpus" --max-windows 4 >"$tmp/eval.out" 2>&1
check "the fetched model evaluates with the tokenizer it carries" 'grep -q "bits/byte" "$tmp/eval.out"'

# a tokenizer the workers may not read (outside their data roots): the job fails at once, one
# reason naming the field
cp "$tmp/data/tok.model" "$tmp/outside.model"
bad=$("$moectl" submit "$tmp/job.yaml" --set data.tokenizer="$tmp/outside.model" --set data.prepared=)
wait_until 60 '[ "$(state_of "$bad")" = JOB_FAILED ]'
err=$("$moectl" status "$bad" --json | json 'd["job"]["error"]')
echo "     reason: $err"
check "a tokenizer outside the data roots fails the job naming data.tokenizer" \
  '[ "$(state_of "$bad")" = JOB_FAILED ] && [[ "$err" == *"data.tokenizer '"'"'$tmp/outside.model'"'"' is outside the worker"* ]]'

[ $fails -eq 0 ] && echo "cli_mesh_tokenizer: all checks passed" || echo "cli_mesh_tokenizer: $fails checks failed"
exit $((fails > 0))
