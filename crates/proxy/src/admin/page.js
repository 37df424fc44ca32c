// Shadowcat admin page: polls the JSON API every 2 s and follows live traffic (SSE read with
// fetch, so the token travels in the Authorization header, never in a URL). Everything from
// the API is written with textContent: client names and messages are not trusted.
"use strict";

const POLL_MS = 2000;
const MAX_LIVE_ROWS = 200;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem("shadowcat-admin-token") || "";
let features = null;
let lastTotals = null;
let liveAbort = null;
let pollTimer = null;

// A token in the fragment (#token=…) is taken and removed from the address bar.
(function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("shadowcat-admin-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, Object.assign({}, opts, { headers, cache: "no-store" }));
  if (r.status === 401) throw new Unauthorized("the admin token is missing or wrong");
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(body.error || r.status + " " + r.statusText);
    e.status = r.status;
    throw e;
  }
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === undefined || c === null ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  return Math.floor(s / 86400) + " d ago";
}

// A readable timestamp: the date, the time to the second, the time zone.
function stamp(ms) {
  return new Date(ms).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
}

// Clock time with milliseconds (message times).
function clock(ms) {
  const t = new Date(ms);
  return t.toLocaleTimeString() + "." + String(t.getMilliseconds()).padStart(3, "0");
}

// "3 s ago", kept up to date every second, the full time in its tooltip.
function since(ms) {
  if (!ms) return "";
  const e = el("span", ago(ms), "reltime");
  e.dataset.ms = String(ms);
  e.title = stamp(ms);
  return e;
}

setInterval(() => {
  for (const e of document.querySelectorAll(".reltime")) e.textContent = ago(Number(e.dataset.ms));
}, 1000);

function setStatus(text, bad) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("bad", !!bad);
}

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setStatus("signed out", true);
  stopLive();
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem("shadowcat-admin-token", token);
  start();
});

// --- sessions ---------------------------------------------------------------------------

// Sessions armed for ending (first click), until when: kept across the table's re-renders.
const armed = new Map();

function killButton(id) {
  const isArmed = () => (armed.get(id) || 0) > Date.now();
  const b = el("button", isArmed() ? "Confirm end" : "End", "danger");
  b.type = "button";
  b.title = "End this session (its client gets 404 next time); click twice";
  b.addEventListener("click", async () => {
    if (!isArmed()) {
      armed.set(id, Date.now() + 5000);
      b.textContent = "Confirm end";
      return;
    }
    armed.delete(id);
    b.disabled = true;
    try {
      await api("/api/sessions/" + encodeURIComponent(id), { method: "DELETE" });
      await poll();
    } catch (e) {
      setStatus("could not end " + id + ": " + e.message, true);
      b.disabled = false;
    }
  });
  return b;
}

function sessionLink(id, text) {
  const a = el("a", text || id, "session-id");
  a.href = "#";
  a.title = "Show session " + id + " and its messages";
  a.addEventListener("click", (ev) => {
    ev.preventDefault();
    openSession(id);
  });
  return a;
}

// A composite session's upstream: each of its servers with its state (e.g. `github up, files
// down`), so a degraded session shows which server it is missing.
function upstreamOf(s) {
  if (!Array.isArray(s.servers)) return s.upstream;
  return s.servers.map((m) => m.name + " " + m.state).join(", ");
}

function renderSessions(list) {
  const body = $("sessions").tBodies[0];
  body.replaceChildren();
  for (const s of list) {
    const client = s.client && s.client.name ? s.client.name + (s.client.version ? " " + s.client.version : "") : "";
    const tr = row([
      sessionLink(s.id), s.route, s.principal || "–", client, upstreamOf(s),
      s.protocol_version || "", s.inflight, since(s.created_ms), since(s.last_active_ms), killButton(s.id),
    ]);
    tr.dataset.session = s.id;
    body.appendChild(tr);
  }
  $("session-count").textContent = "(" + list.length + ")";
  $("sessions-empty").hidden = list.length > 0;
}

// --- upstreams --------------------------------------------------------------------------

function renderUpstreams(routes) {
  const body = $("upstreams").tBodies[0];
  body.replaceChildren();
  for (const r of routes) {
    for (const u of r.upstreams) {
      const health = el("span", u.healthy ? "healthy" : "unhealthy", u.healthy ? "ok" : "bad");
      const avail = el("span", u.available ? "yes" : "no (ejected)", u.available ? "ok" : "bad");
      if ("breaker" in u) avail.textContent += " · breaker " + u.breaker;
      const tr = row([r.path, u.name, r.strategy + (u.weight !== 1 ? " ×" + u.weight : ""), health, avail,
        u.spares ? u.sessions + " · spares " + u.spares.ready + "/" + u.spares.want : u.sessions,
        u.inflight, u.sessions_total, u.connect_failures]);
      tr.dataset.upstream = u.name;
      body.appendChild(tr);
    }
  }
}

// --- metrics ----------------------------------------------------------------------------

function renderMetrics(m) {
  const now = performance.now();
  if (lastTotals && now > lastTotals.at) {
    const rate = (m.requests_total - lastTotals.requests) / ((now - lastTotals.at) / 1000);
    $("rate").textContent = Math.max(0, rate).toFixed(rate < 10 ? 2 : 0);
  }
  lastTotals = { requests: m.requests_total, at: now };
  $("requests-total").textContent = m.requests_total;
  $("errors-total").textContent = m.responses["4xx"] + " / " + m.responses["5xx"];
  $("refused-total").textContent = m.rate_limited_total + " / " + m.auth_failures_total + " / " + m.authz_denied_total;
  $("active-sessions").textContent = m.active_sessions + " of " + m.max_sessions;
  $("inflight").textContent = m.inflight;
  const st = m.store;
  $("store").textContent = st.backend + (st.healthy ? " (up)" : st.degraded ? " (degraded)" : " (down)");
  $("store").className = st.healthy ? "ok" : "bad";
  renderConfig(m.config);
}

// The configuration's generation and its last reload (SIGHUP, --watch, POST /admin/reload):
// a refused one is shown in red, its problems on hover.
function renderConfig(c) {
  const el = $("config");
  if (!c) return;
  const last = c.last_reload;
  let text = "generation " + c.generation;
  if (last) {
    const at = new Date(last.at_ms).toLocaleTimeString();
    text += last.ok ? " · reloaded " + at : " · reload refused " + at;
  }
  if (c.draining_sessions > 0) text += " · " + c.draining_sessions + " draining";
  el.textContent = text;
  el.className = last && !last.ok ? "bad" : "ok";
  el.title = last && !last.ok ? (last.errors || []).join("\n") : "";
}

// --- charts (plain SVG, no library) ---------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

// A round upper bound for an axis (1, 2 or 5 × 10^n).
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  if (v >= 100) return String(Math.round(v));
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

// Draw lines [{values, cls, label}] over buckets starting at `start` ms, `step` ms apart, into
// the <svg>; null values leave gaps. Hovering shows the values of a bucket in `readout`.
function lineChart(el, lines, start, step, readout) {
  const W = Math.max(300, Math.round(el.clientWidth || 600));
  const H = 160, L = 44, R = 8, T = 8, B = 20;
  const n = lines[0].values.length;
  const pw = W - L - R, ph = H - T - B;
  const all = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...all));
  const x = (i) => L + (n > 1 ? (i * pw) / (n - 1) : 0);
  const y = (v) => T + ph * (1 - v / max);
  el.setAttribute("viewBox", "0 0 " + W + " " + H);
  el.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    el.appendChild(svg("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "grid" }));
    el.appendChild(svg("text", { x: L - 4, y: y(max * f) + 3, class: "axis", "text-anchor": "end" }, fmt(max * f)));
  }
  const mins = Math.round(((n - 1) * step) / 60000);
  for (const [i, label] of [[0, "−" + mins + " min"], [Math.round((n - 1) / 3), "−" + Math.round((mins * 2) / 3) + " min"],
    [Math.round((2 * (n - 1)) / 3), "−" + Math.round(mins / 3) + " min"], [n - 1, "now"]]) {
    const anchor = i === 0 ? "start" : i === n - 1 ? "end" : "middle";
    el.appendChild(svg("text", { x: x(i), y: H - 5, class: "axis", "text-anchor": anchor }, label));
  }
  let points = 0;
  for (const line of lines) {
    let d = "";
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const prev = i > 0 ? line.values[i - 1] : null;
      const next = i + 1 < n ? line.values[i + 1] : null;
      const open = prev === null || prev === undefined;
      d += (open ? "M" : "L") + x(i).toFixed(1) + " " + y(v).toFixed(1);
      if (open && (next === null || next === undefined)) {
        el.appendChild(svg("circle", { cx: x(i), cy: y(v), r: 2, class: "dot " + line.cls }));
      }
      points++;
    });
    const path = svg("path", { d: d, class: "line " + line.cls });
    path.dataset.series = line.label;
    el.appendChild(path);
  }
  el.dataset.points = String(points);
  el.dataset.peak = String(Math.max(0, ...all));
  const cursor = svg("line", { x1: 0, x2: 0, y1: T, y2: T + ph, class: "cursor", visibility: "hidden" });
  el.appendChild(cursor);
  const hover = svg("rect", { x: L, y: T, width: pw, height: ph, class: "hover" });
  hover.addEventListener("mousemove", (ev) => {
    const box = el.getBoundingClientRect();
    const px = ((ev.clientX - box.left) * W) / box.width;
    const i = Math.max(0, Math.min(n - 1, Math.round(((px - L) * (n - 1)) / pw)));
    cursor.setAttribute("x1", x(i));
    cursor.setAttribute("x2", x(i));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = new Date(start + i * step).toLocaleTimeString() + ": " +
      lines.map((l) => l.label + " " + fmt(l.values[i])).join(", ");
  });
  hover.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "";
  });
  el.appendChild(hover);
}

// Per-second rates of counts per bucket; the last bucket is still filling.
function rates(counts, s) {
  const n = counts.length;
  const filling = Math.max(1000, s.now_ms - (s.start_ms + (n - 1) * s.bucket_ms));
  return counts.map((c, i) => (c * 1000) / (i === n - 1 ? filling : s.bucket_ms));
}

function renderHealth(s) {
  const box = $("health");
  box.replaceChildren();
  const n = s.requests.length;
  for (const u of s.upstreams) {
    const rowEl = el("div", null, "health-row");
    rowEl.dataset.upstream = u.name;
    rowEl.dataset.last = u.states[n - 1] || "";
    rowEl.appendChild(el("span", u.route + " · " + u.name, "health-name"));
    const strip = svg("svg", { class: "strip", viewBox: "0 0 " + n + " 1", preserveAspectRatio: "none" });
    u.states.forEach((st, i) => {
      const cell = svg("rect", { x: i, y: 0, width: 1.02, height: 1, class: "st-" + (st || "none") });
      const from = s.start_ms + i * s.bucket_ms;
      let tip = new Date(from).toLocaleTimeString() + "–" + new Date(from + s.bucket_ms).toLocaleTimeString() + ": " + (st || "no sample");
      if (st) tip += ", " + u.sessions[i] + " sessions";
      if (u.connect_failures[i]) tip += ", " + u.connect_failures[i] + " failed connections";
      cell.appendChild(svg("title", {}, tip));
      strip.appendChild(cell);
    });
    rowEl.appendChild(strip);
    box.appendChild(rowEl);
  }
}

function renderTools(tools) {
  const body = $("tools").tBodies[0];
  body.replaceChildren();
  for (const t of tools) {
    const name = t.name === null ? el("em", "other tools") : t.name;
    const rate = t.calls ? ((100 * t.errors) / t.calls).toFixed(1) + " %" : "";
    const tr = row([name, t.calls, t.errors, rate, fmt(t.p50_ms), fmt(t.p99_ms)]);
    for (let i = 1; i < tr.cells.length; i++) tr.cells[i].className = "num";
    if (t.errors) tr.cells[2].classList.add("bad");
    tr.dataset.tool = t.name === null ? "" : t.name;
    tr.dataset.calls = String(t.calls);
    body.appendChild(tr);
  }
  $("tools-empty").hidden = tools.length > 0;
}

function renderSeries(s) {
  lineChart($("chart-rate"), [
    { values: rates(s.requests, s), cls: "req", label: "requests/s" },
    { values: rates(s.errors, s), cls: "err", label: "errors/s" },
  ], s.start_ms, s.bucket_ms, $("rate-readout"));
  lineChart($("chart-latency"), [
    { values: s.latency_p50_ms, cls: "p50", label: "p50 ms" },
    { values: s.latency_p99_ms, cls: "p99", label: "p99 ms" },
  ], s.start_ms, s.bucket_ms, $("latency-readout"));
  renderHealth(s);
  renderTools(s.tools);
}

// --- session detail -----------------------------------------------------------------------

const MAX_TIMELINE_ROWS = 500;
// The session shown: its id and the last message sequence number fetched.
let detail = null;

// A JSON value as an expandable tree (objects and arrays fold; everything is text).
function jsonTree(v, key) {
  const label = key === undefined ? null : el("span", JSON.stringify(key) + ": ", "j-key");
  if (v !== null && typeof v === "object") {
    const isArr = Array.isArray(v);
    const entries = isArr ? v.map((x, i) => [i, x]) : Object.entries(v);
    const d = document.createElement("details");
    d.open = true;
    const sum = document.createElement("summary");
    if (label) sum.appendChild(label);
    sum.appendChild(el("span", isArr ? "[" + entries.length + "]" : "{" + entries.length + "}", "j-count"));
    d.appendChild(sum);
    for (const [k, x] of entries) d.appendChild(jsonTree(x, isArr ? undefined : k));
    d.className = "j-node";
    return d;
  }
  const line = el("div", null, "j-leaf");
  if (label) line.appendChild(label);
  const type = v === null ? "null" : typeof v;
  line.appendChild(el("span", JSON.stringify(v), "j-" + type));
  return line;
}

// A message: one line (click to unfold its tree).
function messageView(m) {
  if (m === null || m === undefined) return el("em", "too large to keep", "empty");
  const d = document.createElement("details");
  d.className = "message";
  const text = JSON.stringify(m);
  const sum = el("summary", null);
  sum.appendChild(el("code", text.length > 160 ? text.slice(0, 160) + " …" : text));
  d.appendChild(sum);
  // Built when first opened.
  d.addEventListener("toggle", () => {
    if (d.open && d.childNodes.length === 1) d.appendChild(jsonTree(m));
  });
  return d;
}

function info(label, value) {
  const div = document.createElement("div");
  div.appendChild(el("dt", label));
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.appendChild(value);
  else dd.textContent = value === undefined || value === null || value === "" ? "–" : String(value);
  div.appendChild(dd);
  return div;
}

function renderSessionInfo(s) {
  const client = s.client_info && s.client_info.name ? s.client_info.name + (s.client_info.version ? " " + s.client_info.version : "") : "";
  const list = [
    info("Kind", s.kind), info("Route", s.route), info("Principal", s.principal), info("Client", client),
    info("Upstream", upstreamOf(s)), info("Protocol version", s.protocol_version), info("In flight", s.inflight),
    info("Started", since(s.created_ms)), info("Last active", since(s.last_active_ms)),
    info("Replica", s.replica), info("Upstream session", s.upstream_session_id),
  ];
  if (s.client_capabilities) list.push(info("Client capabilities", messageView(s.client_capabilities)));
  $("session-info").replaceChildren(...list);
  $("session-state").textContent = "live";
  $("session-actions").replaceChildren(killButton(s.id));
}

function addTimeline(messages) {
  const body = $("timeline").tBodies[0];
  for (const m of messages) {
    const time = el("span", clock(m.time_ms));
    time.title = stamp(m.time_ms);
    const tr = row([
      time, el("span", m.direction === "c2s" ? "→" : "←", m.direction), m.kind + (m.note ? " (" + m.note + ")" : ""),
      m.method || "", m.id === undefined ? "" : JSON.stringify(m.id), m.name || "", m.bytes, messageView(m.message),
    ]);
    tr.cells[6].className = "num";
    tr.className = m.kind;
    tr.dataset.seq = String(m.seq);
    if (m.method) tr.dataset.method = m.method;
    body.appendChild(tr);
  }
  while (body.rows.length > MAX_TIMELINE_ROWS) body.deleteRow(0);
  $("timeline-count").textContent = "(" + body.rows.length + ")";
  $("timeline-empty").hidden = body.rows.length > 0;
}

async function refreshSession() {
  const d = detail;
  if (!d) return;
  const jobs = [];
  if (features.gateway) {
    jobs.push(api("/api/sessions/" + encodeURIComponent(d.id)).then((s) => {
      if (detail === d) renderSessionInfo(s);
    }).catch((e) => {
      if (e.status !== 404) throw e;
      if (detail !== d) return;
      $("session-state").textContent = "ended (not live on this replica)";
      $("session-actions").replaceChildren();
    }));
  }
  if (features.traffic) {
    const q = "/api/traffic/history?session=" + encodeURIComponent(d.id) + "&after=" + d.after;
    jobs.push(api(q).then((r) => {
      if (detail !== d) return;
      if (r.messages.length) d.after = r.messages[r.messages.length - 1].seq;
      addTimeline(r.messages);
    }));
  }
  const failed = (await Promise.allSettled(jobs)).find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
}

function openSession(id) {
  detail = { id: id, after: 0 };
  $("session-panel").hidden = false;
  $("session-title").textContent = id;
  $("session-state").textContent = "";
  $("session-info").replaceChildren();
  $("session-actions").replaceChildren();
  $("timeline").tBodies[0].replaceChildren();
  $("timeline-count").textContent = "";
  $("timeline-empty").hidden = true;
  $("session-panel").scrollIntoView({ block: "start" });
  refreshSession().catch((e) => {
    if (e instanceof Unauthorized) showLogin(e.message);
    else setStatus("session " + id + ": " + e.message, true);
  });
}

$("session-close").addEventListener("click", () => {
  detail = null;
  $("session-panel").hidden = true;
});
$("session-filter").addEventListener("click", () => {
  if (!detail) return;
  $("live-filter").value = detail.id;
  refilter();
  $("live-panel").scrollIntoView({ block: "start" });
});

// --- paused messages --------------------------------------------------------------------

function decide(id, verb) {
  const b = el("button", verb);
  b.type = "button";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await api("/intercept/paused/" + id + "/" + verb, { method: "POST" });
      await poll();
    } catch (e) {
      setStatus(verb + " #" + id + ": " + e.message, true);
    }
  });
  return b;
}

function renderPaused(list) {
  const body = $("paused").tBodies[0];
  body.replaceChildren();
  for (const p of list) {
    const actions = document.createElement("span");
    actions.append(decide(p.id, "resume"), " ", decide(p.id, "drop"));
    body.appendChild(row([p.id, p.session, p.direction, p.rule, el("code", JSON.stringify(p.message)), actions]));
  }
  $("paused-count").textContent = "(" + list.length + ")";
  $("paused-empty").hidden = list.length > 0;
}

// --- tool pins ---------------------------------------------------------------------------

/** The definition as pretty JSON lines. */
function defLines(d) {
  return d ? JSON.stringify(d.definition, null, 2).split("\n") : [];
}

/** The approved and the offered definitions side by side, lines only in one marked. */
function pinDiff(p) {
  const before = defLines(p.approved);
  const after = defLines(p.pending);
  const a = new Set(before);
  const b = new Set(after);
  const side = (lines, other, mark) => {
    const pre = el("pre", "", "pin-def");
    for (const l of lines) {
      const line = el("span", (other.has(l) ? "  " : mark + " ") + l + "\n", other.has(l) ? "" : "pin-" + (mark === "-" ? "old" : "new"));
      pre.appendChild(line);
    }
    return pre;
  };
  const box = el("div", "", "pin-diff");
  box.append(side(before.length ? before : ["(none: a new tool)"], b, "-"), side(after, a, "+"));
  return box;
}

function pinButton(p, verb) {
  const b = el("button", verb);
  b.type = "button";
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await api("/api/pins/" + encodeURIComponent(p.id) + "/" + verb, {
        method: "POST",
        body: JSON.stringify({ hash: p.pending ? p.pending.hash : undefined }),
      });
      await poll();
    } catch (e) {
      setStatus(verb + " " + p.name + ": " + e.message, true);
      b.disabled = false;
    }
  });
  return b;
}

function renderPins(r) {
  $("pins-panel").hidden = !r;
  if (!r) return;
  const waiting = r.pins.filter((p) => p.state !== "approved");
  const body = $("pins").tBodies[0];
  body.replaceChildren();
  for (const p of waiting) {
    const actions = document.createElement("span");
    actions.append(pinButton(p, "approve"), " ", pinButton(p, "reject"));
    const tr = row([p.route, p.kind, p.name, p.state, pinDiff(p), actions]);
    tr.dataset.pin = p.id;
    body.appendChild(tr);
  }
  $("pins-count").textContent = "(" + waiting.length + ")";
  $("pins-empty").hidden = waiting.length > 0;
}

// --- polling ----------------------------------------------------------------------------

async function poll() {
  const jobs = [];
  if (features.gateway) {
    jobs.push(api("/api/sessions").then((r) => renderSessions(r.sessions)));
    jobs.push(api("/api/upstreams").then((r) => renderUpstreams(r.routes)));
    jobs.push(api("/api/metrics").then(renderMetrics));
    jobs.push(api("/api/series").then(renderSeries));
    // 404 when no route pins tools: the panel stays hidden.
    jobs.push(api("/api/pins").then(renderPins, (e) => {
      if (e.status !== 404) throw e;
      renderPins(null);
    }));
  }
  if (detail) jobs.push(refreshSession());
  if (features.intercept) jobs.push(api("/intercept/paused").then((r) => renderPaused(r.paused)));
  const results = await Promise.allSettled(jobs);
  const failed = results.find((r) => r.status === "rejected");
  if (failed && failed.reason instanceof Unauthorized) return showLogin(failed.reason.message);
  if (failed) setStatus("error: " + failed.reason.message, true);
  else setStatus("updated " + new Date().toLocaleTimeString());
}

function schedule() {
  pollTimer = setTimeout(async () => {
    try { await poll(); } catch (e) { setStatus("error: " + e.message, true); }
    if (pollTimer) schedule();
  }, POLL_MS);
}

// --- live traffic -----------------------------------------------------------------------

function liveMatches(tr) {
  const f = $("live-filter").value.trim();
  return !f || tr.dataset.session === f;
}

function refilter() {
  for (const tr of $("live").tBodies[0].rows) tr.hidden = !liveMatches(tr);
}

function addLive(ev) {
  const body = $("live").tBodies[0];
  const arrow = ev.direction === "c2s" ? "→" : "←";
  const msg = el("code", ev.preview + (ev.truncated ? " …" : ""));
  const sid = sessionLink(ev.session, ev.session.slice(0, 8) + "…");
  const time = el("span", clock(ev.time_ms));
  time.title = stamp(ev.time_ms);
  const tr = row([
    time, sid, el("span", arrow, ev.direction), ev.kind + (ev.note ? " (" + ev.note + ")" : ""),
    ev.method || "", ev.id === undefined ? "" : JSON.stringify(ev.id), ev.name || "", ev.bytes, msg,
  ]);
  tr.dataset.session = ev.session;
  if (ev.method) tr.dataset.method = ev.method;
  tr.className = ev.kind;
  tr.hidden = !liveMatches(tr);
  body.insertBefore(tr, body.firstChild);
  while (body.rows.length > MAX_LIVE_ROWS) body.deleteRow(body.rows.length - 1);
}

function addNote(text) {
  const body = $("live").tBodies[0];
  const tr = document.createElement("tr");
  const td = el("td", text, "note");
  td.colSpan = 9;
  tr.appendChild(td);
  body.insertBefore(tr, body.firstChild);
}

function stopLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = null;
}

// Parse one SSE event block.
function handleEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "lagged") addNote("… " + payload.skipped + " messages skipped (this page fell behind)");
  else addLive(payload);
}

async function follow() {
  let backoff = 1000;
  while ($("live-on").checked) {
    const ctl = new AbortController();
    liveAbort = ctl;
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const r = await fetch("/api/traffic", { headers, signal: ctl.signal, cache: "no-store" });
      if (r.status === 401) return showLogin("the admin token is missing or wrong");
      if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || String(r.status));
      $("live-state").textContent = "following";
      backoff = 1000;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          handleEvent(block);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
      $("live-state").textContent = "disconnected (" + e.message + "), retrying";
    }
    if (liveAbort !== ctl) return;
    await new Promise((ok) => setTimeout(ok, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

$("live-on").addEventListener("change", () => {
  if ($("live-on").checked) { if (!liveAbort) follow(); }
  else { stopLive(); $("live-state").textContent = "paused"; }
});
$("live-filter").addEventListener("input", refilter);
$("live-clear").addEventListener("click", () => $("live").tBodies[0].replaceChildren());

// --- start ------------------------------------------------------------------------------

async function start() {
  try {
    features = await api("/api");
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin(token ? e.message : "");
    setStatus("cannot reach the admin API: " + e.message, true);
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  for (const id of ["overview-panel", "charts-panel", "sessions-panel", "upstreams-panel"]) $(id).hidden = !features.gateway;
  $("paused-panel").hidden = !features.intercept;
  $("live-panel").hidden = !features.traffic;
  await poll();
  if (!pollTimer) schedule();
  if (features.traffic && !liveAbort && $("live-on").checked) follow();
}

start();
