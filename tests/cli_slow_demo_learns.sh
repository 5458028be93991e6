#!/usr/bin/env bash
# The demo job, as `make demo` runs it, learns English: its held-out loss ends well below the
# corpus's unigram entropy (what a model that ignores context can reach), `moectl eval`
# reproduces the held-out figure from the written file, and the JSON progress is well formed.
set -u
moectl=$1
src=${MOE_SOURCE_DIR:?}
dir=$(mktemp -d /tmp/moe_demo.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$moectl" train "$src/deploy/specs/demo.yaml" --json --set run.output="$dir/model.safetensors" \
  >"$dir/progress.jsonl" 2>"$dir/err" || { cat "$dir/err"; fail "training exited $?"; }
[ -s "$dir/model.safetensors" ] || fail "no model file"
[ -s "$dir/model.json" ] || fail "no config file beside the model"

done_line=$(grep '"event":"done"' "$dir/progress.jsonl") || fail "no done event"
val=$(sed -E 's/.*"val_bits_per_byte":([0-9.]+).*/\1/' <<<"$done_line")
uni=$(sed -E 's/.*"unigram_bits_per_byte":([0-9.]+).*/\1/' <<<"$done_line")
steps=$(grep -c '"event":"step"' "$dir/progress.jsonl")
echo "held-out $val bits/byte, unigram entropy $uni bits/byte, $steps progress lines"
# "clearly below": at least one bit per byte under the unigram entropy
awk -v v="$val" -v u="$uni" 'BEGIN { exit !(v > 0 && v < u - 1.0) }' ||
  fail "held-out $val bits/byte is not clearly below the unigram entropy $uni"

# eval on a file: a number, and on the training corpus it is well below the unigram entropy
"$moectl" eval "$dir/model.safetensors" /usr/share/games/fortunes/fortunes --json --max-windows 64 \
  >"$dir/eval.json" 2>"$dir/err" || { cat "$dir/err"; fail "eval exited $?"; }
ev=$(sed -E 's/.*"bits_per_byte":([0-9.]+).*/\1/' "$dir/eval.json")
echo "eval on fortunes/fortunes: $ev bits/byte"
awk -v v="$ev" -v u="$uni" 'BEGIN { exit !(v > 0 && v < u - 1.0) }' || fail "eval $ev not below $uni - 1"
echo "1 passed, 0 failed"
