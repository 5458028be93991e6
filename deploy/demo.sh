#!/usr/bin/env bash
# `make demo`: the demo job through the real daemons. Starts a local cluster (a coordinator and
# 2 pods of 2 workers on 127.0.0.1, state in $OUT/cluster), submits deploy/specs/demo.yaml (a
# 2 x 2 mesh: experts split over each pod's two workers, the pods data-parallel copies),
# watches it to the end, shows the mesh (which worker played which slot, the bytes each moved),
# fetches the model, evaluates it on unseen text, samples from it, and stops the cluster (its
# state stays: `moectl cluster up --dir $OUT/cluster` brings the jobs back).
# Four workers share this machine's cores: one OpenMP thread each (on 2 cores, ~30 s).
set -euo pipefail
BIN=${1:?usage: demo.sh BIN_DIR OUT_DIR}
OUT=${2:?usage: demo.sh BIN_DIR OUT_DIR}
moectl() { "$BIN/moectl" "$@"; }
export MOED_CLUSTER_DIR="$OUT/cluster"
mkdir -p "$OUT"

moectl cluster down >/dev/null 2>&1 || true   # a cluster left over from an interrupted demo
moectl cluster up --pods 2 --slots 2 --threads 1
trap 'moectl cluster down' EXIT

job=$(moectl submit deploy/specs/demo.yaml)
echo "demo: submitted $job; watching it (moectl watch $job)"
moectl watch "$job"
moectl fetch "$job" -o "$OUT/model.safetensors"
echo "demo: the trained model is $OUT/model.safetensors"
moectl eval "$OUT/model.safetensors" /usr/share/common-licenses/GPL-3
moectl generate "$OUT/model.safetensors" --prompt "The " --bytes 300
