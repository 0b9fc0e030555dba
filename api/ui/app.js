// workmesh dashboard: plain JavaScript, no build step, no third-party request.
// Reads go to this node's own endpoints (/ui/api/*, /jobs); live updates come
// from /ui/events (Server-Sent Events); the only write is POST /jobs.
"use strict";

const TOKEN_KEY = "workmesh.apiToken"; // sessionStorage: this tab only
const PAGE_SIZE = 25;
const FLOW_SECONDS = 300;
const KINDS = ["submitted", "started", "done", "failed"];

const state = {
  node: null,          // /ui/api/node
  flow: new Map(),     // second -> [submitted, started, done, failed]
  view: "mesh",
  jobId: null,         // the job page's job
  cursors: [null],     // the jobs list's page cursors (first page = null)
  next: null,
  es: null,
  reconnectTimer: null,
  listTimer: null,
  lastSubmitted: null,
};

// -- small helpers -------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function short(id) { return id ? id.slice(0, 12) : "–"; }

function idCell(id, extra) {
  return el("span", { class: "mono", title: id }, short(id), extra || null);
}

function badge(text, cls) { return el("span", { class: `badge ${cls || text}` }, text); }

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(2)} s`;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(tsMs) {
  if (!tsMs) return "–";
  return new Date(tsMs).toISOString().replace("T", " ").replace("Z", " UTC");
}

async function getJSON(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw problemError(resp, body);
  return body;
}

function problemError(resp, body) {
  const err = new Error(describeProblem(resp, body));
  err.status = resp.status;
  err.problem = body;
  return err;
}

// A problem+json answer in words: its title, then its detail.
function describeProblem(resp, body) {
  if (body && typeof body === "object" && (body.title || body.detail)) {
    const title = body.title || `HTTP ${resp.status}`;
    return body.detail ? `${title}: ${body.detail}` : title;
  }
  return `HTTP ${resp.status} ${resp.statusText || ""}`.trim();
}

// -- JSON with blob links --------------------------------------------------------

const BLOB_RE = /^[0-9a-fA-F]{16,128}$/;

function isBlob(v) {
  return v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 1 &&
    typeof v.blob === "string" && BLOB_RE.test(v.blob);
}

// Pretty-prints ``value`` into ``out`` (a <pre>): {"blob": H} becomes a link to /blobs/H.
function renderJSON(out, value) {
  out.replaceChildren();
  const write = (v, indent) => {
    const pad = "  ".repeat(indent);
    if (isBlob(v)) {
      out.append('{"blob": ');
      out.append(el("a", { href: `/blobs/${encodeURIComponent(v.blob)}`, title: "open this blob" }, JSON.stringify(v.blob)));
      out.append("}");
    } else if (Array.isArray(v)) {
      if (!v.length) { out.append("[]"); return; }
      out.append("[\n");
      v.forEach((item, i) => {
        out.append(pad + "  ");
        write(item, indent + 1);
        out.append(i < v.length - 1 ? ",\n" : "\n");
      });
      out.append(pad + "]");
    } else if (v && typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) { out.append("{}"); return; }
      out.append("{\n");
      keys.forEach((k, i) => {
        out.append(`${pad}  ${JSON.stringify(k)}: `);
        write(v[k], indent + 1);
        out.append(i < keys.length - 1 ? ",\n" : "\n");
      });
      out.append(pad + "}");
    } else {
      out.append(JSON.stringify(v === undefined ? null : v));
    }
  };
  write(value, 0);
}

// -- views and routing ---------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/jobs\/([0-9a-f]{40})$/);
  if (m) show("job", m[1]);
  else if (hash.startsWith("#/jobs")) show("jobs");
  else if (hash.startsWith("#/node")) show("node");
  else show("mesh");
}

function show(view, jobId) {
  if (watchers.has("page") && (view !== "job" || jobId !== state.jobId)) {
    watchers.get("page").abort();
    watchers.delete("page");
  }
  state.view = view;
  state.jobId = jobId || null;
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    const current = a.dataset.view === view || (view === "job" && a.dataset.view === "jobs");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (view === "jobs") loadJobs();
  if (view === "job") loadJob(jobId);
  if (view === "node") loadNode();
  if (view === "mesh") { drawFlow(); loadNodes(); }
}

// -- the mesh view ----------------------------------------------------------------

function applySummary(doc) {
  if (!doc) return;
  const jobs = doc.jobs || {};
  $("#c-queue").textContent = doc.queue_depth ?? "–";
  $("#c-running").textContent = jobs.running ?? "–";
  $("#c-done").textContent = `${jobs.done ?? 0} / ${jobs.failed ?? 0}`;
  const lat = doc.latency;
  $("#c-p50").textContent = lat ? ms(lat.p50_ms) : "–";
  $("#c-p95").textContent = lat ? ms(lat.p95_ms) : "–";
  $("#c-samples").textContent = lat ? `${lat.samples} jobs, last ${Math.round(lat.window_s / 60)} min` : "not measured";
  const w = doc.workers || {};
  $("#c-busy").textContent = `${w.busy ?? "–"} / ${w.slots ?? "–"}`;
  for (const point of doc.flow || []) state.flow.set(point[0], point.slice(1));
  const keys = [...state.flow.keys()].sort((a, b) => a - b);
  while (keys.length > FLOW_SECONDS) state.flow.delete(keys.shift());
  if (state.view === "mesh") drawFlow();
  if (state.view === "node" && doc.store) drawStore(doc.store);
}

function drawFlow() {
  const svg = $("#flow-chart");
  // Drawn in CSS pixels of its current box, so text is never stretched.
  const W = Math.max(200, Math.round(svg.clientWidth || 800)), H = Math.max(120, Math.round(svg.clientHeight || 220));
  const L = 34, B = 20, T = 8;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const seconds = [...state.flow.keys()].sort((a, b) => a - b);
  const end = seconds.length ? seconds[seconds.length - 1] : Math.floor(Date.now() / 1000);
  const start = end - FLOW_SECONDS + 1;
  let max = 0;
  for (const s of seconds) for (const v of state.flow.get(s)) max = Math.max(max, v);
  const niceMax = niceCeil(Math.max(4, max)); // at least 0..4, so the grid lines stay whole numbers
  const x = (s) => L + ((s - start) / (FLOW_SECONDS - 1)) * (W - L - 4);
  const y = (v) => T + (1 - v / niceMax) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const parts = [];
  for (let i = 0; i <= 4; i += 1) {
    const v = (niceMax * i) / 4;
    parts.push(mk("line", { class: "grid", x1: L, x2: W - 4, y1: y(v), y2: y(v) }));
    parts.push(mk("text", { class: "axis", x: L - 4, y: y(v) + 4, "text-anchor": "end" }, fmtRate(v)));
  }
  for (let m = 5; m >= 0; m -= 1) {
    const s = end - m * 60;
    parts.push(mk("text", { class: "axis", x: Math.min(W - 20, Math.max(L + 10, x(s))), y: H - 4, "text-anchor": "middle" },
      m ? `-${m} min` : "now"));
  }
  KINDS.forEach((kind, k) => {
    const pts = [];
    for (let s = start; s <= end; s += 1) {
      const row = state.flow.get(s);
      pts.push(`${x(s).toFixed(1)},${y(row ? row[k] : 0).toFixed(1)}`);
    }
    parts.push(mk("polyline", { class: `s ${kind}`, points: pts.join(" ") }));
  });
  svg.replaceChildren(...parts);
  const recent = seconds.slice(-10).map((s) => state.flow.get(s));
  const sums = KINDS.map((_, k) => recent.reduce((acc, r) => acc + r[k], 0));
  const span = Math.max(1, recent.length);
  $("#flow-desc").textContent = seconds.length
    ? `Last ${span} s per second: ` + KINDS.map((kind, k) => `${kind} ${(sums[k] / span).toFixed(1)}`).join(", ") +
      `. Peak over 5 min: ${max} per second. Counted as this node's store sees jobs.`
    : "No data yet.";
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtRate(v) { return Number.isInteger(v) ? String(v) : v.toFixed(1); }

async function loadNodes() {
  try {
    renderNodes((await getJSON("/ui/api/nodes")).nodes);
  } catch (err) {
    $("#nodes-note").textContent = `Could not read the nodes: ${err.message}`;
  }
}

function renderNodes(nodes) {
  const rows = nodes.map((n) => {
    const load = n.slots === undefined ? el("span", { class: "muted" }, "unknown")
      : el("span", {}, el("meter", { min: 0, max: Math.max(1, n.slots), value: n.busy, "aria-label": `${n.busy} of ${n.slots} slots busy` }),
        ` ${n.busy} / ${n.slots} busy`);
    const live = n.liveness === "self" ? badge("this node", "self") : badge(n.liveness);
    const seen = n.liveness === "self" ? null : el("span", { class: "muted" }, ` ${ago(n.last_seen_s_ago)}`);
    return el("tr", { "data-node-id": n.node_id, "data-liveness": n.liveness },
      el("td", {}, idCell(n.node_id)),
      el("td", { class: "mono" }, n.address || "–", n.api ? el("span", { class: "muted" }, ` api ${n.api}`) : null),
      el("td", {}, live, seen),
      el("td", {}, load),
      el("td", {}, n.version || "–"),
      el("td", {}, n.loop || "–"),
      el("td", {}, duration(n.uptime_seconds)));
  });
  $("#nodes-table tbody").replaceChildren(...rows);
  const live = nodes.filter((n) => n.liveness === "alive" || n.liveness === "self").length;
  const windowS = state.node && state.node.liveness_s;
  $("#nodes-note").textContent = `${live} of ${nodes.length} live.` +
    (windowS ? ` A peer is gone when it has not answered for ${windowS} s.` : "");
}

// -- jobs ---------------------------------------------------------------------------

function jobsUrl() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const q = $("#s-q").value.trim();
  const status = $("#s-status").value;
  if (q) params.set("q", q);
  if (status) params.set("status", status);
  const after = state.cursors[state.cursors.length - 1];
  if (after) params.set("after", after);
  return `/ui/api/jobs?${params}`;
}

async function loadJobs() {
  const tbody = $("#jobs-table tbody");
  try {
    const doc = await getJSON(jobsUrl());
    state.next = doc.next;
    const now = Date.now();
    const rows = doc.jobs.map((j) => el("tr", { "data-job-id": j.id, "data-status": j.status },
      el("td", {}, el("a", { href: `#/jobs/${j.id}`, class: "mono", title: j.id }, short(j.id))),
      el("td", {}, badge(j.status)),
      el("td", {}, j.type),
      el("td", {}, `${j.attempts} / ${j.max_attempts}`),
      el("td", {}, j.worker ? idCell(j.worker) : "–"),
      el("td", { title: when(j.created_ms) }, duration(Math.max(0, (now - j.created_ms) / 1000)))));
    if (!rows.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No jobs match.")));
    tbody.replaceChildren(...rows);
    const page = state.cursors.length;
    $("#p-info").textContent = `Page ${page}${doc.next ? "" : " (last)"}; ${doc.scanned} entries scanned.`;
    $("#p-next").disabled = !doc.next;
    $("#p-first").disabled = page === 1;
  } catch (err) {
    tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6 }, `Could not list jobs: ${err.message}`)));
  }
}

function refreshJobsSoon() {
  // Live list: only the first page follows changes (older pages stay put while read).
  if (state.view !== "jobs" || state.cursors.length !== 1 || state.listTimer) return;
  state.listTimer = setTimeout(() => { state.listTimer = null; loadJobs(); }, 300);
}

// Follows one job by long-polling GET /jobs/{id}?wait= until it ends: a job this
// node holds arrives by the event stream too, but one it does not hold only so.
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const watchers = new Map(); // purpose ("page" | "form") -> AbortController

function watchJob(purpose, id, onStatus) {
  const previous = watchers.get(purpose);
  if (previous) previous.abort();
  const ctl = new AbortController();
  watchers.set(purpose, ctl);
  (async () => {
    for (let round = 0; round < 120 && !ctl.signal.aborted; round += 1) { // at most 120 polls of 10 s
      try {
        const resp = await fetch(`/jobs/${id}?wait=10`, { signal: ctl.signal, headers: { Accept: "application/json" } });
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        const job = await resp.json();
        onStatus(job.status);
        if (TERMINAL.has(job.status)) break;
      } catch (err) {
        if (ctl.signal.aborted) return;
        await new Promise((r) => setTimeout(r, 2000)); // a restart or a lost quorum: try again soon
      }
    }
    if (watchers.get(purpose) === ctl) watchers.delete(purpose);
  })();
}

async function loadJob(id) {
  $("#j-id").textContent = id;
  const errBox = $("#j-error");
  try {
    const doc = await getJSON(`/ui/api/jobs/${id}`);
    if (state.jobId !== id) return;
    errBox.hidden = true;
    renderJob(doc);
    if (!TERMINAL.has(doc.job.status) && !watchers.has("page")) {
      let last = doc.job.status;
      watchJob("page", id, (status) => {
        if (state.jobId === id && status !== last) { last = status; loadJob(id); }
      });
    }
  } catch (err) {
    errBox.textContent = `Could not read this job: ${err.message}`;
    errBox.hidden = false;
  }
}

function renderJob(doc) {
  const j = doc.job;
  const dl = $("#j-summary");
  const item = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  dl.replaceChildren(
    ...item("Status", badge(j.status)),
    ...item("Type", j.type),
    ...item("Attempts", `${j.attempts} of at most ${j.max_attempts}`),
    ...item("Worker", j.worker ? idCell(j.worker) : "–"),
    ...item("Submitted by", idCell(j.submitted_by)),
    ...item("Created", when(j.created_ms)),
    ...item("Error", j.error || j.last_error || "–"),
    ...item("Replication", doc.spec ? `${doc.spec.replicas} replicas, quorum ${doc.spec.quorum}, lease ${doc.spec.lease_seconds} s` : "–"),
    ...item("Read by", idCell(doc.read_by, el("span", { class: "muted" }, " (any node can show any job)"))));
  renderJSON($("#j-payload"), doc.payload);
  renderJSON($("#j-result"), j.result);
  const reps = doc.replicas.map((r) => el("tr", { "data-replica": r.node_id },
    el("td", {}, idCell(r.node_id)),
    el("td", {}, r.placed ? "yes" : "no"),
    el("td", { class: "wrap" }, r.granted.length ? r.granted.map((g) => `attempt ${g.attempt} → ${short(g.to)}`).join(", ") : "–"),
    el("td", { class: "wrap" }, r.sealed.length ? r.sealed.map(short).join(", ") : "–")));
  if (!reps.length) reps.push(el("tr", { class: "empty" }, el("td", { colspan: 4 }, "No replica grants yet.")));
  $("#j-replicas tbody").replaceChildren(...reps);
  const items = doc.timeline.map((f) => {
    const kind = f.kind === "grant" && f.action ? `${f.action} grant` : f.kind;
    const check = f.signature_ok && !f.check
      ? badge("signature ok", "ok")
      : badge(f.signature_ok ? `rule broken: ${f.check}` : `invalid: ${f.check}`, "bad");
    return el("li", { class: f.signature_ok && !f.check ? "" : "bad", "data-kind": f.kind, "data-action": f.action || "",
        "data-signer": f.author, "data-role": f.role, "data-verified": String(!!f.signature_ok && !f.check) },
      el("div", { class: "head" },
        el("span", { class: "kind" }, kind),
        el("span", {}, "signed by ", el("span", { class: "mono signer", title: f.author }, short(f.author)), ` (${f.role})`),
        el("span", { class: "meta" }, `attempt ${f.attempt}`),
        el("span", { class: "meta" }, when(f.ts_ms)),
        check),
      el("div", { class: "meta" }, f.summary, el("span", { class: "mono", title: f.fact_id }, ` · fact ${short(f.fact_id)}`)));
  });
  $("#j-timeline").replaceChildren(...items);
}

// -- this node ---------------------------------------------------------------------

async function loadNode() {
  try {
    state.node = await getJSON("/ui/api/node");
  } catch (err) {
    $("#n-info").replaceChildren(el("dt", {}, "Error"), el("dd", {}, err.message));
    return;
  }
  const d = state.node;
  const n = d.node || {};
  const item = (k, v) => [el("dt", {}, k), el("dd", {}, v ?? "–")];
  $("#n-info").replaceChildren(
    ...item("Node id", el("span", { class: "mono" }, n.node_id)),
    ...item("Peer-to-peer", n.address), ...item("API", n.api), ...item("Version", n.version),
    ...item("Event loop", n.loop), ...item("Uptime", duration(n.uptime_seconds)),
    ...item("Worker slots", n.slots === undefined ? null : `${n.busy} busy of ${n.slots}`),
    ...item("Replication", d.replication ? `${d.replication.replicas} replicas, quorum ${d.replication.quorum}, k ${d.replication.k}` : null),
    ...item("Job types", (d.job_types || []).join(", ")),
    ...item("Writes", d.auth ? "need the API token" : "open (no token set)"));
  if (d.store) drawStore(d.store);
  const buckets = (d.routing || []).map((b) => el("tr", {},
    el("td", {}, String(b.index)),
    el("td", { class: "mono" }, `${b.range[0].slice(0, 8)}… – ${b.range[1].slice(0, 8)}…`),
    el("td", { class: "wrap" }, ...b.contacts.flatMap((c, i) => [i ? el("br") : null,
      el("span", { class: "mono", title: c.node_id }, short(c.node_id)), ` ${c.address} (distance 2^${c.distance_bits})`])),
    el("td", {}, String(b.replacements))));
  if (!buckets.length) buckets.push(el("tr", { class: "empty" }, el("td", { colspan: 4 }, "No contacts.")));
  $("#n-routing tbody").replaceChildren(...buckets);
  const groups = Object.entries(d.counters || {}).filter(([, v]) => v && typeof v === "object");
  $("#n-counters").replaceChildren(...groups.map(([name, values]) => el("section", { "aria-label": `${name} counters` },
    el("h3", {}, name),
    el("dl", {}, ...Object.entries(values).flatMap(([k, v]) => [el("dt", {}, k.replaceAll("_", " ")),
      el("dd", {}, typeof v === "number" ? v.toLocaleString("en") : JSON.stringify(v))])))));
}

function drawStore(s) {
  const row = (label, used, max, fmt) => el("div", { class: "row" },
    el("span", {}, label),
    el("meter", { min: 0, max, value: used, low: max * 0.7, high: max * 0.9, optimum: 0, "aria-label": `${label}: ${fmt(used)} of ${fmt(max)}` }),
    el("span", { class: "mono" }, `${fmt(used)} of ${fmt(max)} (${((100 * used) / max).toFixed(2)} %)`));
  $("#n-store").replaceChildren(
    row("Bytes", s.bytes, s.bytes_max, bytes),
    row("Keys (jobs)", s.keys, s.keys_max, (v) => v.toLocaleString("en")),
    el("p", { class: "muted" }, `${s.records.toLocaleString("en")} signed facts stored.`));
}

// -- try it ---------------------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function showTokenField(show) {
  for (const n of document.querySelectorAll(".token-field")) n.hidden = !show;
  $("#forget-token").hidden = !token();
}

async function submitJob(ev) {
  ev.preventDefault();
  const errBox = $("#submit-error");
  const okBox = $("#submit-ok");
  errBox.hidden = true;
  okBox.textContent = "";
  const fail = (title, detail) => {
    errBox.replaceChildren(el("strong", {}, title), detail ? el("span", { class: "detail" }, detail) : null);
    errBox.hidden = false;
  };
  const typed = $("#f-token").value.trim();
  if (typed) { sessionStorage.setItem(TOKEN_KEY, typed); $("#f-token").value = ""; }
  if (state.node && state.node.auth && !token()) {
    showTokenField(true);
    $("#f-token").focus();
    fail("This node needs its API token for writes.", "Enter it once; it stays in this tab only.");
    return;
  }
  let payload;
  try {
    payload = JSON.parse($("#f-payload").value || "null");
  } catch (err) {
    fail("The payload is not valid JSON.", err.message);
    $("#f-payload").focus();
    return;
  }
  const body = { type: $("#f-type").value.trim(), payload };
  for (const [id, key] of [["#f-attempts", "max_attempts"], ["#f-lease", "lease_seconds"], ["#f-timeout", "timeout_seconds"]]) {
    const raw = $(id).value.trim();
    if (raw !== "") body[key] = Number(raw);
  }
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const key = $("#f-key").value.trim();
  if (key) headers["Idempotency-Key"] = key;
  $("#f-submit").disabled = true;
  try {
    const resp = await fetch("/jobs", { method: "POST", headers, body: JSON.stringify(body) });
    const doc = await resp.json().catch(() => null);
    if (!resp.ok) {
      if (resp.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showTokenField(true); }
      const title = doc && doc.title ? `${doc.title} (HTTP ${resp.status})` : `HTTP ${resp.status}`;
      fail(`The node refused the job: ${title}`, doc && doc.detail ? doc.detail : "");
      return;
    }
    state.lastSubmitted = doc.id;
    showTokenField(false);
    okBox.replaceChildren("Accepted job ", el("a", { href: `#/jobs/${doc.id}`, class: "mono", id: "submitted-link" }, short(doc.id)),
      " — status ", el("span", { id: "submitted-status" }, doc.status), ".");
    state.cursors = [null];
    loadJobs();
    watchJob("form", doc.id, (status) => {
      const shown = $("#submitted-status");
      if (state.lastSubmitted === doc.id && shown && shown.textContent !== status) {
        shown.textContent = status;
        refreshJobsSoon();
      }
    });
  } catch (err) {
    fail("The node could not be reached.", err.message);
  } finally {
    $("#f-submit").disabled = false;
  }
}

// -- live updates ---------------------------------------------------------------------

function setConn(stateName, text) {
  const c = $("#conn");
  c.dataset.state = stateName;
  c.textContent = text;
}

function connect() {
  if (state.es || document.hidden) return;
  clearTimeout(state.reconnectTimer);
  setConn("connecting", "connecting…");
  const es = new EventSource("/ui/events");
  state.es = es;
  es.addEventListener("open", () => {
    const conn = $("#conn");
    conn.dataset.opens = String(Number(conn.dataset.opens || 0) + 1); // streams opened (a restart adds one)
    setConn("live", "live");
    refreshAll(); // after a restart or a pause: catch up on what the stream did not carry
  });
  es.addEventListener("tick", (ev) => onTick(JSON.parse(ev.data)));
  es.addEventListener("nodes", (ev) => { if (state.view === "mesh") renderNodes(JSON.parse(ev.data).nodes); });
  es.addEventListener("error", () => {
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error): retry ourselves.
      state.es = null;
      setConn("reconnecting", "reconnecting…");
      state.reconnectTimer = setTimeout(connect, 2000);
    } else {
      setConn("reconnecting", "reconnecting…"); // the browser retries by itself (retry: 2000)
    }
  });
}

function disconnect() {
  if (state.es) { state.es.close(); state.es = null; }
  clearTimeout(state.reconnectTimer);
  setConn("paused", "paused while hidden");
}

function onTick(doc) {
  if (state.node && doc.node_id && state.node.node_id !== doc.node_id) refreshAll(); // another node behind this address
  applySummary(doc);
  const changes = doc.changes || [];
  if (changes.length || doc.changes_dropped) refreshJobsSoon();
  for (const c of changes) {
    if (state.view === "job" && c.id === state.jobId) loadJob(c.id);
    if (c.id === state.lastSubmitted && $("#submitted-status")) $("#submitted-status").textContent = c.status;
  }
  $("#foot").textContent = `Updated ${new Date().toLocaleTimeString()} · node uptime ${duration(doc.uptime_seconds)}`;
}

async function refreshAll() {
  try {
    const doc = await getJSON("/ui/api/node");
    state.node = doc;
    $("#self-id").textContent = short(doc.node_id);
    $("#self-id").title = doc.node_id;
    document.title = `workmesh ${short(doc.node_id)}`;
    $("#job-types").replaceChildren(...(doc.job_types || []).map((t) => el("option", { value: t })));
    showTokenField(doc.auth && !token());
    state.flow.clear();
    applySummary(doc);
  } catch (err) {
    setConn("reconnecting", `node unreachable: ${err.message}`);
    return;
  }
  if (state.view === "jobs") loadJobs();
  if (state.view === "job") loadJob(state.jobId);
  if (state.view === "node") loadNode();
  if (state.view === "mesh") loadNodes();
}

// -- start ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#submit-form").addEventListener("submit", submitJob);
  $("#search-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.cursors = [null]; loadJobs(); });
  $("#s-status").addEventListener("change", () => { state.cursors = [null]; loadJobs(); });
  $("#p-next").addEventListener("click", () => { if (state.next) { state.cursors.push(state.next); loadJobs(); } });
  $("#p-first").addEventListener("click", () => { state.cursors = [null]; loadJobs(); });
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenField(!!(state.node && state.node.auth));
  });
  window.addEventListener("resize", () => { if (state.view === "mesh") drawFlow(); });
  window.addEventListener("hashchange", () => { route(); $("#main").focus({ preventScroll: true }); });
  document.addEventListener("visibilitychange", () => { if (document.hidden) disconnect(); else connect(); });
  route();
  refreshAll();
  connect();
});
