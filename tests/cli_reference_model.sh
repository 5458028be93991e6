#!/usr/bin/env bash
# docs/model.md is exact: an independent NumPy implementation written from it
# (tests/reference_model.py, float64) computes the same loss as `moectl eval` (float32) on a
# trained model whose routing drops tokens (capacity_factor 0.5) and uses expert biases.
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
echo "1 passed, 0 failed"
