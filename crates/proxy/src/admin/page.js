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
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
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
  return Math.floor(s / 3600) + " h ago";
}

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

function sessionLink(id) {
  const a = el("a", id, "session-id");
  a.href = "#";
  a.title = "Show only this session's messages";
  a.addEventListener("click", (ev) => {
    ev.preventDefault();
    $("live-filter").value = id;
    refilter();
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
      s.protocol_version || "", s.inflight, ago(s.last_active_ms), killButton(s.id),
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
}

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

// --- polling ----------------------------------------------------------------------------

async function poll() {
  const jobs = [];
  if (features.gateway) {
    jobs.push(api("/api/sessions").then((r) => renderSessions(r.sessions)));
    jobs.push(api("/api/upstreams").then((r) => renderUpstreams(r.routes)));
    jobs.push(api("/api/metrics").then(renderMetrics));
  }
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
  const t = new Date(ev.time_ms);
  const arrow = ev.direction === "c2s" ? "→" : "←";
  const msg = el("code", ev.preview + (ev.truncated ? " …" : ""));
  const sid = el("span", ev.session.slice(0, 8) + "…", "session-id");
  sid.title = ev.session;
  const tr = row([
    t.toLocaleTimeString() + "." + String(t.getMilliseconds()).padStart(3, "0"),
    sid, el("span", arrow, ev.direction), ev.kind + (ev.note ? " (" + ev.note + ")" : ""),
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
  for (const id of ["overview-panel", "sessions-panel", "upstreams-panel"]) $(id).hidden = !features.gateway;
  $("paused-panel").hidden = !features.intercept;
  $("live-panel").hidden = !features.traffic;
  await poll();
  if (!pollTimer) schedule();
  if (features.traffic && !liveAbort && $("live-on").checked) follow();
}

start();
