// The live page: polls the coordinator's JSON API every second and draws what it reads.
//   /api/cluster                 the header line
//   /api/jobs?page_token=T       the job list, a page at a time
//   /api/jobs/<id>               the selected job: numbers, slots, events, last step
//   /api/jobs/<id>/steps?from=N  its loss curve, only the steps not yet seen
// Every request carries the client token as "Authorization: Bearer" (see index.html).
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const MARKED_EVENTS = new Set(["recovered", "moved", "repaired", "worker_dead", "fault", "failed"]);

const state = {
  token: sessionStorage.getItem("moed-token") || "",
  jobId: "",            // the job shown
  pinned: false,        // chosen by the user (else: follow the newest running job)
  jobs: [],             // the pages of jobs loaded so far
  nextToken: "",
  steps: [],            // the shown job's steps, ascending
  nextStep: 1,
  events: [],
};

const $ = (id) => document.getElementById(id);

// ---- the token and the address ----

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    state.token = params.get("token");
    sessionStorage.setItem("moed-token", state.token);
  }
  if (params.get("job")) {
    state.jobId = params.get("job");
    state.pinned = true;
  }
  writeFragment(); // the token leaves the address bar (and the history) at once
}

function writeFragment() {
  const hash = state.pinned && state.jobId ? "#job=" + encodeURIComponent(state.jobId) : "";
  history.replaceState(null, "", location.pathname + location.search + hash);
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized();
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("moed-token", state.token);
  $("login").hidden = true;
  tick();
});

// ---- formatting ----

function fmt(x, digits) {
  if (x === undefined || x === null || !isFinite(x)) return "–";
  return Number(x).toFixed(digits);
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function fmtDuration(s) {
  if (!s || s <= 0) return "–";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fmtTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---- charts (inline SVG) ----

const BOX = { left: 56, right: 574, top: 10, bottom: 190 };

function niceTicks(lo, hi, n) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return ticks;
}

// series: [{cls, points: [[x, y], ...], dots}], marks: [x, ...]
function drawChart(svg, series, marks, yDigits) {
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(el("svg:text", { x: 300, y: 110, "text-anchor": "middle" }, "no steps yet"));
    return;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= pad, y1 += pad;
  const sx = (x) => BOX.left + (x - x0) / (x1 - x0) * (BOX.right - BOX.left);
  const sy = (y) => BOX.bottom - (y - y0) / (y1 - y0) * (BOX.bottom - BOX.top);
  for (const t of niceTicks(y0, y1, 5)) {
    svg.append(el("svg:line", { class: "grid", x1: BOX.left, x2: BOX.right, y1: sy(t), y2: sy(t) }));
    svg.append(el("svg:text", { x: BOX.left - 6, y: sy(t) + 4, "text-anchor": "end" },
                  t.toFixed(yDigits)));
  }
  for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    svg.append(el("svg:text", { x: sx(t), y: BOX.bottom + 16, "text-anchor": "middle" }, t));
  }
  svg.append(el("svg:line", { class: "axis", x1: BOX.left, x2: BOX.left, y1: BOX.top, y2: BOX.bottom }));
  svg.append(el("svg:line", { class: "axis", x1: BOX.left, x2: BOX.right, y1: BOX.bottom, y2: BOX.bottom }));
  svg.append(el("svg:text", { x: BOX.right, y: BOX.bottom + 30, "text-anchor": "end" }, "step"));
  for (const m of marks || []) {
    if (m < x0 || m > x1) continue;
    const line = el("svg:line", { class: "mark", x1: sx(m), x2: sx(m), y1: BOX.top, y2: BOX.bottom });
    line.append(el("svg:title", {}, "recovery or move near step " + m));
    svg.append(line);
  }
  for (const s of series) {
    const pts = thin(s.points, 1200);
    const poly = el("svg:polyline", {
      class: "curve " + s.cls,
      points: pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "),
      "data-points": pts.length,
    });
    svg.append(poly);
    if (s.dots && pts.length <= 150) for (const p of pts)
      svg.append(el("svg:circle", { class: "dot " + s.cls, cx: sx(p[0]), cy: sy(p[1]), r: 2.5 }));
  }
}

function thin(points, max) {
  if (points.length <= max) return points;
  const stride = Math.ceil(points.length / max), out = [];
  for (let i = 0; i < points.length; i += stride) out.push(points[i]);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

function drawLoad(svg, load) {
  svg.replaceChildren();
  if (!load || !load.length) {
    svg.append(el("svg:text", { x: 300, y: 110, "text-anchor": "middle" }, "no steps yet"));
    return;
  }
  const top = Math.max(...load, 1.5 / load.length);
  const w = (BOX.right - BOX.left) / load.length;
  const sy = (y) => BOX.bottom - y / top * (BOX.bottom - BOX.top);
  for (const t of niceTicks(0, top, 4)) {
    svg.append(el("svg:line", { class: "grid", x1: BOX.left, x2: BOX.right, y1: sy(t), y2: sy(t) }));
    svg.append(el("svg:text", { x: BOX.left - 6, y: sy(t) + 4, "text-anchor": "end" }, t.toFixed(2)));
  }
  load.forEach((v, i) => {
    const bar = el("svg:rect", { class: "bar", x: BOX.left + i * w + w * 0.15, width: w * 0.7,
                                 y: sy(v), height: BOX.bottom - sy(v) });
    bar.append(el("svg:title", {}, "expert " + i + ": " + (v * 100).toFixed(1) + "%"));
    svg.append(bar);
    if (load.length <= 32)
      svg.append(el("svg:text", { x: BOX.left + (i + 0.5) * w, y: BOX.bottom + 16,
                                  "text-anchor": "middle" }, i));
  });
  const even = sy(1 / load.length);
  svg.append(el("svg:line", { class: "balanced", x1: BOX.left, x2: BOX.right, y1: even, y2: even }));
  svg.append(el("svg:line", { class: "axis", x1: BOX.left, x2: BOX.right, y1: BOX.bottom, y2: BOX.bottom }));
}

// ---- the job list ----

async function loadJobs() {
  // The pages already shown are read again from the start, so states and steps stay current.
  const jobs = [];
  let token = "", pages = Math.max(1, state.pages || 1);
  for (let i = 0; i < pages; i++) {
    const page = await api("/api/jobs?page_size=50&page_token=" + encodeURIComponent(token));
    jobs.push(...page.jobs);
    token = page.next_page_token;
    if (!token) break;
  }
  state.jobs = jobs;
  state.nextToken = token;
  if (!state.pinned || !state.jobId) {
    const running = jobs.filter((j) => j.state === "RUNNING");
    const pick = running.length ? running[running.length - 1] : jobs[jobs.length - 1];
    selectJob(pick ? pick.job_id : "", false);
  }
  drawJobs();
}

function drawJobs() {
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  for (const j of state.jobs.slice().reverse()) { // newest first
    const tr = el("tr", { "data-job": j.job_id });
    if (j.job_id === state.jobId) tr.classList.add("selected");
    tr.append(el("td", {}, j.job_id), el("td", { title: j.name }, j.name));
    const st = el("td");
    st.append(el("span", { class: "state " + j.state }, j.state.toLowerCase()));
    tr.append(st, el("td", { class: "num" }, j.step + " / " + j.total_steps),
              el("td", { class: "num" }, j.step ? fmt(j.loss, 3) : "–"));
    tr.addEventListener("click", () => selectJob(j.job_id, true));
    body.append(tr);
  }
  $("more").hidden = !state.nextToken;
}

$("more").addEventListener("click", () => {
  state.pages = (state.pages || 1) + 1;
  tick();
});

function selectJob(id, byUser) {
  if (byUser) state.pinned = true;
  if (id === state.jobId && !byUser) return;
  if (id !== state.jobId) {
    state.jobId = id;
    state.steps = [];
    state.nextStep = 1;
  }
  writeFragment();
  if (byUser) { drawJobs(); tick(); }
}

// ---- one job ----

async function loadSteps(id) {
  for (let round = 0; round < 10; round++) { // catching up on a long run: a page per round
    const page = await api("/api/jobs/" + encodeURIComponent(id) + "/steps?from=" + state.nextStep);
    if (id !== state.jobId) return;
    if (!page.steps.length) return;
    state.steps.push(...page.steps);
    state.nextStep = page.steps[page.steps.length - 1].step + 1;
    if (page.steps.length < 2000) return;
  }
}

function stepAt(ms) { // the first step reported at or after `ms`
  const s = state.steps.find((s) => s.reported_unix_ms >= ms);
  return s ? s.step : undefined;
}

function drawJob(job) {
  $("no-job").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = job.job_id;
  $("job-name").textContent = job.name;
  $("job-state").textContent = job.state.toLowerCase() +
    (job.held ? " (held: " + job.held + ")" : job.recovering ? " (recovering)" : "");
  $("job-state").className = "state " + job.state;
  $("job-step").textContent = job.step + " / " + job.total_steps;
  $("job-committed").textContent = job.committed_step;
  // nats per token, and bits per byte of text: the figure that compares across tokenizers
  const bpb = (v) => (v > 0 ? " = " + fmt(v, 3) + " bits/byte" : "");
  $("job-loss").textContent = job.step ? fmt(job.loss, 4) + bpb(job.bits_per_byte) : "–";
  $("job-val-loss").textContent = job.val_loss ? fmt(job.val_loss, 4) + bpb(job.val_bits_per_byte) : "–";
  $("job-tps").textContent = job.tokens_per_second ? Math.round(job.tokens_per_second) : "–";
  $("job-eta").textContent = job.state === "RUNNING" && job.eta_seconds > 0 ? fmtDuration(job.eta_seconds) : "–";
  $("job-recoveries").textContent = job.recoveries;
  $("job-moves").textContent = job.moves;
  $("job-error").textContent = job.error || "";

  const marks = job.events.filter((e) => MARKED_EVENTS.has(e.kind))
                          .map((e) => stepAt(e.unix_ms)).filter((s) => s !== undefined);
  const train = state.steps.map((s) => [s.step, s.loss]);
  const val = state.steps.filter((s) => s.val_loss > 0).map((s) => [s.step, s.val_loss]);
  drawChart($("loss-chart"), [{ cls: "train", points: train }, { cls: "val", points: val, dots: true }],
            marks, 2);
  drawChart($("tps-chart"), [{ cls: "tps", points: state.steps.map((s) => [s.step, s.tokens_per_second]) }],
            marks, 0);
  drawLoad($("load-chart"), job.last ? job.last.expert_load : null);
  drawSlots(job.slots);
  drawPods(job.pod_summaries || []);
  drawEvents(job.events);
}

function drawSlots(slots) {
  const body = $("slots").tBodies[0];
  body.replaceChildren();
  for (const s of slots) {
    const status = s.ended ? (s.ok ? "ended ok" : "failed: " + s.error) : s.worker_id ? "running" : "unbound";
    const tr = el("tr");
    tr.append(el("td", {}, s.pod), el("td", {}, s.slot),
              el("td", { title: s.worker_address }, s.worker_id || "–"),
              el("td", { class: "num" }, s.step), el("td", { class: "num" }, fmt(s.step_seconds, 3)),
              el("td", { class: "num" }, fmt(s.comm_seconds, 3)),
              el("td", { class: "num" }, fmtBytes(s.total_bytes_alltoall)),
              el("td", { class: "num" }, fmtBytes(s.total_bytes_allreduce)),
              linksCell(s.links || []),
              el("td", { class: s.ended && !s.ok ? "bad" : "" }, status));
    body.append(tr);
  }
}

// a mesh of more than 500 slots comes by pod (the API's "pod_summaries": PodSummary)
function drawPods(pods) {
  $("slots").hidden = pods.length > 0;
  $("pods").hidden = pods.length === 0;
  const body = $("pods").tBodies[0];
  body.replaceChildren();
  for (const p of pods) {
    const steps = p.min_step === p.max_step ? p.min_step : p.min_step + "–" + p.max_step;
    const tr = el("tr");
    tr.append(el("td", {}, p.pod), el("td", { class: "num" }, p.slots),
              el("td", { class: "num" }, p.bound), el("td", { class: "num" }, p.alive),
              el("td", { class: "num" }, p.training), el("td", { class: "num" }, p.ended),
              el("td", { class: "num" }, p.failed), el("td", { class: "num" }, steps),
              el("td", { class: p.worst === "failed" || p.worst === "lost" ? "bad" : "" }, p.worst));
    body.append(tr);
  }
}

// "shm 1, tcp 2": how many peers the slot reaches by each transport; each peer in the title
function linksCell(links) {
  const count = {};
  for (const l of links) count[l.transport] = (count[l.transport] || 0) + 1;
  const text = Object.keys(count).sort().map(t => t + " " + count[t]).join(", ");
  const title = links.map(l => "(" + l.pod + ", " + l.slot + ") " + l.transport).join("\n");
  return el("td", { title: title }, text || "–");
}

function drawEvents(events) {
  const list = $("events");
  list.replaceChildren();
  for (const e of events.slice().reverse()) { // newest first
    const li = el("li", { class: e.kind });
    li.append(el("span", { class: "time" }, fmtTime(e.unix_ms)), el("span", { class: "kind" }, e.kind),
              document.createTextNode(" " + e.message));
    list.append(li);
  }
}

// ---- the loop ----

let busy = false;

async function tick() {
  if (busy) return;
  busy = true;
  try {
    const cluster = await api("/api/cluster");
    $("cluster").textContent = "coordinator " + cluster.coordinator_address + " · " +
      (cluster.workers_idle + cluster.workers_busy) + " of " + cluster.workers_total +
      " workers alive · up " + fmtDuration(cluster.uptime_seconds);
    $("login").hidden = true;
    $("main").hidden = false;
    await loadJobs();
    if (state.jobId) {
      const id = state.jobId;
      const job = await api("/api/jobs/" + encodeURIComponent(id));
      await loadSteps(id);
      if (id === state.jobId) drawJob(job);
    } else {
      $("job").hidden = true;
      $("no-job").hidden = false;
    }
    $("live").classList.remove("stale");
  } catch (e) {
    if (e instanceof Unauthorized) showLogin(state.token ? "That token was refused." : "");
    else $("live").classList.add("stale");
    $("live").title = String(e.message || e);
  } finally {
    busy = false;
  }
}

readFragment();
tick();
setInterval(tick, POLL_MS);
