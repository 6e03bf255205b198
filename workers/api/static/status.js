// learnloop status page: polls the gateway's read routes and draws what it gets.
// No libraries and no network beyond this gateway. Every value from the server
// goes into the page as text (textContent), never as markup.
"use strict";

const KEY_STORE = "learnloop.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
// The lag table speaks `learnloop lag`: its column names, in its order, over /v1/lag's fields.
const LAG_COLUMNS = [
  ["GROUP", "group"], ["TOPIC", "topic"], ["PARTITION", "partition"], ["CURRENT-OFFSET", "current_offset"],
  ["LOG-END-OFFSET", "log_end_offset"], ["LAG", "lag"], ["CONSUMER-ID", "consumer_id"], ["HOST", "host"],
  ["CLIENT-ID", "client_id"], ["TIME-LAG", "time_lag_s"], ["STATUS", "status"],
];
const LAG_NUMBERS = new Set(["partition", "current_offset", "log_end_offset", "lag", "time_lag_s"]);

const params = new URLSearchParams(location.search);
if (params.has("key")) {
  // Keep the key for the next visit, and out of the address bar and history.
  localStorage.setItem(KEY_STORE, params.get("key"));
  params.delete("key");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
const refreshSeconds = Math.max(1, Number(params.get("refresh")) || 5);
// learner name -> [{n, v, m, t}]: the gateway's history (loaded once per learner), then this tab's polls.
const history_ = new Map();
const loaded = new Set(); // learners whose history came from the gateway
let maxPoints = 720; // the gateway's limit, once it said

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en-US") : v.toFixed(digits);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// A time from the server: RFC 3339, or epoch seconds (older statuses). null when it is neither.
function toDate(v) {
  if (typeof v === "number" && Number.isFinite(v)) return new Date(v * 1000);
  if (typeof v === "string" && v) { const d = new Date(v); return Number.isNaN(d.getTime()) ? null : d; }
  return null;
}

// Local clock time; the date too when it is not today.
function clock(d) {
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "-";
  const s = Math.max(0, Number(seconds));
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ago(d) {
  const s = (Date.now() - d.getTime()) / 1000;
  if (s < 1) return "just now";
  const text = duration(s);
  return (s < 60 ? text.replace(/\.\d s$/, " s") : text) + " ago";
}

// "14:02:11 (3 min ago)", with the exact instant on hover.
function when(d) {
  return el("time", { datetime: d.toISOString(), title: d.toISOString() }, `${clock(d)} (${ago(d)})`);
}

async function getJSON(path) {
  const key = localStorage.getItem(KEY_STORE);
  const headers = key ? { "X-API-Key": key } : {};
  try {
    const res = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON: keep null */ }
    return { ok: res.ok, status: res.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { detail: "gateway unreachable: " + err } };
  }
}

function problem(target, res) {
  const detail = (res.body && res.body.detail) || "HTTP " + res.status;
  target.replaceChildren(el("p", { class: res.status === 503 ? "note" : "error" }, detail));
}

// The metric a learner is judged by: rolling accuracy (classifiers) or rolling MAE (regressors).
function mainMetric(metrics) {
  for (const name of ["rolling_accuracy", "accuracy", "rolling_mae", "mae"]) {
    if (typeof (metrics || {})[name] === "number") return { name, value: metrics[name] };
  }
  return null;
}

// The label-free estimate of served predictions, next to the realized metric: what is expected before
// the labels come, and how far the estimate was from the truth once they came.
function estimateStats(monitors) {
  const e = (monitors || {}).estimate;
  if (!e || typeof e.estimated_accuracy !== "number") return [];
  const out = [el("span", { class: "estimate" }, "estimated accuracy ", el("b", {}, fmt(e.estimated_accuracy)))];
  if (typeof e.estimation_error === "number") {
    out.push(el("span", { class: "estimate-error" }, "estimate off by ", el("b", {}, fmt(e.estimation_error))));
  }
  return out;
}

// A learner held by two partitions (the partition count changed) is two models: one card and one line each.
// The owner's is the one that learns now, and the one whose history the gateway keeps.
const learnerKey = learner => learner.split && learner.partition !== learner.owner_partition
  ? `${learner.name}@${learner.partition}` : learner.name;

function remember(learner, metric) {
  if (!metric) return [];
  const points = (history_.get(learnerKey(learner)) || []).filter(p => p.m === metric.name);
  const n = Number(learner.n_learned) || 0;
  const last = points[points.length - 1];
  if (!last || last.n !== n || last.v !== metric.value) {
    if (last && n < last.n) points.length = 0; // the learner was reset: start its line again
    const t = toDate(learner.learned_at) || toDate(learner.snapshot_at) || new Date();
    points.push({ n, v: metric.value, m: metric.name, t });
    if (points.length > maxPoints) points.splice(0, points.length - maxPoints);
  }
  history_.set(learnerKey(learner), points);
  return points;
}

// The points the gateway kept (so a reload keeps its charts), ahead of any this tab saw since.
async function loadHistory(names) {
  await Promise.all(names.filter(name => !loaded.has(name)).map(async name => {
    const res = await getJSON(`v1/learners/${encodeURIComponent(name)}/history`);
    if (!res.ok) {
      if (res.status !== 503) loaded.add(name); // 503: Redis or the history is down, ask again next poll
      return;
    }
    loaded.add(name);
    if (Number(res.body.limit) > 0) maxPoints = Number(res.body.limit);
    const kept = (res.body.points || []).map(p => ({ n: Number(p.n), v: Number(p.value), m: p.metric, t: toDate(p.at) }));
    const lastN = kept.length ? kept[kept.length - 1].n : -1;
    const seen = (history_.get(name) || []).filter(p => p.n > lastN);
    history_.set(name, kept.concat(seen).slice(-maxPoints));
  }));
}

function chart(points, driftAt, driftTimes, metric) {
  const W = 420, H = 150, L = 34, R = 10, T = 12, B = 24;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                            "aria-label": `${metric.name} over events learned` });
  const xs = points.map(p => p.n).concat(driftAt);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 = Math.max(0, x0 - 1); x1 = x1 + 1; }
  const isError = metric.name.includes("mae");
  const y0 = 0;
  const y1 = isError ? Math.max(...points.map(p => p.v), 1e-9) * 1.15 : 1;
  const X = n => L + (W - L - R) * (n - x0) / (x1 - x0);
  const Y = v => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4;
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    root.append(svg("text", { x: L - 6, y: Y(v) + 3, "text-anchor": "end" }, v.toFixed(2)));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("text", { x: L, y: H - 8 }, fmt(Math.round(x0))));
  root.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, fmt(Math.round(x1))));
  root.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" },
                  `events learned — ${metric.name}`));
  for (const n of driftAt) {
    const line = svg("line", { class: "drift", x1: X(n), x2: X(n), y1: T, y2: H - B });
    const at = driftTimes.get(n);
    line.append(svg("title", {}, `drift at event ${fmt(n)}` + (at ? ` · ${clock(at)}` : "")));
    root.append(line);
    root.append(svg("text", { class: "drift-label", x: X(n) + 3, y: T + 9 }, "drift"));
  }
  if (points.length > 1) {
    root.append(svg("polyline", { class: "series",
                                  points: points.map(p => `${X(p.n).toFixed(1)},${Y(p.v).toFixed(1)}`).join(" ") }));
  }
  const last = points[points.length - 1];
  const dot = svg("circle", { class: "point", cx: X(last.n), cy: Y(last.v), r: 3.5 });
  dot.append(svg("title", {}, `${metric.name} ${fmt(last.v)} at event ${fmt(last.n)}` +
                               (last.t ? ` · ${clock(last.t)}` : "")));
  root.append(dot);
  return root;
}

// The version this gateway predicts with: "not declared" (no predict route) or "none yet" (nothing published).
function servedVersion(entry) {
  if (!entry) return "not declared";
  return entry.version === null || entry.version === undefined ? "none yet" : "v" + entry.version;
}

// Under a chart: how many points, and the clock times they span.
function span(points) {
  const times = points.map(p => p.t).filter(Boolean);
  const text = `${fmt(points.length)} point${points.length === 1 ? "" : "s"}`;
  if (!times.length) return el("p", { class: "span" }, text);
  const first = times[0], last = times[times.length - 1];
  return el("p", { class: "span" }, `${text} · `, el("time", { datetime: first.toISOString() }, clock(first)),
            " – ", el("time", { datetime: last.toISOString() }, clock(last)));
}

function renderLearners(res) {
  const target = document.getElementById("learners");
  if (!res.ok) return problem(target, res);
  const { learners = [], drifts = [], serving = {} } = res.body || {};
  if (!learners.length) {
    return target.replaceChildren(el("p", { class: "note" }, "no learner state yet (is a feedback worker running?)"));
  }
  const cards = learners.map(learner => {
    const metric = mainMetric(learner.metrics);
    const points = remember(learner, metric);
    const mine = drifts.filter(d => d.learner === learner.name);
    const driftAt = new Set(mine.map(d => Number(d.n_seen)));
    const driftTimes = new Map(mine.map(d => [Number(d.n_seen), toDate(d.detected_at)]).filter(([, t]) => t));
    const lastDrift = learner.last_drift && Number.isFinite(Number(learner.last_drift.n_seen))
      ? Number(learner.last_drift.n_seen) : null;
    if (lastDrift !== null) driftAt.add(lastDrift);
    // A drift is a position in the learner's stream (an event count) and, when its event is known, a time.
    const drift = lastDrift === null ? el("b", {}, "–")
      : el("span", {}, el("b", {}, `at event ${fmt(lastDrift)}`),
           ...(driftTimes.has(lastDrift) ? [" · ", when(driftTimes.get(lastDrift))] : []));
    const snapshot = toDate(learner.snapshot_at);
    const split = learner.split
      ? el("span", { class: "split", title: "this learner is held by more than one partition: separate models" },
           learner.partition === learner.owner_partition ? `partition ${learner.partition} (owner)`
                                                         : `partition ${learner.partition} (not the owner)`)
      : "";
    const card = el("article", { class: "learner", "data-learner": learnerKey(learner) },
      el("h3", {}, learner.name, split, el("span", { class: "kind" }, `${learner.task || "?"} · ${learner.model || "?"}`)),
      el("div", { class: "stats" },
        el("span", {}, "learned ", el("b", {}, fmt(learner.n_learned || 0))),
        el("span", { class: "served" }, "serving ", el("b", {}, servedVersion(serving[learner.name]))),
        el("span", {}, `${metric ? metric.name : "metric"} `, el("b", {}, metric ? fmt(metric.value) : "–")),
        ...estimateStats(learner.monitors),
        el("span", {}, "drifts ", el("b", {}, fmt(learner.drifts || 0))),
        el("span", { class: "last-drift" }, "last drift ", drift),
        ...(snapshot ? [el("span", { class: "saved" }, "saved ", when(snapshot))] : [])));
    if (points.length) {
      card.append(chart(points, [...driftAt].filter(Number.isFinite).sort((a, b) => a - b), driftTimes, metric),
                  span(points));
    }
    return card;
  });
  target.replaceChildren(...cards);
}

function renderLag(res) {
  const target = document.getElementById("lag");
  if (!res.ok) return problem(target, res);
  const rows = (res.body && res.body.rows) || [];
  if (!rows.length) return target.replaceChildren(el("p", { class: "note" }, "no consumer groups reported"));
  const head = el("tr", {}, ...LAG_COLUMNS.map(([title, field]) =>
    el("th", { "data-field": field, class: LAG_NUMBERS.has(field) ? "num" : "" }, title)));
  const body = rows.map(row => el("tr", {}, ...LAG_COLUMNS.map(([, field]) => {
    const v = row[field];
    const missing = v === null || v === undefined || v === "";
    if (field === "status") return el("td", { class: "status " + String(v || "").toLowerCase() }, v || "-");
    if (LAG_NUMBERS.has(field)) {
      const cls = "num" + (missing ? " none" : "") + (["lag", "time_lag_s"].includes(field) && v > 0 ? " lagging" : "");
      const text = field === "time_lag_s" ? duration(v) : missing ? "-" : fmt(v);
      return el("td", field === "time_lag_s" && !missing ? { class: cls, title: `${v} s` } : { class: cls }, text);
    }
    return el("td", { class: missing ? "none" : "text" }, missing ? "-" : v);
  })));
  target.replaceChildren(el("table", { id: "lag-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
}

function renderModels(res) {
  const target = document.getElementById("models");
  if (!res.ok) return problem(target, res);
  const { versions = [], note = null } = res.body || {};
  const parts = [];
  if (note) parts.push(el("p", { class: "note" }, note));
  if (!versions.length && !note) parts.push(el("p", { class: "note" }, "no registered model versions"));
  if (versions.length) {
    const head = el("tr", {}, ...["model", "version", "aliases", "created", "metrics"].map(c => el("th", {}, c)));
    const rows = [...versions].reverse().map(v => el("tr", { "data-model": v.name },
      el("td", {}, v.name), el("td", { class: "num" }, v.version),
      el("td", {}, ...(v.aliases || []).map(a => el("span", { class: "alias " + a }, a))),
      el("td", {}, v.created_at ? new Date(v.created_at).toLocaleString() : "–"),
      el("td", { class: "wrap" }, Object.entries(v.metrics || {}).slice(0, 3).map(([k, m]) => `${k} ${fmt(m, 3)}`).join(", "))));
    parts.push(el("table", { id: "models-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  target.replaceChildren(...parts);
}

// Running and paused rollouts only: a finished one is history (`learnloop rollouts`).
function renderRollouts(res) {
  const target = document.getElementById("rollouts");
  if (!target) return;
  if (!res.ok) return problem(target, res);
  const live = ((res.body || {}).rollouts || []).filter(r => r.state === "running" || r.state === "paused");
  if (!live.length) return target.replaceChildren(el("p", { class: "note" }, "no rollout running"));
  const head = el("tr", {}, ...["model", "state", "step", "share", "champion", "challenger", "difference"]
    .map(c => el("th", {}, c)));
  const rows = live.map(r => el("tr", { "data-rollout": r.id },
    el("td", {}, r.model), el("td", {}, r.state), el("td", { class: "num" }, `${r.step + 1}/${r.steps.length}`),
    el("td", { class: "num" }, `${r.share} %`),
    el("td", {}, `v${r.champion_version} ${fmt(r.champion.metric.mean, 3)} (${r.champion.labels})`),
    el("td", {}, `v${r.challenger_version} ${fmt(r.challenger.metric.mean, 3)} (${r.challenger.labels})`),
    el("td", {}, `[${fmt(r.difference.lower, 3)}, ${fmt(r.difference.upper, 3)}]`)));
  target.replaceChildren(el("table", { id: "rollouts-table" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function poll() {
  const [learners, lag, models, rollouts] = await Promise.all(
    [getJSON("v1/learners"), getJSON("v1/lag"), getJSON("v1/models"), getJSON("v1/rollouts")]);
  renderRollouts(rollouts);
  if (learners.ok) await loadHistory(((learners.body || {}).learners || []).map(l => l.name));
  renderLearners(learners);
  renderLag(lag);
  renderModels(models);
  const denied = [learners, lag, models].some(r => r.status === 401 || r.status === 403);
  document.getElementById("keyform").hidden = !denied;
  const state = document.getElementById("state");
  state.textContent = denied ? "needs a read key" : learners.ok ? "live" : "degraded";
  state.className = learners.ok && !denied ? "ok" : "error";
  document.getElementById("updated").textContent =
    `updated ${new Date().toLocaleTimeString()} · every ${refreshSeconds}s`;
}

document.getElementById("keyform").addEventListener("submit", event => {
  event.preventDefault();
  const value = document.getElementById("apikey").value.trim();
  if (value) localStorage.setItem(KEY_STORE, value);
  poll();
});

async function loop() {
  try { await poll(); } finally { setTimeout(loop, refreshSeconds * 1000); }
}
loop();
