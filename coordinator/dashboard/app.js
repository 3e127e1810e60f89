// edgefleet dashboard: reads the coordinator's JSON API with a bearer token and draws SVG charts itself.
// No framework and no build step; nothing is loaded from outside the coordinator.
"use strict";

const API = "../api/v1";
const REFRESH_MS = 10000;
const COLORS = ["#2557d6", "#d6792a", "#1a7f37", "#c62828", "#7b3fb8"];

// -- token and routing --------------------------------------------------------------------------
// The fragment never reaches the server: "#token=T" (optionally "&/device/ID") stores T for this tab.
function readFragment() {
  let route = "/";
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (part.startsWith("token=")) sessionStorage.setItem("edgefleet-token", decodeURIComponent(part.slice(6)));
    else if (part.startsWith("/")) route = part;
  }
  if (location.hash.includes("token=")) history.replaceState(null, "", "#" + route);
  return route;
}

async function api(path, method = "GET", body = undefined) {
  const token = sessionStorage.getItem("edgefleet-token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const hint = response.status === 401 ? " (open the page as /dashboard/#token=YOUR_TOKEN)" : "";
    throw new Error(`${method} ${path}: HTTP ${response.status} ${detail}${hint}`);
  }
  return response.json();
}

// A button that changes something through the API (the token's role decides: read-only gets 403), then redraws.
function actionButton(label, name, run) {
  const button = h("button", { type: "button", class: "action", "data-action": name }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if ((await run()) !== false) await render();
    } catch (err) {
      document.getElementById("main").prepend(h("div", { class: "banner", id: "error" }, String(err.message || err)));
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// -- DOM helpers (textContent only: device data never becomes markup) ---------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}
const pill = (value) => h("span", { class: "pill " + (value || "unknown") }, value || "unknown");
const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const table = (headers, rows) => h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
const card = (label, value, extra) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), extra || null);
function countBy(items, key) {
  const counts = {};
  for (const item of items) { const k = key(item) || "none"; counts[k] = (counts[k] || 0) + 1; }
  return counts;
}
const countList = (counts) => h("ul", {}, Object.entries(counts).sort().map(([k, n]) => h("li", {}, `${k}: ${n}`)));

// -- SVG line chart ------------------------------------------------------------------------------
// series: [{name, points: [[Date, number|null], ...]}]; one path per series, one vertex per point.
function lineChart(title, unit, series) {
  const W = 560, H = 220, L = 52, R = 12, T = 10, B = 28;
  const all = series.flatMap((x) => x.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const box = h("div", { class: "chart", "data-chart": title });
  box.append(h("h3", {}, `${title} (${unit})`));
  if (all.length === 0) { box.append(h("p", { class: "muted" }, "no data yet")); return box; }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(0, ...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (y1 === y0) y1 = y0 + 1;
  y1 += (y1 - y0) * 0.08;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, v >= 100 ? v.toFixed(0) : v.toPrecision(3)));
  }
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const ticks = t1 === t0 ? [[t0, "middle"]] : [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]];
  for (const [t, anchor] of ticks) {
    const label = new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": anchor }, label));
  }
  const legend = h("div", { class: "legend" });
  series.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = line.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (pts.length === 0) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", { class: "series", d, stroke: color, "data-series": line.name, "data-points": pts.length }));
    if (pts.length <= 60) for (const p of pts) svg.append(s("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color }));
    legend.append(h("span", {}, h("i", { style: `background:${color}` }), line.name));
  });
  box.append(svg, legend);
  return box;
}

// -- views ---------------------------------------------------------------------------------------
async function latestTelemetry() {
  // One read for the whole fleet: each figure from the latest recent window that carries it.
  return Object.fromEntries((await api("/telemetry/latest")).map((t) => [t.device_id, t]));
}

async function overview() {
  const [devices, alerts, bundles, latest] = await Promise.all([api("/devices"), api("/alerts"), api("/bundles"), latestTelemetry()]);
  const names = Object.fromEntries(bundles.map((b) => [b.digest, `${b.name} ${b.version}`]));
  const model = (d) => (d.active_digest ? names[d.active_digest] || d.active_version || d.active_digest.slice(0, 12) : null);
  const online = devices.filter((d) => d.availability === "online").length;
  const rows = devices.map((d) => {
    const t = latest[d.device_id];
    return h("tr", { "data-device": d.device_id },
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.device_id)}` }, d.device_id)),
      h("td", {}, pill(d.availability)), h("td", {}, d.device_class || "–"),
      h("td", { class: "model-version" }, model(d) || "none"), h("td", {}, d.runtime || "–"),
      h("td", {}, pill(d.status)), h("td", { class: "error-text" }, d.last_error || ""),
      h("td", { class: "num" }, t ? fmt(t.drift_score, 3) : "–",
        t && t.drift_alert ? h("span", { class: "pill warning" }, " drift") : null),
      h("td", { class: "num" }, t ? fmt(t.latency_ms_p95) : "–"),
      h("td", { class: "num", "data-figure": "cpu" }, t ? fmt(t.device_cpu_percent, 0) : "–"),
      h("td", { class: "num", "data-figure": "memory" }, t ? fmt(t.memory_used_percent, 0) : "–"),
      h("td", { class: "num", "data-figure": "temperature" }, t ? fmt(t.soc_temp_c, 1) : "–"),
      h("td", {}, when(d.last_seen)));
  });
  return [
    h("h2", {}, "Fleet"),
    h("div", { class: "cards" },
      card("Devices", devices.length), card("Online", online), card("Offline", devices.length - online),
      card("Alerts", alerts.length),
      card("Device classes", Object.keys(countBy(devices, (d) => d.device_class)).length, countList(countBy(devices, (d) => d.device_class))),
      card("Model versions", Object.keys(countBy(devices, model)).length, countList(countBy(devices, model)))),
    h("h2", {}, "Devices"),
    devices.length
      ? table(["Device", "Availability", "Class", "Model version", "Runtime", "Status", "Last error", "Drift score", "p95 ms", "CPU %", "Memory %", "Temp °C", "Last seen"], rows)
      : h("p", { class: "muted" }, "No device has reported yet."),
    h("h2", {}, "Alerts"), alertTable(alerts),
  ];
}

async function device(id) {
  const path = `/devices/${encodeURIComponent(id)}`;
  const [d, telemetry, minutes] = await Promise.all([
    api(path), api(`${path}/telemetry?limit=500`), api(`${path}/telemetry/rollups?resolution=minute&limit=180`)]);
  const rows = telemetry.slice().reverse();
  const at = (r) => new Date(r.received_at).getTime();
  const series = (name, col) => ({ name, points: rows.map((r) => [at(r), r[col]]) });
  const perSecond = (r) => (r.window_s > 0 ? r.inference_count / r.window_s : null);
  const buckets = minutes.slice().reverse();
  const bucket = (name, value) => ({ name, points: buckets.map((b) => [new Date(b.bucket_start).getTime(), value(b)]) });
  const reported = d.reported || {};
  return [
    h("h2", {}, `Device ${d.device_id}`),
    h("div", { class: "cards" },
      card("Availability", pill(d.availability)), card("Status", pill(d.status)), card("Class", d.device_class || "–"),
      card("Model", d.active_version || "none", h("div", { class: "muted" }, (d.active_digest || "").slice(0, 16))),
      card("Previous", (reported.previous && reported.previous.version) || "none"),
      card("Runtime", d.runtime || "–", (reported.runtime_skipped || []).length ? h("div", { class: "muted" }, reported.runtime_skipped.join("; ")) : null),
      card("Agent", reported.agent_version || "–"), card("Last seen", h("span", { class: "small" }, when(d.last_seen)))),
    d.last_error ? h("p", { class: "error-text" }, "Last error: " + d.last_error) : null,
    h("h2", {}, `Telemetry (${rows.length} windows)`),
    h("div", { class: "charts" },
      lineChart("Latency", "ms", [series("p50", "latency_ms_p50"), series("p95", "latency_ms_p95"), series("p99", "latency_ms_p99")]),
      lineChart("Throughput", "inferences per second", [{ name: "inferences/s", points: rows.map((r) => [at(r), perSecond(r)]) }]),
      lineChart("Errors", "per window", [series("errors", "error_count")]),
      lineChart("Drift", "PSI against the bundle's reference", [series("inputs", "drift_score"), series("output confidence", "confidence_drift_score")]),
      lineChart("Device health", "% used", [series("CPU", "device_cpu_percent"), series("memory", "memory_used_percent"), series("data disk", "disk_used_percent")]),
      lineChart("Temperature", "°C, hottest zone", [series("SoC", "soc_temp_c")]),
      lineChart("Outbox", "messages waiting", [series("pending", "outbox_pending")])),
    h("h2", {}, `History (per minute, ${buckets.length} minutes)`),
    h("div", { class: "charts" },
      lineChart("Throughput per minute", "inferences per second", [bucket("inferences/s, minute", (b) => (b.window_s > 0 ? b.inference_count / b.window_s : null))]),
      lineChart("Latency per minute", "ms, from every request's bucket", [bucket("p50 (minute)", (b) => b.latency_ms_p50),
        bucket("p95 (minute)", (b) => b.latency_ms_p95), bucket("p99 (minute)", (b) => b.latency_ms_p99)]),
      lineChart("Error rate per minute", "errors / requests", [bucket("error rate", (b) => b.error_rate)])),
  ];
}

function alertActions(a) {
  const ack = actionButton("Acknowledge", "ack", async () => {
    const note = window.prompt(`Acknowledge ${a.kind} ${a.device_id || a.rollout_id || ""}: note (optional)`, "");
    if (note === null) return false;  // cancelled
    await api("/alerts/acknowledgments", "POST", { kind: a.kind, device_id: a.device_id, rollout_id: a.rollout_id, note: note || null });
  });
  const silence = actionButton("Silence 1 h", "silence", () =>
    api("/alerts/silences", "POST", { kind: a.kind, device_id: a.device_id || null, duration_s: 3600 }));
  return [a.acknowledged ? null : ack, silence];
}

function alertTable(alerts) {
  if (!alerts.length) return h("p", { class: "muted" }, "No alerts.");
  return table(["Severity", "Kind", "Device", "Since", "Detail", "Acknowledged", ""], alerts.map((a) => h("tr", { "data-alert": a.kind },
    h("td", {}, pill(a.severity)), h("td", {}, a.kind.replace("_", " ")),
    h("td", {}, a.device_id ? h("a", { href: `#/device/${encodeURIComponent(a.device_id)}` }, a.device_id) : (a.rollout_id || "fleet")),
    h("td", {}, when(a.since)), h("td", {}, a.detail),
    h("td", { class: "acknowledged" }, a.acknowledged
      ? [a.acknowledged.by, " · ", when(a.acknowledged.at), a.acknowledged.note ? h("div", { class: "muted" }, a.acknowledged.note) : null]
      : "–"),
    h("td", { class: "actions" }, alertActions(a)))));
}

async function alertsView() {
  return [h("h2", {}, "Alerts"), alertTable(await api("/alerts"))];
}

async function rollouts() {
  const [list, events] = await Promise.all([api("/rollouts"), api("/events?limit=50")]);
  const details = await Promise.all(list.map((r) => api(`/rollouts/${encodeURIComponent(r.id)}`)));
  const blocks = details.map((r) => h("div", { class: "rollout", "data-rollout": r.id },
    h("div", {}, h("strong", {}, `${r.model}:${r.version}`), " ", pill(r.status), h("span", { class: "muted" }, `  ${r.id} · created ${when(r.created_at)}`)),
    h("div", { class: "waves" }, (r.waves || []).map((n, i) => {
      const finished = r.status === "completed" || r.status === "completed_with_skips";
      const passed = finished ? r.waves.length : r.wave;  // a finished rollout got through its last wave too
      return h("span", { class: "wave " + (i < passed ? "done" : i === r.wave ? "current" : "") }, `wave ${i + 1}: ${n}`);
    })),
    r.reason ? h("div", { class: r.status === "halted" || r.status === "rolled_back" ? "error-text" : "muted" }, "Gate / reason: " + r.reason) : null,
    table(["Device", "Wave", "State", "From", "To", "Detail"], (r.device_states || []).map((x) => h("tr", {},
      h("td", {}, x.device_id), h("td", { class: "num" }, x.wave + 1), h("td", {}, pill(x.state)),
      h("td", {}, (x.from_digest || "–").slice(0, 12)), h("td", {}, (x.to_digest || "–").slice(0, 12)), h("td", {}, x.detail || ""))))));
  return [
    h("h2", {}, "Rollouts"),
    blocks.length ? blocks : h("p", { class: "muted" }, "No rollouts yet."),
    h("h2", {}, "Recent events"),
    events.length
      ? table(["At", "Kind", "Rollout", "Device", "Detail"], events.map((e) => h("tr", {},
        h("td", {}, when(e.at)), h("td", {}, e.kind), h("td", {}, e.rollout_id || ""), h("td", {}, e.device_id || ""), h("td", {}, e.detail || ""))))
      : h("p", { class: "muted" }, "No events."),
  ];
}

// Campaigns: the list everywhere, per-round accuracy and privacy spent on #/campaigns.
async function campaignList() {
  try {
    return { list: await api("/campaigns") };
  } catch (err) {
    // 409: this coordinator runs without the federated extra; say so instead of failing the page.
    if (String(err.message).includes("HTTP 409")) return { off: String(err.message) };
    throw err;
  }
}

function campaignRow(c) {
  const spec = c.spec || {};
  return h("tr", { "data-campaign": c.id },
    h("td", {}, h("a", { href: `#/campaigns/${encodeURIComponent(c.id)}` }, c.id)), h("td", {}, `${c.model} ${c.base_version}`),
    h("td", {}, pill(c.status)), h("td", { class: "num" }, `${c.round || 0}/${spec.rounds || "?"}`),
    h("td", {}, spec.strategy || "–"), h("td", {}, (spec.privacy && spec.privacy.mode) || "none"),
    h("td", { class: "num" }, fmt(c.epsilon)), h("td", { class: "num" }, fmt(c.evaluation && c.evaluation.accuracy, 3)),
    h("td", {}, c.result_version || "–"), h("td", {}, c.reason || ""));
}

async function campaigns(detailId) {
  const { list, off } = await campaignList();
  const head = h("h2", {}, "Federated campaigns");
  if (off) return [head, h("div", { class: "notice", id: "no-campaigns" }, "Federated campaigns are off: " + off)];
  if (!list.length) return [head, h("p", { class: "muted", id: "no-campaigns" }, "No campaigns yet.")];
  const rows = table(["Campaign", "Base", "Status", "Round", "Strategy", "DP", "Epsilon", "Accuracy", "Result", "Reason"],
    list.map(campaignRow));
  if (detailId === undefined) return [head, rows];
  const shown = detailId ? list.filter((c) => c.id === detailId) : list.slice(0, 3);
  const details = await Promise.all(shown.map((c) => api(`/campaigns/${encodeURIComponent(c.id)}`)));
  const blocks = details.map((c) => {
    const history = c.history || [];
    const at = (r) => (r.started_at + r.duration_s) * 1000;
    const maxEps = (r) => {
      const eps = (r.participants || []).filter((p) => p.epsilon !== undefined).map((p) => p.epsilon);
      return r.central_epsilon !== null && r.central_epsilon !== undefined ? r.central_epsilon : eps.length ? Math.max(...eps) : null;
    };
    return h("div", { class: "campaign", "data-campaign-detail": c.id },
      h("div", {}, h("strong", {}, `${c.id}: ${c.model} ${c.base_version}`), " ", pill(c.status)),
      c.privacy ? h("div", { class: "muted" }, `privacy: ${c.privacy.mode}, epsilon ${fmt(c.privacy.epsilon)} at delta ${c.privacy.delta ?? "–"} (${c.privacy.accountant || "–"}), ${c.privacy.rounds} rounds, ${c.privacy.clients} clients` +
        (c.privacy.secure_aggregation ? "; secure aggregation (SecAgg+)" : "") +
        (c.privacy.local_epsilon != null ? `; one device's updates alone: epsilon ${fmt(c.privacy.local_epsilon)}` : "")) : null,
      h("div", { class: "charts" },
        lineChart("Accuracy", "held-out (and on devices, where the campaign asks), after each round", [
          { name: "accuracy", points: history.map((r) => [at(r), r.evaluation && r.evaluation.accuracy]) },
          { name: "on devices", points: history.map((r) => [at(r), r.device_evaluation && r.device_evaluation.accuracy]) }]),
        lineChart("Privacy spent", "largest cumulative epsilon", [{ name: "epsilon", points: history.map((r) => [at(r), maxEps(r)]) }])),
      table(["Round", "Status", "Trained", "Declined", "Missing", "Seconds", "Reason"], history.map((r) => h("tr", {},
        h("td", { class: "num" }, r.round), h("td", {}, pill(r.status === "ok" ? "ready" : "error")),
        h("td", {}, (r.participants || []).map((p) => p.device).join(", ")),
        h("td", {}, (r.declined || []).map((d) => d.reason).join("; ")), h("td", { class: "num" }, r.missing),
        h("td", { class: "num" }, fmt(r.duration_s, 1)), h("td", {}, r.reason || "")))));
  });
  return [head, rows, ...blocks];
}

// -- main loop -----------------------------------------------------------------------------------
let timer = null;
async function render() {
  clearTimeout(timer);
  const route = readFragment();
  const [, view, arg] = route.split("/");
  const name = view === "device" ? "overview" : view || "overview";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  const main = document.getElementById("main");
  let content;
  try {
    if (view === "device" && arg) content = await device(decodeURIComponent(arg));
    else if (view === "rollouts") content = await rollouts();
    else if (view === "alerts") content = await alertsView();
    else if (view === "campaigns") content = await campaigns(arg ? decodeURIComponent(arg) : null);
    else content = [...(await overview()), ...(await campaigns())];
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    content = [h("div", { class: "banner", id: "error" }, String(err.message || err))];
  }
  main.replaceChildren(...content.flat().filter(Boolean));  // a view may return a list of blocks as one item
  timer = setTimeout(render, REFRESH_MS);
}

window.addEventListener("hashchange", render);
render();
