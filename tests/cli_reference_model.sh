#!/usr/bin/env bash
# docs/model.md is exact: an independent NumPy implementation written from it
# (tests/reference_model.py, float64) computes the same loss as `moectl eval` (float32) on a
# trained model whose routing drops tokens (capacity_factor 0.5) and uses expert biases.
# And the distillation loss: a student (the model above's shape) started from a trained model
# (run.init_from) with a larger teacher, on a corpus of exactly T + 1 bytes (every sequence of
# the batch is that window): the first step's loss, ce and kl that `moectl train` reports are
# the reference's, computed from the doc's equations.
set -u
moectl=$1
src=${MOE_SOURCE_DIR:?}
py=/usr/bin/python3 # Debian's, with python3-numpy from deploy/install-deps.sh
dir=$(mktemp -d /tmp/moe_reference.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cat >"$dir/job.yaml" <<YAML
model: {d_model: 32, layers: 2, heads: 4, seq_len: 48, experts: 4, d_ff: 40}
router: {top_k: 2, capacity_factor: 0.5, bias_balancing: true, bias_update_rate: 0.01}
data: {sources: [{path: /usr/share/games/fortunes/fortunes}]}
run: {steps: 60, batch_size: 4, eval_every: 0, output: $dir/m.safetensors}
YAML
"$moectl" train "$dir/job.yaml" --quiet 2>"$dir/err" || { cat "$dir/err"; fail "training"; }
data=/usr/share/games/fortunes/wisdom # text the model was not trained on
"$moectl" eval "$dir/m.safetensors" "$data" --json --max-windows 24 >"$dir/moed.json" 2>"$dir/err" ||
  { cat "$dir/err"; fail "moectl eval"; }
"$py" "$src/tests/reference_model.py" "$dir/m.safetensors" "$data" --max-windows 24 >"$dir/ref.json" ||
  fail "reference model"
a=$(sed -E 's/.*"loss":([0-9.eE+-]+).*/\1/' "$dir/moed.json")
b=$(sed -E 's/.*"loss": ([0-9.eE+-]+).*/\1/' "$dir/ref.json")
echo "moectl eval: $a nats/byte; NumPy reference from docs/model.md: $b nats/byte"
awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d / b < 1e-4) }' ||
  fail "losses differ by more than 1e-4 relative"

# distillation: router terms off so that the loss is (1 - alpha) ce + alpha T^2 kl alone
head -c 49 /usr/share/games/fortunes/wisdom >"$dir/window.txt" # T + 1 bytes
cat >"$dir/student.yaml" <<YAML
model: {d_model: 32, layers: 2, heads: 4, seq_len: 48, experts: 4, d_ff: 40}
router: {top_k: 2, capacity_factor: 0.5, aux_loss_coef: 0, z_loss_coef: 0}
data: {sources: [{path: /usr/share/games/fortunes/fortunes}], val_fraction: 0}
run: {steps: 30, batch_size: 4, eval_every: 0, output: $dir/s.safetensors}
YAML
"$moectl" train "$dir/student.yaml" --quiet 2>"$dir/err" || { cat "$dir/err"; fail "training the student"; }
"$moectl" train "$dir/student.yaml" --quiet --set model.d_model=48 --set model.layers=3 \
  --set model.seq_len=64 --set run.steps=60 --set run.output="$dir/t.safetensors" 2>"$dir/err" ||
  { cat "$dir/err"; fail "training the teacher"; }
"$moectl" train "$dir/student.yaml" --json --set run.steps=1 --set run.batch_size=2 \
  --set data.sources.0.path="$dir/window.txt" --set run.init_from="$dir/s.safetensors" \
  --set distill.teacher="$dir/t.safetensors" --set distill.alpha=0.5 --set distill.temperature=2 \
  --set run.output="$dir/d.safetensors" 2>"$dir/err" | grep '"step"' >"$dir/distill.json" ||
  { cat "$dir/err"; fail "moectl train with a teacher"; }
"$py" "$src/tests/reference_model.py" "$dir/s.safetensors" "$dir/window.txt" \
  --teacher "$dir/t.safetensors" --alpha 0.5 --temperature 2 >"$dir/ref-distill.json" ||
  fail "reference distillation loss"
echo "moectl train, step 1: $(cat "$dir/distill.json")"
echo "NumPy reference:      $(cat "$dir/ref-distill.json")"
"$py" - "$dir/distill.json" "$dir/ref-distill.json" <<'PY' || fail "distillation losses differ by more than 1e-4 relative"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
sys.exit(0 if all(b[k] > 0 and abs(a[k] - b[k]) / b[k] < 1e-4 for k in ("loss", "ce", "kl")) else 1)
PY
echo "2 passed, 0 failed"
