#!/usr/bin/env bash
# Nothing is lost when a job cannot go on (docs/recovery.md, "Export and resume"). On a local
# cluster of 2 pods x 2 workers and no spare:
#  (c) a 2 x 2 job whose every copy of slot index 1 is lost (both of its workers killed) FAILS;
#      the survivors export slot index 0, the manifest names slot 1 as missing ("every copy
#      lost", event export_failed), and --resume-from it is refused naming slot 1;
#  (b) then a 2 x 1 job on the two workers left loses one with no spare and no survivor that
#      may double up (the other holds the same slot index): it FAILS after mesh.spare_wait_s,
#      its survivor exports the whole state (event exported), and a job resumed from it ends
#      with `moectl train`'s model byte for byte;
#  (a) with the killed workers back, a running 2 x 2 job is cancelled: exported complete, and
#      the resumed job ends with `moectl train`'s model byte for byte.
# Bad input: --resume-from an unknown job, a running one, an incompatible spec, a malformed id;
# a run.export_dir outside the workers' export directory, or a symlink inside it leading out,
# writes nothing; an export file damaged since is refused by the worker, naming the file.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
cluster_test_init cli_export_resume
worker_pid() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }
slot_worker() { "$moectl" status "$1" --json | json "[s['worker_id'] for s in d['slots'] if (s['pod'], s['slot']) == ($2, $3)][0]"; }
idle_count() { "$moectl" cluster status --json | json 'sum(w["state"] == "WORKER_IDLE" for w in d["workers"])'; }
kinds() { "$moectl" events "$1" --json | json_lines 'e["kind"]'; }
json_lines() { "$py" -c "import json,sys
for l in sys.stdin:
    if l.strip(): e=json.loads(l); print($1)"; }

"$moectl" cluster up --pods 2 --slots 2 --spares 0 --threads 1 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --pods 2 --slots 2 --spares 0" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
cat >"$tmp/mesh.yaml" <<YAML
name: export-resume
mesh: {pods: 2, slots: 2, spare_wait_s: 2}
model: {d_model: 32, layers: 1, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
data: {sources: [{path: $corpus}]}
run: {steps: 800, batch_size: 8, eval_every: 0, log_every: 100}
YAML
sed -e 's/slots: 2, spare/slots: 1, spare/' -e 's/steps: 800/steps: 2000/' "$tmp/mesh.yaml" >"$tmp/pair.yaml"

# ---- (c) every copy of slot index 1 lost: FAILED, a partial export that says so ----
lost=$("$moectl" submit "$tmp/mesh.yaml" --set run.steps=1000000)
wait_until 60 '[ "$(committed_of "$lost")" -ge 20 ] 2>/dev/null'
check "(c) the 2 x 2 job $lost runs and has committed steps" '[ "$(committed_of "$lost")" -ge 20 ]'
a=$(slot_worker "$lost" 0 1) b=$(slot_worker "$lost" 1 1)
kill -9 "$(worker_pid "$a")" "$(worker_pid "$b")"
wait_until 60 '[ "$(state_of "$lost")" = JOB_FAILED ]'
check "(c) killing both copies of slot index 1 ($a, $b) fails the job" '[ "$(state_of "$lost")" = JOB_FAILED ]'
wait_until 60 'export_done "$lost"'
check "(c) the survivors' export is recorded, incomplete" \
  'export_done "$lost" && [ "$(exported "$lost" complete)" != True ]'
check "(c) the manifest names slot index 1 as missing, every copy lost" \
  '[ "$(exported "$lost" missing)" = "[1]" ] && [[ "$(exported "$lost" why_missing)" == *"slot 1: every copy lost"* ]]'
[ $fails -gt 0 ] && "$moectl" status "$lost" --json | json 'd["job"].get("exported")'
check "(c) ... and holds slot index 0's file" \
  '[ "$(exported "$lost" slots | "$py" -c "import ast,sys; s=ast.literal_eval(sys.stdin.read()); print(len(s), s[0][\"slot\"] if s and \"slot\" in s[0] else 0)")" = "1 0" ]'
check "(c) event export_failed" 'kinds "$lost" | grep -qx export_failed'
"$moectl" status "$lost" >"$tmp/lost.status"
check "(c) moectl status says which slot is missing" \
  'grep -qE "^  export    exported step [0-9]+: 1 of 2 slots; slot 1: every copy lost" "$tmp/lost.status"'
"$moectl" submit "$tmp/mesh.yaml" --resume-from "$lost" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "(c) --resume-from the partial export is refused naming slot 1 (exit $rc)" \
  '[ $rc -ne 0 ] && [ "$(wc -l <"$tmp/err")" = 1 ] && grep -q "incomplete: slot 1: every copy lost" "$tmp/err" && [ ! -s "$tmp/out" ]'
[ $fails -gt 0 ] && { cat "$tmp/err"; cat "$tmp/lost.status"; }

# ---- (b) a 2 x 1 job fails with its state complete: exported, resumed, the same bits ----
reference_train "$tmp/pair.yaml" "(b) the reference: moectl train of the 2 x 1 spec"
pair=$("$moectl" submit "$tmp/pair.yaml")
wait_until 60 '[ "$(committed_of "$pair")" -ge 20 ] 2>/dev/null'
check "(b) the 2 x 1 job $pair runs on the two workers left" '[ "$(state_of "$pair")" = JOB_RUNNING ]'
victim=$(slot_worker "$pair" 1 0)
kill -9 "$(worker_pid "$victim")"
wait_until 60 '[ "$(state_of "$pair")" = JOB_FAILED ]'
check "(b) with no spare, the job FAILS after mesh.spare_wait_s" '[ "$(state_of "$pair")" = JOB_FAILED ]'
wait_until 60 'export_done "$pair"'
check "(b) its survivor exported the whole state" '[ "$(exported "$pair" complete)" = True ]'
check "(b) event exported" 'kinds "$pair" | grep -qx exported'
pstep=$(exported "$pair" step)
pfile=$(exported "$pair" slots | "$py" -c "import ast,sys; print(ast.literal_eval(sys.stdin.read())[0]['path'])")
check "(b) the file is there, at the exported step $pstep" '[ -s "$pfile" ] && [ "$pstep" -ge 20 ]'
"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "cluster up restarts the killed workers" '[ $? -eq 0 ]'
again=$("$moectl" submit "$tmp/pair.yaml" --resume-from "$pair")
timeout 300 "$moectl" watch "$again" >"$tmp/watch.out" 2>&1
check_same_model "$again" $?
first=$("$moectl" steps "$again" --json | head -n 1 | json 'd["step"]')
check "(b) the resumed job $again trained from step $((pstep + 1)) on (its first: $first)" \
  '[ "$first" = $((pstep + 1)) ]'

# ---- (a) a cancelled 2 x 2 job: exported complete, resumed, the same bits ----
reference_train "$tmp/mesh.yaml" "(a) the reference: moectl train of the 2 x 2 spec"
job=$("$moectl" submit "$tmp/mesh.yaml")
wait_until 60 '[ "$(committed_of "$job")" -ge 20 ] 2>/dev/null'
check "(a) the 2 x 2 job $job runs" '[ "$(state_of "$job")" = JOB_RUNNING ]'
"$moectl" submit "$tmp/mesh.yaml" --resume-from "$job" >"$tmp/out" 2>"$tmp/err"
check "--resume-from a running job is refused, saying so" \
  '[ $? -ne 0 ] && grep -q "the job is RUNNING\|JOB_RUNNING" "$tmp/err" && [ "$(wc -l <"$tmp/err")" = 1 ]'
"$moectl" cancel "$job" >/dev/null
wait_until 60 'export_done "$job"'
check "(a) the cancelled job's export is complete" \
  '[ "$(state_of "$job")" = JOB_CANCELLED ] && [ "$(exported "$job" complete)" = True ]'
check "(a) event exported after cancelled" \
  '[ "$(kinds "$job" | grep -E "^(cancelled|exported)$" | tr "\n" " ")" = "cancelled exported " ]'
"$moectl" status "$job" >"$tmp/job.status"
check "(a) moectl status: exported step N: slots 0-1 complete" \
  'grep -qE "^  export    exported step [0-9]+: slots 0-1 complete" "$tmp/job.status"'
# the manifest is the coordinator's durable record: a SIGKILL and restart keep it whole
coord_pid=$(cat "$cdir/coordinator.pid")
kill -9 "$coord_pid"
wait_until 10 '! grep -qs moed- "/proc/$coord_pid/cmdline"'
"$moectl" cluster up --dir "$cdir" >"$tmp/up2.out" 2>&1
check "(a) the coordinator is back after a SIGKILL" '[ $? -eq 0 ]'
wait_until 60 '[ "$(exported "$job" complete)" = True ]'
"$moectl" status "$job" >"$tmp/job.status2"
check "(a) ... and shows the same export of $job" \
  'grep "^  export" "$tmp/job.status" >"$tmp/e1"; grep "^  export" "$tmp/job.status2" >"$tmp/e2"; [ -s "$tmp/e1" ] && cmp -s "$tmp/e1" "$tmp/e2"'
wait_until 60 '[ "$(idle_count)" -ge 4 ] 2>/dev/null' # reattached: the resume needs all four
check "(a) ... and its 4 workers are back" '[ "$(idle_count)" -ge 4 ]'
"$moectl" submit "$tmp/mesh.yaml" --resume-from "$job" --set run.seed=7 >"$tmp/out" 2>"$tmp/err"
check "--resume-from with another seed is refused naming run.seed" \
  '[ $? -ne 0 ] && grep -q "run.seed differs" "$tmp/err" && [ "$(wc -l <"$tmp/err")" = 1 ]'
"$moectl" submit "$tmp/mesh.yaml" --resume-from "$job" --set model.d_ff=32 >"$tmp/out" 2>"$tmp/err"
check "--resume-from with another model is refused naming the model" \
  '[ $? -ne 0 ] && grep -q "model differs" "$tmp/err"'
"$moectl" submit "$tmp/mesh.yaml" --resume-from job-999999 >"$tmp/out" 2>"$tmp/err"
check "--resume-from an unknown job is refused (exit 2)" '[ $? -eq 2 ] && grep -q "no such job" "$tmp/err"'
"$moectl" submit "$tmp/mesh.yaml" --resume-from "../x" >"$tmp/out" 2>"$tmp/err"
check "--resume-from a malformed id is refused" '[ $? -ne 0 ] && [ -s "$tmp/err" ]'
resumed=$("$moectl" submit "$tmp/mesh.yaml" --resume-from "$job")
timeout 300 "$moectl" watch "$resumed" >"$tmp/watch.out" 2>&1
check_same_model "$resumed" $?
"$moectl" status "$resumed" >"$tmp/resumed.status"
check "(a) moectl status of $resumed says where it resumed from" \
  'grep -qE "^  resumed   from $job at step [0-9]+" "$tmp/resumed.status"'

# ---- run.export_dir outside the workers' export directory: nothing is written there ----
# (these jobs run until cancelled: 800 steps can end before the cancel on an idle machine)
out_job=$("$moectl" submit "$tmp/mesh.yaml" --set run.steps=1000000 --set run.export_dir="$tmp/elsewhere")
wait_until 60 '[ "$(committed_of "$out_job")" -ge 5 ] 2>/dev/null'
"$moectl" cancel "$out_job" >/dev/null
wait_until 60 'export_done "$out_job"'
check "run.export_dir outside the workers' export directory: export_failed, naming both" \
  '[[ "$(exported "$out_job" why_missing)" == *"run.export_dir $tmp/elsewhere is not beneath this worker'"'"'s export directory"* ]] && kinds "$out_job" | grep -qx export_failed'
check "... and nothing was written there" '[ ! -e "$tmp/elsewhere" ]'
# ---- a symlink where a job's export directory goes, leading out: refused, nothing written ----
link_job=$("$moectl" submit "$tmp/mesh.yaml" --set run.steps=1000000)
wait_until 60 '[ "$(committed_of "$link_job")" -ge 5 ] 2>/dev/null'
mkdir -p "$tmp/lured"
for w in "$cdir"/worker-*/; do mkdir -p "$w/exports" && ln -s "$tmp/lured" "$w/exports/$link_job"; done
"$moectl" cancel "$link_job" >/dev/null
wait_until 60 'export_done "$link_job"'
check "a symlink in place of the job's export directory: export_failed, naming the symlink" \
  '[[ "$(exported "$link_job" why_missing)" == *"$link_job is a symlink"* ]] && kinds "$link_job" | grep -qx export_failed'
[ $fails -gt 0 ] && "$moectl" status "$link_job" --json | json 'd["job"].get("exported")'
check "... and nothing was written through it" '[ -z "$(ls -A "$tmp/lured")" ]'
check "a run.export_dir with .. is refused at submission" \
  '"$moectl" submit "$tmp/mesh.yaml" --set run.export_dir=/a/../b 2>&1 | grep -q "contains \"..\""'

# ---- a damaged export file is refused by the worker, naming it ----
afile=$(exported "$job" slots | "$py" -c "import ast,sys; print(ast.literal_eval(sys.stdin.read())[1]['path'])")
printf '\x01' | dd of="$afile" bs=1 seek=5000 conv=notrunc status=none
bad=$("$moectl" submit "$tmp/mesh.yaml" --resume-from "$job")
wait_until 60 '[ "$(state_of "$bad")" = JOB_FAILED ]'
err=$("$moectl" status "$bad" --json | json 'd["job"]["error"]')
check "a damaged export file fails the resumed job naming the file and its checksum" \
  '[ "$(state_of "$bad")" = JOB_FAILED ] && [[ "$err" == *"$afile"* && "$err" == *CRC-32C* ]]'
[ $fails -gt 0 ] && echo "     error: $err"

cluster_test_finish
