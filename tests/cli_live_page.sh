#!/usr/bin/env bash
# The coordinator's live page (docs/operations.md "The live page") in Debian's Chromium,
# headless, driven by chromedriver through python3-selenium. A local cluster started with
# --http runs a long job; the page, opened once with the client token in the address's
# fragment, shows the job's step, and the step advances without the page being loaded again
# (a marker set in the page survives); the loss curve's SVG has points, the slot table a row
# per slot, and the token has left the address bar. The page's files are served without the
# token, its data not. A screenshot goes to the test's directory and, for people to look at,
# to $MOE_BUILD_DIR/live_page.png. A cluster with --tls serves the page over HTTPS. Skips, saying so, only where chromium, chromedriver or
# selenium is not installed (deploy/install-deps.sh installs them).
set -u
moectl=$1
corpus=/usr/share/common-licenses/GPL-3
source "$(dirname "$0")/cluster_lib.sh"
for need in /usr/bin/chromium /usr/bin/chromedriver; do
  [ -x "$need" ] || { echo "skip: $need is not installed (apt-get install chromium chromium-driver)"; exit 0; }
done
"$py" -c 'import selenium' 2>/dev/null || { echo "skip: python3-selenium is not installed"; exit 0; }
cluster_test_init cli_live_page

"$moectl" cluster up --pods 1 --slots 2 --threads 1 --http --dir "$cdir" >"$tmp/up.out" 2>&1
rc=$?
check "cluster up --http: 1 x 2 slots" '[ $rc -eq 0 ]'
[ $rc -eq 0 ] || { cat "$tmp/up.out"; exit 1; }
http=$(cat "$cdir/coordinator.http")
token=$(cat "$cdir/client.token")

cat >"$tmp/job.yaml" <<YAML
name: on the page
mesh: {pods: 1, slots: 2}
model: {d_model: 32, layers: 2, heads: 2, seq_len: 32, experts: 4, d_ff: 64}
router: {top_k: 2}
data: {sources: [{path: $corpus}], val_fraction: 0.05}
run: {steps: 1000000, batch_size: 8, log_every: 100000, eval_every: 100}
YAML
job=$("$moectl" submit "$tmp/job.yaml")
check "submitted ($job)" '[[ "$job" =~ ^job-[0-9]+$ ]]'
wait_until 60 '[ "$(step_of "$job")" -gt 200 ] 2>/dev/null'

code=$(curl -s -o "$tmp/index.html" -w '%{http_code}' "http://$http/")
check "the page's HTML without the token: 200, and no job in it" \
  '[ "$code" = 200 ] && grep -q "app.js" "$tmp/index.html" && ! grep -q "$job" "$tmp/index.html"'
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$http/api/jobs")
check "its data without the token: 401" '[ "$code" = 401 ]'
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$http/api/jobs/job-999")
check "an unknown job: 404" '[ "$code" = 404 ]'
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$http/api/jobs/$job/steps?from=x")
check "a bad parameter: 400" '[ "$code" = 400 ]'

"$py" - "http://$http/#token=$token&job=$job" "$tmp/live_page.png" >"$tmp/page.out" 2>&1 <<'PY'
import re, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

url, shot = sys.argv[1], sys.argv[2]
opts = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1400,1000", "--disable-extensions", "--no-first-run"]:
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
d.set_page_load_timeout(20)

def until(what, cond, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + what)

def step():
    m = re.match(r"(\d+) /", d.find_element("id", "job-step").text)
    return int(m.group(1)) if m else None

try:
    d.get(url)
    until("the job's step on the page", step)
    first = step()
    d.execute_script("window.notReloaded = 42")
    later = until("the step to advance", lambda: step() > first and step())
    same_page = d.execute_script("return window.notReloaded") == 42
    print("step on the page", first, "then", later, "without a reload:", same_page)
    points = until("the loss curve", lambda: int(d.find_element(
        "css selector", "#loss-chart polyline.train").get_attribute("data-points") or 0) >= 2 and
        d.find_element("css selector", "#loss-chart polyline.train").get_attribute("data-points"))
    val = d.find_element("css selector", "#loss-chart polyline.val").get_attribute("data-points")
    rows = len(d.find_elements("css selector", "#slots tbody tr"))
    workers = [e.text for e in d.find_elements("css selector", "#slots tbody tr td:nth-child(3)")]
    print("loss curve points", points, "held-out points", val, "slot rows", rows, workers)
    loss_text = until("the loss in bits per byte", lambda: "bits/byte" in d.find_element(
        "id", "job-loss").text and d.find_element("id", "job-loss").text)
    print("loss on the page:", loss_text)
    print("address", d.current_url.split("#", 1)[-1] if "#" in d.current_url else "")
    time.sleep(0.5)  # one more poll drawn, for the picture
    d.save_screenshot(shot)
    ok = (same_page and later > first and int(points) >= 2 and int(val) >= 1 and rows == 2 and
          all(w.startswith("w-") for w in workers) and "token" not in d.current_url)
    print("PAGE OK" if ok else "PAGE WRONG")
finally:
    d.quit()
PY
rc=$?
sed 's/^/     /' "$tmp/page.out"
check "headless Chromium: the step advances on the page without a reload" \
  '[ $rc -eq 0 ] && grep -q "without a reload: True" "$tmp/page.out"'
check "... the loss curve has points, held-out ones too, and the slot table a row per slot" \
  'grep -q "^PAGE OK" "$tmp/page.out"'
check "... the loss shown in nats per token and bits per byte of text" \
  'grep -qE "^loss on the page: [0-9.]+ = [0-9.]+ bits/byte" "$tmp/page.out"'
check "... a screenshot was written" '[ -s "$tmp/live_page.png" ] && [ "$(head -c 4 "$tmp/live_page.png" | tail -c 3)" = PNG ]'
[ -n "${MOE_BUILD_DIR:-}" ] && [ -s "$tmp/live_page.png" ] && cp "$tmp/live_page.png" "$MOE_BUILD_DIR/live_page.png" &&
  echo "     screenshot: $MOE_BUILD_DIR/live_page.png"

"$moectl" cancel "$job" >/dev/null 2>&1

# with --tls the HTTP port serves HTTPS with the gRPC port's certificate, and nothing in clear
tdir=$tmp/tls-cluster
"$moectl" cluster up --workers 1 --threads 1 --http --tls --dir "$tdir" >"$tmp/up-tls.out" 2>&1
rc=$?
check "cluster up --http --tls" '[ $rc -eq 0 ]'
thttp=$(cat "$tdir/coordinator.http" 2>/dev/null)
check "... prints an https URL" 'grep -q "live page    https://$thttp/" "$tmp/up-tls.out"'
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tdir/tls/cert.pem" \
  -H "Authorization: Bearer $(cat "$tdir/client.token")" "https://$thttp/api/cluster")
check "HTTPS with the cluster's CA and the token: 200" '[ "$code" = 200 ]'
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$thttp/")
check "plain HTTP to it gets no page ($code)" '[ "$code" != 200 ]'
exit $((fails > 0))
