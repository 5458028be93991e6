#!/usr/bin/env bash
# `make demo`: the demo job through the real daemons. Starts a local cluster (a coordinator and
# one worker on 127.0.0.1, state in $OUT/cluster), submits deploy/specs/demo.yaml, watches it
# to the end, fetches the model, evaluates it on unseen text, samples from it, and stops the
# cluster (its state stays: `moectl cluster up --dir $OUT/cluster` brings the jobs back).
set -euo pipefail
BIN=${1:?usage: demo.sh BIN_DIR OUT_DIR}
OUT=${2:?usage: demo.sh BIN_DIR OUT_DIR}
moectl() { "$BIN/moectl" "$@"; }
export MOED_CLUSTER_DIR="$OUT/cluster"
mkdir -p "$OUT"

moectl cluster down >/dev/null 2>&1 || true   # a cluster left over from an interrupted demo
moectl cluster up --workers 1
trap 'moectl cluster down' EXIT

job=$(moectl submit deploy/specs/demo.yaml)
echo "demo: submitted $job; watching it (moectl watch $job)"
moectl watch "$job"
moectl fetch "$job" -o "$OUT/model.safetensors"
echo "demo: the trained model is $OUT/model.safetensors"
moectl eval "$OUT/model.safetensors" /usr/share/common-licenses/GPL-3
moectl generate "$OUT/model.safetensors" --prompt "The " --bytes 300
