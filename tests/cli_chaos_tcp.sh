#!/usr/bin/env bash
# Recovery under chaos, tcp backend (docs/recovery.md). A 2-pod x 2-slot job on a cluster of
# 2 x 2 workers and 1 spare goes through `moectl chaos --seed 4 --faults 6`: two simultaneous
# kill -9 in different pods and slots, a SIGSTOP until the coordinator fences the worker, the
# coordinator killed and restarted, cut data-plane connections, a single kill; killed workers
# come back as spares. Every fault is recovered, the job SUCCEEDS, and its model is byte for
# byte the model `moectl train` makes in one process for the same spec (the logical mesh and
# the data order never change). The committed step, sampled all along, never goes down; the
# job counts at least one recovery per fault that needed one; `moectl watch` shows the
# failure and recovery events.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_chaos_tcp

"$moectl" cluster up --pods 2 --slots 2 --spares 1 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 1: 5 workers" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }

cat >"$tmp/chaos.yaml" <<YAML
name: chaos-tcp
mesh: {pods: 2, slots: 2, spare_wait_s: 20}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 2500, batch_size: 8, log_every: 1000, eval_every: 0}
YAML
reference_train "$tmp/chaos.yaml"

job=$("$moectl" submit "$tmp/chaos.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
# the committed step as the Status service shows it, all along (the loop ends with the test)
( while kill -0 $$ 2>/dev/null && [ -d "$tmp" ]; do
    "$moectl" status "$job" --json 2>/dev/null >>"$tmp/samples.jsonl"; sleep 0.2
  done ) &
timeout 400 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1 &
watch_pid=$!

timeout 300 "$moectl" chaos "$job" --seed 4 --faults 6 --kinds kill,kill2,stop,coordinator,cut \
  --gap-steps 20 --timeout 60 --json >"$tmp/chaos.json" 2>"$tmp/chaos.err"
rc=$?
sed 's/^/     /' "$tmp/chaos.err"
check "moectl chaos exits 0: every fault recovered" '[ $rc -eq 0 ]'
faults() { json "$1" <"$tmp/chaos.json" 2>/dev/null; }
check "6 faults injected and recovered" \
  '[ "$(faults "sum(f[\"injected\"] and f[\"recovered\"] for f in d[\"faults\"])")" = 6 ]'
check "... among them kill2 (different pods, different slots), stop, coordinator, cut, kill" \
  '[ "$(faults "{f[\"kind\"] for f in d[\"faults\"]} == {\"kill\", \"kill2\", \"stop\", \"coordinator\", \"cut\"} and all(len({v[\"pod\"] for v in f[\"victims\"]}) == 2 and len({v[\"slot\"] for v in f[\"victims\"]}) == 2 for f in d[\"faults\"] if f[\"kind\"] == \"kill2\")")" = True ]'
check "every recovery is later than its fault" \
  '[ "$(faults "all(f[\"recovered_unix_ms\"] >= f[\"injected_unix_ms\"] > 0 for f in d[\"faults\"])")" = True ]'

wait "$watch_pid"
rc=$?
watch_pid=
check_same_model "$job" $rc

"$moectl" status "$job" --json >"$tmp/final.json"
needed=$(faults 'sum(f["kind"] != "coordinator" for f in d["faults"])')
recoveries=$(json 'd["job"]["recoveries"]' <"$tmp/final.json")
check "recoveries: $recoveries, at least one per fault that needed one (${needed:-?}) and at least 5" \
  '[ -n "$needed" ] && [ "$recoveries" -ge "$needed" ] && [ "$recoveries" -ge 5 ]'
monotonic() { "$py" -c 'import json,sys
vals = []
for l in open(sys.argv[1]):
    try: vals.append(int(json.loads(l)["job"].get("committed_step", 0)))
    except (ValueError, KeyError): pass
print(len(vals), "samples,", min(vals or [0]), "..", max(vals or [0]), file=sys.stderr)
sys.exit(0 if len(vals) > 10 and all(a <= b for a, b in zip(vals, vals[1:])) and vals[-1] > 0 else 1)' "$1"; }
check "committed_step sampled during the run never went down" 'monotonic "$tmp/samples.jsonl"'
check "... nor in what chaos saw" \
  '[ "$(faults "not d[\"committed_step_decreased\"] and len(d[\"committed_steps\"]) > 1")" = True ]'
check "watch showed failure and recovery events" \
  'grep -q " failure " "$tmp/watch.out" && grep -q " recovered " "$tmp/watch.out"'
check "the killed workers came back: 5 alive" \
  '[ "$("$moectl" cluster status --json | json "sum(w[\"state\"] in (\"WORKER_IDLE\", \"WORKER_BUSY\") for w in d[\"workers\"])")" -ge 5 ]'

cluster_test_finish "$job"
