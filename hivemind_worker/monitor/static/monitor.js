// HiveMind Worker monitor: plain JS, no dependencies. Reads /api/* once, then
// follows /api/events (Server-Sent Events). Read-only: it never sends anything but GETs.
"use strict";

const state = { status: null, tasks: [], history: [], earnings: null, series: [], logs: {}, range: 3600 };
const $ = (id) => document.getElementById(id);
const MAX_POINTS = 3000;
const LOG_KEEP = 200;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

const pct = (v) => (v == null ? "—" : `${Number(v).toFixed(1)}%`);
function bytes(n) {
  if (n == null) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let x = Number(n);
  while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return `${x.toFixed(x >= 100 || i === 0 ? 0 : 1)} ${u[i]}`;
}
function duration(s) {
  if (s == null) return "—";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}
function ago(ms) {
  if (!ms) return "never";
  return `${duration((Date.now() - ms) / 1000)} ago`;
}
const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "—");
const shortId = (id) => (id && id.length > 14 ? `${id.slice(0, 12)}…` : id || "—");
const num = (v, d = 2) => (v == null ? "—" : Number(v).toLocaleString(undefined, { maximumFractionDigits: d }));

const STATE_CLASS = {
  running: "info", accepted: "info", fetching: "info", pulling: "info", uploading: "info",
  done: "ok", exited: "ok", failed: "bad", oom_killed: "bad", timed_out: "warn", cancelled: "warn", rejected: "bad",
};
function badge(text, exitCode) {
  const cls = text === "exited" && exitCode ? "bad" : STATE_CLASS[text] || "";
  return el("span", { class: `badge ${cls}` }, String(text).replace("_", " "));
}

function setCard(name, cls, value, sub) {
  const card = $(`card-${name}`);
  card.className = `card ${cls}`;
  $(`${name}-value`).textContent = value;
  $(`${name}-sub`).textContent = sub || "";
  $(`${name}-value`).title = value;
  $(`${name}-sub`).title = sub || "";
}

function renderStatus() {
  const s = state.status; if (!s) return;
  $("node-line").textContent = `node ${s.node_id || "not enrolled"}${s.hostname ? " · " + s.hostname : ""}`;
  $("version").textContent = s.version ? `hivemind-worker ${s.version}` : "";
  const sess = s.session || {};
  const pill = $("session-pill");
  pill.textContent = s.draining ? "draining" : sess.state || "unknown";
  pill.className = `pill ${sess.connected ? (s.draining ? "warn" : "ok") : "bad"}`;
  setCard("enrolled", s.enrolled ? "ok" : "bad", s.enrolled ? "Enrolled" : "Not enrolled",
    s.enrolled ? `master ${s.master || "—"}` : "run: hivemind-worker enroll");
  setCard("session", sess.connected ? "ok" : sess.state === "connecting" || sess.state === "backoff" ? "warn" : "bad",
    sess.connected ? "Connected" : (sess.state || "disconnected").replace(/^./, (c) => c.toUpperCase()),
    sess.connected ? `since ${clock(sess.since_ms)} · ${sess.reconnects || 0} reconnects` : (sess.last_error || `${sess.reconnects || 0} reconnects`));
  const vpn = s.vpn || {};
  const hsAge = vpn.latest_handshake_ms ? (Date.now() - vpn.latest_handshake_ms) / 1000 : null;
  setCard("vpn", !vpn.up ? "bad" : hsAge != null && hsAge < 180 ? "ok" : "warn",
    vpn.up ? `${vpn.interface || "wg0"} up` : `${vpn.interface || "wg0"} down`,
    `${vpn.address || ""}${vpn.address ? " · " : ""}handshake ${ago(vpn.latest_handshake_ms)}`);
  const d = s.docker || {};
  setCard("docker", d.available ? "ok" : "bad", d.available ? `Engine ${d.version || ""}` : "Unavailable", d.available ? "" : d.error || "");
  const gpus = s.gpus || [];
  setCard("gpus", gpus.length ? "ok" : "", gpus.length ? `${gpus.length} × GPU` : "None", gpus.map((g) => g.name).join(", ") || "no NVIDIA GPU seen");
  const u = s.usage || {};
  $("tile-cpu").textContent = pct(u.cpu_percent);
  $("tile-mem").textContent = pct(u.memory_percent);
  $("tile-gpu").textContent = gpus.length ? pct(u.gpu_percent) : "—";
  $("tile-tasks").textContent = String((s.tasks_by_state || {}).running || 0);
}

function renderTasks() {
  const box = $("tasks");
  $("tasks-count").textContent = state.tasks.length ? `${state.tasks.length} held` : "";
  if (!state.tasks.length) { box.replaceChildren(el("p", { class: "empty" }, "No tasks on this node.")); return; }
  const kept = new Set();
  const nodes = state.tasks.map((t) => {
    kept.add(t.task_id);
    const started = t.started_ms ? (Date.now() - t.started_ms) / 1000 : null;
    const r = t.resources || {};
    const head = el("div", { class: "task-head" },
      el("span", { class: "mono grow", title: t.task_id }, t.task_id), badge(t.status),
      el("span", { class: "stat" }, "CPU ", el("b", {}, pct(t.cpu_percent))),
      el("span", { class: "stat" }, "Memory ", el("b", {}, bytes(t.memory_bytes))),
      el("span", { class: "stat" }, "Limits ", el("b", {}, `${(r.cpu_millicores || 0) / 1000} CPU · ${bytes(r.memory_bytes)}${r.gpu_count ? ` · ${r.gpu_count} GPU` : ""}`)),
      el("span", { class: "stat" }, "Running ", el("b", {}, duration(started))),
      el("span", { class: "stat mono" }, t.image || ""));
    const log = el("pre", { class: "log", "data-task": t.task_id });
    const lines = state.logs[t.task_id] || [];
    if (!lines.length) log.append(el("span", { class: "system" }, "waiting for output…"));
    for (const ln of lines) log.append(el("span", { class: ln.stream }, ln.text.endsWith("\n") ? ln.text : ln.text + "\n"));
    const prev = box.querySelector(`pre[data-task="${CSS.escape(t.task_id)}"]`);
    const stick = !prev || prev.scrollTop + prev.clientHeight >= prev.scrollHeight - 4;
    requestAnimationFrame(() => { if (stick) log.scrollTop = log.scrollHeight; else log.scrollTop = prev.scrollTop; });
    return el("div", { class: "task", "data-task": t.task_id }, head, log);
  });
  for (const id of Object.keys(state.logs)) if (!kept.has(id)) delete state.logs[id];
  box.replaceChildren(...nodes);
}

// What the signed usage record says the task used; a figure the node did not measure is not shown.
function used(u) {
  if (!u) return "—";
  const parts = [`${Number(u.cpu_seconds).toFixed(1)} CPU-s`, `${bytes(u.memory_peak_bytes)} peak`];
  const gpuS = (u.gpus || []).reduce((a, g) => a + g.gpu_seconds, 0);
  if ((u.gpus || []).length) parts.push(`${gpuS.toFixed(1)} GPU-s`);
  const joules = (u.gpus || []).reduce((a, g) => a + (g.energy_j ?? 0), 0) + (u.cpu_energy_j ?? 0);
  if ((u.gpus || []).some((g) => g.energy_j != null) || u.cpu_energy_j != null) parts.push(`${joules.toFixed(0)} J`);
  return parts.join(" · ");
}

function renderHistory() {
  const body = $("history").tBodies[0];
  $("history-count").textContent = state.history.length ? `${state.history.length} shown` : "";
  if (!state.history.length) {
    body.replaceChildren(el("tr", { class: "empty-row" }, el("td", { colspan: "7" }, "No finished tasks yet.")));
    return;
  }
  body.replaceChildren(...state.history.map((h) => el("tr", { "data-task": h.task_id },
    el("td", { class: "mono", title: h.task_id }, shortId(h.task_id)),
    el("td", {}, badge(h.state, h.exit_code)),
    el("td", {}, duration(h.duration_s)),
    el("td", { class: "num mono" }, h.exit_code == null ? "—" : String(h.exit_code)),
    el("td", { class: "num" }, num(h.reward)),
    el("td", { class: "usage", title: h.usage_signed ? "from the task's signed usage record" : "" }, used(h.usage)),
    el("td", {}, h.finished_ms ? new Date(h.finished_ms).toLocaleString() : "—"))));
}

function renderEarnings() {
  const e = state.earnings; if (!e) return;
  $("earn-today").textContent = num(e.today, 0);
  $("earn-total").textContent = num(e.total, 0);
  $("earn-last").textContent = num(e.last_reward, 0);
  $("earn-reports").textContent = num(e.reports, 0);
  $("tile-today").textContent = num(e.today, 0);
  drawBars($("chart-earn"), (e.by_day || []).slice(-14));
}

// ---- charts: a small canvas line chart, drawn at device resolution ----
function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function drawLine(canvas, lines, t0, t1) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 40, r: 8, t: 8, b: 20 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#6b7685"; ctx.strokeStyle = "#e9edf3"; ctx.lineWidth = 1;
  for (const v of [0, 25, 50, 75, 100]) {
    const y = pad.t + ph - (v / 100) * ph;
    ctx.beginPath(); ctx.moveTo(pad.l, Math.round(y) + 0.5); ctx.lineTo(w - pad.r, Math.round(y) + 0.5); ctx.stroke();
    ctx.textAlign = "right"; ctx.textBaseline = "middle"; ctx.fillText(`${v}%`, pad.l - 6, y);
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let i = 0; i <= 3; i++) {
    const t = t0 + ((t1 - t0) * i) / 3;
    const x = pad.l + (pw * i) / 3;
    ctx.textAlign = i === 0 ? "left" : i === 3 ? "right" : "center";
    const opts = t1 - t0 < 900000 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
    ctx.fillText(new Date(t).toLocaleTimeString([], opts), x, h - pad.b + 5);
  }
  const X = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * pw;
  const Y = (v) => pad.t + ph - (Math.max(0, Math.min(100, v)) / 100) * ph;
  let drawn = 0;
  for (const line of lines) {
    const pts = line.points.filter((p) => p.v != null && p.t >= t0);
    if (!pts.length) continue;
    drawn += pts.length;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(X(p.t), Y(p.v)) : ctx.moveTo(X(p.t), Y(p.v))));
    ctx.strokeStyle = line.color; ctx.lineWidth = 1.75; ctx.lineJoin = "round"; ctx.stroke();
    if (lines.length === 1) {
      ctx.lineTo(X(pts[pts.length - 1].t), Y(0)); ctx.lineTo(X(pts[0].t), Y(0)); ctx.closePath();
      const grad = ctx.createLinearGradient(0, pad.t, 0, pad.t + ph);
      grad.addColorStop(0, line.color + "40"); grad.addColorStop(1, line.color + "05");
      ctx.fillStyle = grad; ctx.fill();
    }
    const last = pts[pts.length - 1];
    ctx.beginPath(); ctx.arc(X(last.t), Y(last.v), 2.75, 0, Math.PI * 2); ctx.fillStyle = line.color; ctx.fill();
  }
  if (!drawn) {
    ctx.fillStyle = "#9aa4b2"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText(line0Empty(lines), pad.l + pw / 2, pad.t + ph / 2);
  }
  canvas.dataset.points = String(drawn);
}
const line0Empty = (lines) => (lines.length ? "waiting for data" : "no GPU on this node");

const GPU_COLORS = ["#1f9d8a", "#e59a0b", "#d64545", "#2f6fde", "#8a4fd8", "#5b6b7f", "#c2185b", "#00897b"];
function renderCharts() {
  const s = state.series;
  const t1 = Date.now();
  // A young node has less history than the range: fit what there is (at least 30 s)
  // instead of squeezing it against the right edge.
  const first = s.length ? s[0].time_ms : t1;
  const t0 = Math.max(t1 - state.range * 1000, Math.min(first, t1 - 30000));
  const series = (f) => s.map((p) => ({ t: p.time_ms, v: f(p) }));
  drawLine($("chart-cpu"), [{ color: "#2f6fde", points: series((p) => p.cpu_percent) }], t0, t1);
  drawLine($("chart-mem"), [{ color: "#8a4fd8", points: series((p) => p.memory_percent) }], t0, t1);
  const nGpu = s.reduce((n, p) => Math.max(n, (p.gpus || []).length), 0);
  const gpuLines = [];
  for (let i = 0; i < nGpu; i++) {
    gpuLines.push({ color: GPU_COLORS[i % GPU_COLORS.length],
      points: series((p) => { const g = (p.gpus || []).find((x) => x.index === i); return g ? g.utilization_percent : null; }) });
  }
  drawLine($("chart-gpu"), gpuLines, t0, t1);
  const last = s[s.length - 1];
  $("cap-cpu").textContent = last ? pct(last.cpu_percent) : "";
  $("cap-mem").textContent = last ? pct(last.memory_percent) : "";
  $("cap-gpu").textContent = last && nGpu ? (last.gpus || []).map((g) => `#${g.index} ${pct(g.utilization_percent)}`).join("  ") : "";
}

function drawBars(canvas, days) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 4, r: 4, t: 14, b: 16 };
  if (!days.length) {
    ctx.fillStyle = "#9aa4b2"; ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center";
    ctx.fillText("no rewards yet", w / 2, h / 2); canvas.dataset.points = "0"; return;
  }
  const max = Math.max(...days.map((d) => d.reward), 1);
  const bw = Math.min(48, (w - pad.l - pad.r) / days.length);
  pad.l = (w - bw * days.length) / 2;  // centre a short series instead of stretching it
  ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center";
  days.forEach((d, i) => {
    const bh = ((h - pad.t - pad.b) * d.reward) / max;
    const x = pad.l + i * bw + bw * 0.15;
    ctx.fillStyle = i === days.length - 1 ? "#e59a0b" : "#f3cf8a";
    ctx.fillRect(x, h - pad.b - bh, bw * 0.7, bh);
    ctx.fillStyle = "#6b7685";
    ctx.fillText(d.day.slice(5), x + bw * 0.35, h - 3);
    if (i === days.length - 1) ctx.fillText(String(d.reward), x + bw * 0.35, h - pad.b - bh - 3);
  });
  canvas.dataset.points = String(days.length);
}

// ---- data flow ----
function addPoints(points) {
  const last = state.series.length ? state.series[state.series.length - 1].time_ms : 0;
  for (const p of points) if (p.time_ms > last) state.series.push(p);
  if (state.series.length > MAX_POINTS) state.series.splice(0, state.series.length - MAX_POINTS);
}
function addLogs(taskId, lines) {
  const have = state.logs[taskId] || [];
  const lastSeq = have.length ? have[have.length - 1].seq : 0;
  const merged = have.concat(lines.filter((l) => l.seq > lastSeq));
  state.logs[taskId] = merged.slice(-LOG_KEEP);
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function loadAll() {
  const [status, tasks, history, series, earnings] = await Promise.all(
    ["/api/status", "/api/tasks", "/api/history", "/api/telemetry", "/api/earnings"].map(getJSON));
  Object.assign(state, { status, tasks, history, earnings });
  addPoints(series);
  await Promise.all(tasks.map(async (t) => addLogs(t.task_id, await getJSON(`/api/tasks/${encodeURIComponent(t.task_id)}/logs?n=${LOG_KEEP}`))));
  renderStatus(); renderTasks(); renderHistory(); renderEarnings(); renderCharts();
}

function follow() {
  const live = $("live");
  const es = new EventSource("/api/events");
  es.onopen = () => { live.classList.add("on"); $("live-text").textContent = "live"; };
  es.onerror = () => { live.classList.remove("on"); $("live-text").textContent = "reconnecting"; };
  const on = (name, fn) => es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  on("status", (d) => { state.status = d; renderStatus(); });
  on("tasks", (d) => { state.tasks = d; renderTasks(); });
  on("history", (d) => { state.history = d; renderHistory(); });
  on("earnings", (d) => { state.earnings = d; renderEarnings(); });
  on("telemetry", (d) => { addPoints(d); renderCharts(); });
  on("logs", (d) => { addLogs(d.task_id, d.lines); renderTasks(); });
}

for (const b of document.querySelectorAll("#range button")) {
  b.addEventListener("click", () => {
    document.querySelectorAll("#range button").forEach((x) => x.classList.toggle("on", x === b));
    state.range = Number(b.dataset.range); renderCharts();
  });
}
window.addEventListener("resize", () => { renderCharts(); renderEarnings(); });
setInterval(() => { renderStatus(); renderCharts(); }, 30000);  // keep "ago" texts and the time axis moving

loadAll().catch((e) => { $("live-text").textContent = "error"; console.error(e); }).finally(follow);
