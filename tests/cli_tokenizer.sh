#!/usr/bin/env bash
# A learned vocabulary end to end in one process: `moectl tokenizer train` writes the same
# model file twice; a job with data.tokenizer trains and reports bits per byte; `moectl data
# prepare` + data.prepared trains the same model byte for byte as tokenizing on load; the model
# carries its tokenizer (eval and generate need nothing else; generate prints text); a byte-level
# model's eval keeps bits per byte = bits per token. Bad input gets one line, exit 2 and no
# model: another tokenizer given to eval, a corrupt tokenizer, a missing token file, a token
# directory prepared with another tokenizer, a model.vocab that disagrees with the tokenizer.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
tmp=$(mktemp -d /tmp/moe_cli_tokenizer.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails+1)); fi; }
json() { /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); print($1)"; }
export OMP_NUM_THREADS=1
# one_line CMD...: fails with exit 2 and exactly one line on stderr, kept in $tmp/err
one_line() { "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?; echo "     $(cat "$tmp/err")"; [ $rc -eq 2 ] && [ "$(wc -l <"$tmp/err")" = 1 ]; }

"$moectl" tokenizer train "$corpus" --vocab 600 -o "$tmp/tok.model" >"$tmp/train1.out"
check "tokenizer train writes a model" '[ $? -eq 0 ] && [ -s "$tmp/tok.model" ]'
"$moectl" tokenizer train "$corpus" --vocab 600 -o "$tmp/tok2.model" >/dev/null
check "training it again gives the same bytes" 'cmp "$tmp/tok.model" "$tmp/tok2.model"'
"$moectl" tokenizer train "$corpus" /usr/share/common-licenses/Apache-2.0 --vocab 600 --type unigram -o "$tmp/uni.model" >/dev/null
check "a unigram tokenizer from two files" '[ -s "$tmp/uni.model" ] && ! cmp -s "$tmp/uni.model" "$tmp/tok.model"'
check "a vocabulary the text cannot fill: one line" \
  'one_line "$moectl" tokenizer train "$corpus" --vocab 60000 -o "$tmp/big.model" && [ ! -e "$tmp/big.model" ]'

cat >"$tmp/job.yaml" <<YAML
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}], val_fraction: 0.1, tokenizer: $tmp/tok.model}
run: {steps: 8, batch_size: 8, log_every: 1, eval_every: 4, eval_batches: 2}
YAML
"$moectl" train "$tmp/job.yaml" --json --set run.output="$tmp/fly.safetensors" >"$tmp/fly.out" 2>"$tmp/fly.err"
check "a job with data.tokenizer trains" '[ $? -eq 0 ] && [ -s "$tmp/fly.safetensors" ]'
bpb=$(grep '"event":"step"' "$tmp/fly.out" | tail -n 1 | json 'd["bits_per_byte"]')
ce=$(grep '"event":"step"' "$tmp/fly.out" | tail -n 1 | json 'd["ce"]')
echo "     last step: ce $ce nats/token, $bpb bits/byte"
check "steps report bits per byte, below bits per token (pieces are longer than a byte)" \
  '/usr/bin/python3 -c "import math,sys; sys.exit(not 0 < $bpb < $ce / math.log(2))"'
check "the held-out eval reports bits per byte and bytes per token" \
  'grep "\"event\":\"eval\"" "$tmp/fly.out" | tail -n 1 | json "d[\"val_bits_per_byte\"] > 0 and d[\"bytes_per_token\"] > 1.5" | grep -q True'
vocab_of() { /usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['spec']['model']['vocab'])" "$1"; }
check "model.vocab followed the tokenizer: 600 in the config beside the model" '[ "$(vocab_of "$tmp/fly.json")" = 600 ]'

"$moectl" data prepare "$tmp/job.yaml" -o "$tmp/prep" >"$tmp/prep.out" 2>&1
check "data prepare writes a token directory" '[ $? -eq 0 ] && [ -s "$tmp/prep/index.json" ] && [ -s "$tmp/prep/0.tok" ]'
cat "$tmp/prep.out" | head -n 1 | sed 's/^/     /'
"$moectl" train "$tmp/job.yaml" --json --set data.prepared="$tmp/prep" --set run.output="$tmp/prep.safetensors" >"$tmp/prep.out2" 2>"$tmp/prep.err"
check "training from the prepared tokens gives the same model, byte for byte" 'cmp "$tmp/fly.safetensors" "$tmp/prep.safetensors"'

"$moectl" eval "$tmp/fly.safetensors" "$corpus" --json >"$tmp/eval.json" 2>"$tmp/eval.err"
check "eval needs only the model file" '[ $? -eq 0 ]'
check "eval reports bits per token and per byte" \
  '[ "$(json "d[\"bits_per_byte\"] < d[\"bits_per_token\"] and d[\"bytes\"] > d[\"tokens\"]" <"$tmp/eval.json")" = True ]'
"$moectl" eval "$tmp/fly.safetensors" "$corpus" --tokenizer "$tmp/tok2.model" >/dev/null 2>&1
check "eval --tokenizer with the same tokenizer is accepted" '[ $? -eq 0 ]'
check "eval --tokenizer with another tokenizer: one line" \
  'one_line "$moectl" eval "$tmp/fly.safetensors" "$corpus" --tokenizer "$tmp/uni.model" && grep -q "is not the tokenizer" "$tmp/err"'
"$moectl" generate "$tmp/fly.safetensors" --prompt "The GNU" --bytes 20 --temperature 0 >"$tmp/gen.out" 2>&1
check "generate decodes to text that starts with the prompt" '[ $? -eq 0 ] && grep -q "^The GNU" "$tmp/gen.out"'

# a byte-level model: per token = per byte
"$moectl" train "$tmp/job.yaml" --quiet --set data.tokenizer= --set run.steps=2 --set run.output="$tmp/bytes.safetensors" 2>/dev/null
"$moectl" eval "$tmp/bytes.safetensors" "$corpus" --json --max-windows 8 >"$tmp/beval.json" 2>&1
check "a byte-level model's eval: bits per byte = bits per token" \
  '[ "$(json "d[\"bits_per_byte\"] == d[\"bits_per_token\"] and d[\"bytes\"] == d[\"tokens\"]" <"$tmp/beval.json")" = True ]'
check "eval --tokenizer on a byte-level model: one line" \
  'one_line "$moectl" eval "$tmp/bytes.safetensors" "$corpus" --tokenizer "$tmp/tok.model" && grep -q "byte-level" "$tmp/err"'

# bad input: one line, exit 2, no model
printf 'not a tokenizer' >"$tmp/bad.model"
check "a corrupt tokenizer: one line, no model" \
  'one_line "$moectl" train "$tmp/job.yaml" --set data.tokenizer="$tmp/bad.model" --set run.output="$tmp/x.safetensors" && [ ! -e "$tmp/x.safetensors" ] && grep -q "not a SentencePiece tokenizer" "$tmp/err"'
check "a missing tokenizer: one line" \
  'one_line "$moectl" train "$tmp/job.yaml" --set data.tokenizer="$tmp/none.model" --set run.output="$tmp/x.safetensors" && [ ! -e "$tmp/x.safetensors" ]'
check "token files prepared with another tokenizer: one line" \
  'one_line "$moectl" train "$tmp/job.yaml" --set data.tokenizer="$tmp/uni.model" --set data.prepared="$tmp/prep" --set run.output="$tmp/x.safetensors" && [ ! -e "$tmp/x.safetensors" ] && grep -q "another tokenizer" "$tmp/err"'
check "model.vocab that is not the tokenizer's: one line" \
  'one_line "$moectl" train "$tmp/job.yaml" --set model.vocab=1000 --set run.output="$tmp/x.safetensors" && [ ! -e "$tmp/x.safetensors" ] && grep -q "model.vocab = 1000" "$tmp/err"'
rm "$tmp/prep/0.tok"
check "a missing token file: one line, no model" \
  'one_line "$moectl" train "$tmp/job.yaml" --set data.prepared="$tmp/prep" --set run.output="$tmp/x.safetensors" && [ ! -e "$tmp/x.safetensors" ] && grep -q "0.tok" "$tmp/err"'

[ $fails -eq 0 ] && echo "cli_tokenizer: all checks passed" || echo "cli_tokenizer: $fails checks failed"
exit $((fails > 0))
