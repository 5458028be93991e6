#!/usr/bin/env bash
# `moectl plot` (cli/plot.c, cli/plot_draw.c) on real jobs of a local cluster with a spare: a
# 1 x 2 job, plotted while it runs, whose slot-1 worker is killed with SIGKILL recovers onto
# the spare and SUCCEEDS; its plot, as SVG and as PNG, is checked with Python (xml.etree, Debian's python3-pil): the
# SVG parses and has the curves (paths of hundreds of points) and the recovery's marker (a
# vertical line in the "recovered" colour: cairo draws text as glyphs, so colours are what a
# test can find); the PNG has its signature, the size asked for, the loss curve's colour in
# the loss panel, a heatmap in the expert-load panel, and the recovered colour down the column
# where --json says the marker is, at the x of the step where the recovery happened. A job
# with no fault has no marker colour anywhere. Bad input: no -o, a suffix other than .svg or
# .png, a size out of bounds, an unknown job, a path that cannot be written (exit 2, one line,
# no file left), no coordinator (exit 4). The same plot drawn offline from `moectl steps
# --json` and `moectl status --json` dumps marks the same events. One PNG is copied to
# $MOE_BUILD_DIR/plot_example.png for people to look at.
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
if ! "$py" -c 'import PIL' 2>/dev/null; then
  echo "skip cli_plot: needs python3-pil (deploy/install-deps.sh installs it)"
  exit 0
fi
cluster_test_init cli_plot

# one_line CMD...: runs it, sets rc, and err to its stderr, which must be one line
one_line() { "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; err=$(cat "$tmp/err"); [ "$(wc -l <"$tmp/err")" -eq 1 ]; }

one_line "$moectl" plot job-1
check "no -o: exit 2 ($err)" '[ $rc -eq 2 ] && [[ "$err" == *"-o FILE is required"* ]]'
one_line "$moectl" plot job-1 -o "$tmp/x.jpg"
check "a .jpg: exit 2, naming the formats ($err)" '[ $rc -eq 2 ] && [[ "$err" == *".svg or .png"* ]]'
one_line "$moectl" plot job-1 -o "$tmp/x.png" --width 100
check "--width 100: exit 2, naming the bounds ($err)" '[ $rc -eq 2 ] && [[ "$err" == *"--width"*"[480, 8000]"* ]]'
one_line "$moectl" plot job-1 -o "$tmp/x.svg" --coordinator 127.0.0.1:1 --ca ""
check "no coordinator: exit 4 ($err)" '[ $rc -eq 4 ] && [ ! -e "$tmp/x.svg" ]'

"$moectl" cluster up --slots 2 --spares 1 --threads 1 --heartbeat-timeout-ms 2000 --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --slots 2 --spares 1" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }

spec() { # NAME STEPS
  cat <<YAML
name: $1
mesh: {pods: 1, slots: 2, replicas: 2, spare_wait_s: 30}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: $2, batch_size: 8, log_every: 1000, eval_every: 50}
YAML
}
events() { "$moectl" status "$1" --json | json '" ".join(e["kind"] for e in d["events"])'; }
pid_of() { "$moectl" cluster status --json | json "[w['pid'] for w in d['workers'] if w['worker_id'] == '$1'][0]"; }

# ---- a job that recovers once ----
spec plot-recovery 3000 >"$tmp/a.yaml"
job=$("$moectl" submit "$tmp/a.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 120 '[ "$(step_of "$job")" -ge 60 ] 2>/dev/null'
running=$("$moectl" plot "$job" -o "$tmp/running.png" --json | json 'd["steps"]')
check "a running job plots too ($running steps stored so far)" '[ "$running" -ge 1 ] && [ "$running" -lt 3000 ]'
victim=$("$moectl" status "$job" --json | json 'd["job"]["bindings"][1]["worker_id"]')
vpid=$(pid_of "$victim")
s_kill=$(step_of "$job")
check "slot 1 is on $victim (pid $vpid), step $s_kill" '[ -n "$vpid" ] && kill -0 "$vpid"'
kill -9 "$vpid"
wait_until 90 '[[ " $(events "$job") " == *" recovered "* ]]'
s_rec=$(step_of "$job")
check "the kill is recovered by step $s_rec ($(events "$job"))" '[[ " $(events "$job") " == *" recovered "* ]]'
timeout 300 "$moectl" watch "$job" >"$tmp/watch.out" 2>&1
check "the job SUCCEEDS" '[ $? -eq 0 ]'

# ---- a job with no fault ----
spec plot-calm 150 >"$tmp/b.yaml"
calm=$("$moectl" submit "$tmp/b.yaml")
timeout 300 "$moectl" watch "$calm" >"$tmp/watch.out" 2>&1
check "a job with no fault SUCCEEDS ($calm)" '[ $? -eq 0 ]'

# ---- the plots ----
"$moectl" plot "$job" -o "$tmp/a.svg" --json >"$tmp/a_svg.json" 2>"$tmp/err"
check "plot $job -o a.svg" '[ $? -eq 0 ] && [ -s "$tmp/a.svg" ]' || cat "$tmp/err"
"$moectl" plot "$job" -o "$tmp/a.png" --width 1000 --height 760 --json >"$tmp/a_png.json" 2>"$tmp/err"
check "plot $job -o a.png --width 1000 --height 760" '[ $? -eq 0 ] && [ -s "$tmp/a.png" ]' || cat "$tmp/err"
"$moectl" plot "$calm" -o "$tmp/b.svg" >"$tmp/b.out" 2>"$tmp/err"
check "plot $calm -o b.svg says what it wrote ($(cat "$tmp/b.out"))" \
  '[ $? -eq 0 ] && grep -q "wrote $tmp/b.svg: $calm, 150 steps, 4 experts, 0 events marked" "$tmp/b.out"'
"$moectl" plot "$calm" -o "$tmp/b.png" --json >"$tmp/b_png.json" 2>"$tmp/err"
check "plot $calm -o b.png" '[ $? -eq 0 ]'
cp "$tmp/a.png" "$MOE_BUILD_DIR/plot_example.png" 2>/dev/null

"$moectl" steps "$job" --json >"$tmp/steps.json"
"$moectl" status "$job" --json >"$tmp/status.json"
# from the coordinator's own answers (JOB): the step the recovery landed on (the last stored
# step reported before "recovered"), and how many points each curve should have: steps with
# a loss, with a tokens/s (null for a step of no measurable time), with a held-out loss
points_of() {
  "$moectl" steps "$1" --json >"$tmp/$1.steps"
  "$py" - "$tmp/$1.steps" "$tmp/status.json" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ev = json.load(open(sys.argv[2]))["events"]
t = [e["unix_ms"] for e in ev if e["kind"] == "recovered"] or [0]
ok = lambda v: isinstance(v, (int, float))
print(max([s["step"] for s in steps if s["reported_unix_ms"] <= t[0]] or [steps[0]["step"]]),
      len(steps), sum(ok(s["loss"]) for s in steps), sum(ok(s["tokens_per_second"]) for s in steps),
      sum(ok(s["val_loss"]) and s["val_loss"] > 0 for s in steps))
PY
}
read -r rec_step n_steps a_points <<<"$(points_of "$job")"
# (all 3000: slot (0, 0) kept its worker, so the steps it reported late, in the epoch before
# the recovery's, are stored too; the plot's point counts are checked against what is stored)
check "$n_steps of 3000 steps stored; the recovery after step $rec_step (killed at $s_kill, recovered by $s_rec)" \
  '[ "$n_steps" -eq 3000 ] && [ "$rec_step" -ge $((s_kill - 20)) ] && [ "$rec_step" -le "$s_rec" ]'
read -r _ _ b_points <<<"$(points_of "$calm")"

# SVG: FILE MARKERS(yes|no) POINTS(loss tokens/s held-out): prints what is wrong, nothing when
# all is well
check_svg() {
  "$py" - "$@" <<'PY'
import re, sys, xml.etree.ElementTree as ET
path, want_marker = sys.argv[1], sys.argv[2] == "yes"
root = ET.parse(path).getroot()
ns = "{http://www.w3.org/2000/svg}"
if root.tag != ns + "svg": print("root is", root.tag)
def rgb(style):
    m = re.search(r"stroke:rgb\(([\d.]+)%,([\d.]+)%,([\d.]+)%\)", style or "")
    return tuple(round(float(v) * 2.55) for v in m.groups()) if m else None
paths = list(root.iter(ns + "path"))
points = lambda d: len(re.findall(r"[ML]", d or ""))
longest = lambda colour: max([points(p.get("d")) for p in paths if rgb(p.get("style")) == colour] or [0])
want = [int(a) for a in sys.argv[3:6]]
for name, colour, want in zip(("loss", "tokens/s", "held-out loss"),
                              ((31, 119, 180), (23, 190, 207), (255, 127, 14)), want):
    # cairo merges a point that lies on the line through its neighbours (at 1/256 pixel)
    if not 0.9 * want <= longest(colour) <= want:
        print("the %s curve has %d points, want %d" % (name, longest(colour), want))
def vertical(p):
    c = re.findall(r"[ML] ([\d.]+) ([\d.]+)", p.get("d") or "")
    return len(c) == 2 and c[0][0] == c[1][0]
green = [p for p in paths if rgb(p.get("style")) == (44, 160, 44) and vertical(p)]
red = [p for p in paths if rgb(p.get("style")) == (214, 39, 40) and vertical(p)]
if want_marker and len(green) < 3: print("recovered marker lines: %d, want one per panel" % len(green))
if want_marker and len(red) < 3: print("failure marker lines: %d, want one per panel" % len(red))
if not want_marker and (green or red): print("marker lines in a plot with no fault: %d" % (len(green) + len(red)))
PY
}
bad=$(check_svg "$tmp/a.svg" yes $a_points 2>&1)
check "a.svg: valid XML, the curves ($a_points points), the failure and recovered markers ${bad:+($bad)}" \
  '[ -z "$bad" ]'
bad=$(check_svg "$tmp/b.svg" no $b_points 2>&1)
check "b.svg: valid XML, the curves ($b_points points), no marker ${bad:+($bad)}" '[ -z "$bad" ]'

# PNG: FILE JSON W H MARKERS(yes|no) REC_STEP
check_png() {
  "$py" - "$@" <<'PY'
import json, sys
from PIL import Image
path, meta, want_marker = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[5] == "yes"
w, h, rec_step = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
if open(path, "rb").read(8) != b"\x89PNG\r\n\x1a\n": print("no PNG signature")
im = Image.open(path).convert("RGB")
if im.size != (w, h): print("size", im.size, "want", (w, h))
px = im.load()
x0, x1, top, bottom = int(meta["x_axis_start"]), int(meta["x_axis_end"]), int(meta["y_top"]), int(meta["y_bottom"])
box = [(x, y) for x in range(x0 + 2, x1 - 2, 3) for y in range(top + 2, bottom - 2, 3)]
busy = sum(px[p] != (255, 255, 255) for p in box) / len(box)
if busy < 0.3: print("only %.0f%% of the plot area drawn" % (100 * busy))
blue = sum(px[x, y] == (31, 119, 180) for x in range(x0, x1) for y in range(top, bottom))
if blue < (x1 - x0) // 2: print("loss curve pixels: %d" % blue)
coloured = lambda c: max(c) - min(c) > 30  # every viridis colour; not white, grey or black
heat = sum(coloured(px[x, bottom - 5]) for x in range(x0 + 10, x1 - 10))
if heat < 0.9 * (x1 - x0 - 20): print("heatmap pixels along the bottom row: %d" % heat)
green = lambda x: sum(px[x, y] == (44, 160, 44) for y in range(top, bottom))
everywhere = sum(green(x) for x in range(w))
marks = [m for m in meta["markers"] if m["kind"] == "recovered"]
if not want_marker:
    if everywhere or meta["markers"]:
        print("marker colour in a plot with no fault: %d pixels, %s" % (everywhere, meta["markers"]))
    sys.exit(0)
if len(marks) != 1: print("recovered markers:", meta["markers"]); sys.exit(0)
m = marks[0]
if m["step"] != rec_step: print("the marker is at step %d, want %d" % (m["step"], rec_step))
want_x = x0 + (rec_step - meta["step_axis_start"]) / (meta["step_axis_end"] - meta["step_axis_start"]) * (x1 - x0)
if abs(m["x"] - want_x) > 8: print("marker x %s, but step %d is at x %.1f" % (m["x"], rec_step, want_x))
col = max(green(int(m["x"]) - 1), green(int(m["x"])))
if col < 0.6 * (bottom - top):
    print("the recovered colour covers %d of %d pixels of column %d" % (col, bottom - top, m["x"]))
PY
}
bad=$(check_png "$tmp/a.png" "$tmp/a_png.json" 1000 760 yes "$rec_step" 2>&1)
check "a.png: 1000 x 760, curves, heatmap, the recovered marker at step $rec_step ${bad:+($bad)}" '[ -z "$bad" ]'
bad=$(check_png "$tmp/b.png" "$tmp/b_png.json" 1200 900 no 0 2>&1)
check "b.png: 1200 x 900 by default, curves, heatmap, no marker ${bad:+($bad)}" '[ -z "$bad" ]'

# ---- bad input against a live coordinator ----
one_line "$moectl" plot job-999 -o "$tmp/c.svg"
check "an unknown job: exit 2, NOT_FOUND, no file ($err)" \
  '[ $rc -eq 2 ] && [[ "$err" == *NOT_FOUND* ]] && [ -z "$(ls "$tmp" | grep "^c\.svg")" ]'
one_line "$moectl" plot "$job" -o "$tmp/nowhere/c.svg"
check "a directory that does not exist: exit 2 ($err)" \
  '[ $rc -eq 2 ] && [[ "$err" == *"$tmp/nowhere/c.svg"*"No such file"* ]]'
one_line "$moectl" plot "$job" -o "$tmp/a.png/c.svg"
check "a path under a file: exit 2 ($err)" '[ $rc -eq 2 ] && [[ "$err" == *"Not a directory"* ]]'

# ---- offline, from the dumps, with the coordinator gone ----
"$moectl" cluster down --dir "$cdir" >/dev/null
"$moectl" plot --from-steps "$tmp/steps.json" --from-status "$tmp/status.json" -o "$tmp/off.svg" \
  --json >"$tmp/off.json" 2>"$tmp/err"
check "offline from the dumps" '[ $? -eq 0 ] && [ -s "$tmp/off.svg" ]' || cat "$tmp/err"
marks() { json '" ".join("%s@%d" % (m["kind"], m["step"]) for m in d["markers"])' <"$1"; }
check "offline marks the same events ($(marks "$tmp/off.json"))" \
  '[ -n "$(marks "$tmp/off.json")" ] && [ "$(marks "$tmp/off.json")" = "$(marks "$tmp/a_svg.json")" ]'
echo '{"loss": 1.5}' >"$tmp/broken.json"
one_line "$moectl" plot --from-steps "$tmp/broken.json" -o "$tmp/d.svg"
check "a dump that is not steps: exit 2, naming FILE:LINE ($err)" '[ $rc -eq 2 ] && [[ "$err" == *"broken.json:1:"* ]]'

[ $fails -eq 0 ] && echo "cli_plot: all checks passed" || echo "cli_plot: $fails checks failed"
exit $((fails > 0))
