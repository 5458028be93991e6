#!/usr/bin/env bash
# bench_diloco_learning.sh BIN_DIR — how the outer-step mode learns against the synchronous
# one (docs/crosspod.md, "How it learns"): the demo job (deploy/specs/demo.yaml: 2 x 2, 400
# steps of 16 sequences of 128 bytes of fortunes) on a local cluster of 4 workers, once with
# mesh.sync: sync and once with mesh.sync: diloco for each H in BENCH_DILOCO_HS (default
# "20"); every run trains on the same number of tokens. Prints the held-out bits per byte of
# each run's evaluations (run.eval_every 100, run.eval_batches 16) and the last training
# losses. BENCH_DILOCO_SET: more --set overrides for every run (e.g. run.steps=200);
# BENCH_DILOCO_SYNC=0 leaves the synchronous run out; BENCH_DILOCO_OVERLAP=1 adds, for each H,
# the overlapped outer step (mesh.outer_overlap), =only runs it instead of the plain one.
# Numbers are reported, never asserted.
set -u
bin=${1:?usage: bench_diloco_learning.sh BIN_DIR}
bin=$(cd "$bin" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
hs=${BENCH_DILOCO_HS:-20}
source "$here/bench_lib.sh"
moectl=$bin/moectl
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe_bench_diloco.XXXXXX")
export MOED_CLUSTER_DIR=$tmp/cluster
cleanup() { "$moectl" cluster down --dir "$tmp/cluster" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 143' INT TERM
"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$tmp/cluster" >"$tmp/up.out" 2>&1 ||
  { echo "bench_diloco_learning: cluster up failed"; cat "$tmp/up.out"; exit 1; }
spec=$here/../../deploy/specs/demo.yaml
extra=()
for s in ${BENCH_DILOCO_SET:-}; do extra+=(--set "$s"); done

# run NAME OVERRIDE...: trains the demo with the overrides; prints one line of results
run() {
  local name=$1 job
  shift
  job=$("$moectl" submit "$spec" "${extra[@]}" "$@") ||
    { echo "$name: submit failed"; return; }
  timeout 3600 "$moectl" watch "$job" >"$tmp/$name.watch" 2>&1 ||
    { echo "$name: $job did not succeed"; tail -n 5 "$tmp/$name.watch"; return; }
  "$moectl" steps "$job" --json | "$py" -c '
import json, sys
steps = [json.loads(l) for l in sys.stdin]
val = " ".join("%d:%.4f" % (s["step"], s["val_bits_per_byte"]) for s in steps
               if s.get("val_bits_per_byte", 0) > 0)
last = steps[-20:]
ce = sum(s.get("bits_per_byte", 0) for s in last) / max(1, len(last))
secs = sum(s.get("seconds", 0) for s in steps) / max(1, len(steps))
print("%-16s held-out bits/byte %s   train bits/byte (last 20 steps) %.4f   %.0f ms/step" %
      (sys.argv[1], val, ce, 1e3 * secs))' "$name"
}

echo "bench_diloco_learning: the demo (2 x 2), same tokens for every run"
[ "${BENCH_DILOCO_SYNC:-1}" = 0 ] || run sync --set mesh.sync=sync
overlap=${BENCH_DILOCO_OVERLAP:-0}
for h in $hs; do
  [ "$overlap" = only ] || run "diloco-H$h" --set mesh.sync=diloco --set mesh.outer_every="$h"
  [ "$overlap" = 0 ] ||
    run "overlap-H$h" --set mesh.sync=diloco --set mesh.outer_every="$h" --set mesh.outer_overlap=true
done
