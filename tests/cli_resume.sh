#!/usr/bin/env bash
# Resuming is exact: a run stopped with --stop-at, and a run interrupted by SIGINT (Ctrl-C),
# each continued with --resume, write the same model file, byte for byte, as a run that was
# never interrupted. A resume against another model's spec is refused.
set -u
moectl=$1
dir=$(mktemp -d /tmp/moe_cli_resume.XXXXXX)
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
pid=
fails=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }

cat >"$dir/job.yaml" <<YAML
model: {d_model: 32, layers: 2, heads: 4, seq_len: 32, experts: 4, d_ff: 48}
router: {bias_balancing: true}
data: {sources: [{path: /usr/share/games/fortunes/fortunes}]}
run: {steps: 40, batch_size: 4, eval_every: 0, log_every: 1}
YAML
m() { echo "--set run.output=$dir/$1.safetensors"; }

"$moectl" train "$dir/job.yaml" $(m full) --quiet 2>/dev/null
check "uninterrupted run writes a model" '[ -s "$dir/full.safetensors" ]'

"$moectl" train "$dir/job.yaml" $(m stopped) --stop-at 15 --state-out "$dir/s15" --quiet 2>/dev/null
check "--stop-at exits 0" '[ $? -eq 0 ]'
check "--stop-at writes state but no model" '[ -s "$dir/s15" ] && [ ! -e "$dir/stopped.safetensors" ]'
"$moectl" train "$dir/job.yaml" $(m resumed) --resume "$dir/s15" --quiet 2>/dev/null
check "stopped at 15 and resumed = uninterrupted" 'cmp -s "$dir/full.safetensors" "$dir/resumed.safetensors"'

# Ctrl-C in the middle of a long run: the state it leaves, resumed to step 200, equals the
# state of a run that went to step 200 without interruption
long="--set run.steps=100000"
"$moectl" train "$dir/job.yaml" $long $(m ref) --stop-at 200 --state-out "$dir/ref200" --quiet 2>/dev/null
"$moectl" train "$dir/job.yaml" $long $(m intr) --json --state-out "$dir/sint" >"$dir/intr.jsonl" 2>/dev/null &
pid=$!
for _ in $(seq 1 400); do
  [ "$(grep -c '"event":"step"' "$dir/intr.jsonl" 2>/dev/null)" -ge 3 ] && break
  sleep 0.05
done
kill -INT $pid
wait $pid
rc=$?
check "interrupted run exits 1" '[ $rc -eq 1 ]'
check "interrupted run reports its state" 'grep -q "\"event\":\"state\",\"reason\":\"interrupted\"" "$dir/intr.jsonl"'
check "interrupted run writes no model" '[ ! -e "$dir/intr.safetensors" ]'
k=$(sed -nE 's/.*"reason":"interrupted","step":([0-9]+).*/\1/p' "$dir/intr.jsonl")
check "interrupted before step 200 (at ${k:-?})" '[ -n "$k" ] && [ "$k" -lt 200 ]'
"$moectl" train "$dir/job.yaml" $long $(m intr) --resume "$dir/sint" --stop-at 200 --state-out "$dir/res200" --quiet 2>/dev/null
check "interrupted and resumed to 200 = straight to 200" 'cmp -s "$dir/ref200" "$dir/res200"'

"$moectl" train "$dir/job.yaml" --set model.d_ff=64 $(m other) --resume "$dir/s15" 2>"$dir/err" >/dev/null
rc=$?
check "resume into another model config exits 2" '[ $rc -eq 2 ] && grep -q "different model config" "$dir/err"'
"$moectl" train "$dir/job.yaml" $(m x) --stop-at 5 2>"$dir/err" >/dev/null
rc=$?
check "--stop-at without --state-out exits 2" '[ $rc -eq 2 ] && grep -q "state-out" "$dir/err"'

# generate: a seed always gives the same bytes, another seed others, greedy needs no seed
g() { "$moectl" generate "$dir/full.safetensors" "$@" 2>/dev/null; }
check "generate is deterministic for a seed" '[ "$(g --prompt ab --bytes 64 --seed 5)" = "$(g --prompt ab --bytes 64 --seed 5)" ]'
check "generate differs across seeds" '[ "$(g --prompt ab --bytes 64 --seed 5)" != "$(g --prompt ab --bytes 64 --seed 6)" ]'
check "greedy is seed-independent" '[ "$(g --bytes 64 --temperature 0 --seed 1)" = "$(g --bytes 64 --temperature 0 --seed 2)" ]'
check "generate writes prompt + N bytes + newline" '[ "$(g --prompt abc --bytes 50 | wc -c)" -eq 54 ]'
"$moectl" generate "$dir/full.safetensors" --temperature -1 >/dev/null 2>"$dir/err"
rc=$?
check "negative temperature exits 2" '[ $rc -eq 2 ] && grep -q temperature "$dir/err"'
"$moectl" generate "$dir/full.safetensors" --bytes 0 >/dev/null 2>"$dir/err"
rc=$?
check "zero bytes exits 2" '[ $rc -eq 2 ] && grep -q bytes "$dir/err"'

echo "$((19 - fails)) passed, $fails failed"
[ $fails -eq 0 ]
