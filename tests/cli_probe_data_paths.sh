#!/usr/bin/env bash
# Attacks on the workers' data paths, against a real local cluster of 2 pods x 2 workers whose
# only data root is $tmp/data: jobs that name /etc/shadow, /proc/self/environ, /proc/kmsg (a
# file that never ends), the cluster's own cluster.token, a symlink inside the root that points
# at it, and root/../cluster/cluster.token. Each job FAILS with an error naming the field and
# telling nothing of the file (not its contents, not its size); the workers are IDLE again
# at once, the same processes, and after all of it a real 2 x 2 job on the same cluster still
# makes `moectl train`'s model byte for byte. The workers then stop on SIGTERM (no SIGKILL).
set -u
moectl=$1
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_probe_data_paths
corpus=/usr/share/common-licenses/GPL-3

mkdir -p "$tmp/data"
cp "$corpus" "$tmp/data/corpus.txt"
"$moectl" cluster up --pods 2 --slots 2 --threads 1 --dir "$cdir" --data-root "$tmp/data" \
  >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --data-root DIR" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; tail -n 20 "$cdir"/*.log; exit 1; }
check "cluster up names the data root" 'grep -q "data roots .*$tmp/data" "$tmp/up.out"'
ln -s "$cdir/cluster.token" "$tmp/data/token-link"
ln -s ../cluster/cluster.token "$tmp/data/token-rel"
token=$(cat "$cdir/cluster.token")
token_size=$(stat -c %s "$cdir/cluster.token")
pids_before=$(cat "$cdir"/worker-*.pid | sort | tr '\n' ' ')
idle_count() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }

cat >"$tmp/mesh.yaml" <<YAML
name: probe
mesh: {pods: 2, slots: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $tmp/data/corpus.txt}]}
run: {steps: 8, batch_size: 8, log_every: 1}
YAML

for path in /etc/shadow /proc/self/environ /proc/kmsg "$cdir/cluster.token" \
            "$tmp/data/token-link" "$tmp/data/token-rel" "$tmp/data/../cluster/cluster.token"; do
  job=$("$moectl" submit "$tmp/mesh.yaml" --set "data.sources.0.path=$path" 2>"$tmp/submit.err")
  if [ -z "$job" ]; then # a refusal at submit would do as well, if it names the field
    check "$path: refused at submit, naming the field" 'grep -q "data.sources" "$tmp/submit.err"'
    continue
  fi
  wait_until 30 '[ "$(state_of "$job")" = JOB_FAILED ]'
  check "$path: the job FAILS" '[ "$(state_of "$job")" = JOB_FAILED ]'
  err=$("$moectl" status "$job" --json | json 'd["job"]["error"]')
  echo "     error: $err"
  check "$path: the error names the field and the roots" \
    '[[ "$err" == *"data.sources[0].path"* && "$err" == *"outside the worker'"'"'s data roots"* ]]'
  check "$path: the error tells neither the token nor a size" \
    '[[ "$err" != *"$token"* && "$err" != *" $token_size "* && "$err" != *bytes* ]]'
  check "$path: all 4 workers are IDLE again within 10 s" 'wait_until 10 "[ \"\$(idle_count)\" = 4 ]"'
done

# A refusal looks the same whatever the file outside is: here a file and a directory (test_data
# compares an existing and a missing file too: `moectl submit` refuses a path its own user
# cannot see before it sends anything, and the daemons look at no path outside the roots).
a=$("$moectl" submit "$tmp/mesh.yaml" --set "data.sources.0.path=$cdir/cluster.token" 2>"$tmp/a.err")
b=$("$moectl" submit "$tmp/mesh.yaml" --set "data.sources.0.path=$cdir/coordinator" 2>"$tmp/b.err")
[ -n "$a" ] && [ -n "$b" ] || cat "$tmp/a.err" "$tmp/b.err"
wait_until 30 '[ "$(state_of "$a")" = JOB_FAILED ] && [ "$(state_of "$b")" = JOB_FAILED ]'
# the worker's words, from the field on, with the path (between quotes) masked
words='(lambda e: e[e.index("data.sources"):].replace(e.split(chr(39))[1], "P"))(d["job"]["error"])'
ea=$("$moectl" status "$a" --json | json "$words")
eb=$("$moectl" status "$b" --json | json "$words")
check "a file and a directory outside the roots fail with the same words" '[ -n "$ea" ] && [ "$ea" = "$eb" ]'

check "the same worker processes, all alive" \
  '[ "$(cat "$cdir"/worker-*.pid | sort | tr "\n" " ")" = "$pids_before" ] && (for p in $pids_before; do kill -0 $p || exit 1; done)'

# The cluster still trains: a real 2 x 2 job on the data inside the root.
(cd "$tmp" && OMP_NUM_THREADS=1 "$moectl" train "$tmp/mesh.yaml" --quiet \
  --set run.output="$tmp/reference.safetensors" 2>"$tmp/train.err")
check "moectl train reads the same file (it is not confined)" '[ -s "$tmp/reference.safetensors" ]'
job=$("$moectl" submit "$tmp/mesh.yaml")
timeout 120 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check_same_model "$job" $?

# An orderly stop: every worker exits on SIGTERM by itself.
"$moectl" cluster down --dir "$cdir" >"$tmp/down.out" 2>&1
check "cluster down stops every worker without SIGKILL" \
  '(for i in 0 1 2 3; do tail -n 2 "$cdir/worker-$i.log" | grep -q " stopped$" || exit 1; done)'

echo "cli_probe_data_paths: $fails failure(s)"
[ $fails -eq 0 ]
