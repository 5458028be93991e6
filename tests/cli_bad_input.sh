#!/usr/bin/env bash
# Bad input to moectl: each case must exit 2, print one line on stderr naming what is wrong,
# and leave no output file behind.
set -u
moectl=$1
dir=$(mktemp -d /tmp/moe_cli_bad.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fails=0
corpus=/usr/share/games/fortunes/fortunes

# expect_fail NAME EXPECTED_SUBSTRING -- command...
expect_fail() {
  local name=$1 want=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"
  local rc=$?
  local lines; lines=$(grep -vc ' DEBUG \| INFO ' "$dir/err")
  if [ $rc -ne 2 ]; then
    echo "FAIL $name: exit $rc, expected 2"; fails=$((fails+1))
  elif ! grep -q -- "$want" "$dir/err"; then
    echo "FAIL $name: stderr lacks '$want':"; cat "$dir/err"; fails=$((fails+1))
  elif [ "$lines" -ne 1 ]; then
    echo "FAIL $name: expected one error line, got $lines:"; cat "$dir/err"; fails=$((fails+1))
  elif ls "$dir"/*.safetensors >/dev/null 2>&1; then
    echo "FAIL $name: left an output file"; fails=$((fails+1))
  else
    echo "ok   $name: $(grep -v ' INFO ' "$dir/err")"
  fi
}

spec() { # spec FILE [extra yaml lines...]: a small valid spec, then the given lines
  local f=$1; shift
  { echo "data:"; echo "  sources: [{path: $corpus}]"; echo "run:";
    echo "  steps: 2"; echo "  output: $dir/m.safetensors"; for l in "$@"; do echo "$l"; done; } >"$f"
}

spec "$dir/topk.yaml" "router: {top_k: 5}"
expect_fail "top_k > experts" "router.top_k" -- "$moectl" train "$dir/topk.yaml"

spec "$dir/unknown.yaml" "model: {d_modle: 64}"
expect_fail "unknown field" "model.d_modle" -- "$moectl" train "$dir/unknown.yaml"

spec "$dir/lr.yaml" "optimizer: {lr: -0.1}"
expect_fail "negative learning rate" "optimizer.lr" -- "$moectl" train "$dir/lr.yaml"

printf 'data:\n  sources: [{path: %s/nope.txt}]\nrun: {output: %s/m.safetensors}\n' "$dir" "$dir" >"$dir/missing.yaml"
expect_fail "missing data file" "nope.txt" -- "$moectl" train "$dir/missing.yaml"

: >"$dir/empty.txt"
printf 'data:\n  sources: [{path: %s/empty.txt}]\nrun: {output: %s/m.safetensors}\n' "$dir" "$dir" >"$dir/empty.yaml"
expect_fail "empty corpus" "empty.txt" -- "$moectl" train "$dir/empty.yaml"

printf 'model: {d_model: [1, 2\n' >"$dir/malformed.yaml"
expect_fail "malformed YAML" "malformed.yaml" -- "$moectl" train "$dir/malformed.yaml"

spec "$dir/ok.yaml"
expect_fail "bad --set value" "run.steps" -- "$moectl" train "$dir/ok.yaml" --set run.steps=many
expect_fail "--set unknown key" "run.stepz" -- "$moectl" train "$dir/ok.yaml" --set run.stepz=3
expect_fail "heads do not divide d_model" "model.heads" -- "$moectl" train "$dir/ok.yaml" --set model.heads=3

expect_fail "missing spec file" "nope.yaml" -- "$moectl" train "$dir/nope.yaml"
expect_fail "missing model" "nope.safetensors" -- "$moectl" eval "$dir/nope.safetensors" "$corpus"
head -c 1000 /dev/urandom >"$dir/garbage.bin"
expect_fail "garbage model file" "garbage.bin" -- "$moectl" eval "$dir/garbage.bin" "$corpus"
expect_fail "unknown command" "frobnicate" -- "$moectl" frobnicate

echo "$fails failed"
[ $fails -eq 0 ]
