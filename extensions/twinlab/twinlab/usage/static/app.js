// The Usage page: asks its own server (api/usage, which asks the accounting service with the
// user server's token) and draws totals, budgets, plain SVG charts and energy with methods.
// Nothing from a CDN; everything from the server goes in with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// The totals of an answer, in order, with how a person reads them.
const TOTALS = [
  ["cpu_core_hours", "CPU core-hours", "cpu"],
  ["memory_gib_hours", "memory GiB-hours", "memory"],
  ["gpu_hours", "GPU-hours", "gpu"],
  ["dask_worker_hours", "Dask worker-hours", "dask_worker"],
  ["storage_gib_days", "storage GiB-days", "storage"],
  ["energy_kwh", "energy kWh", "energy"],
  ["co2e_kg", "CO\u2082e kg", "co2e"],
];
const BUDGETS = { cpu_hours: "CPU-hours", gpu_hours: "GPU-hours", storage_gb: "GB stored" };
// How each method's figure was found, in a person's words.
const METHOD_WORDS = {
  rapl: "measured", nvml: "measured", model: "estimated", none: "not estimated",
  cgroup: "measured", proc: "measured", pacct: "measured", prometheus: "measured",
  "s3-list": "measured", du: "measured", allocation: "allocated \u00d7 time",
};
const ENERGY_METHODS = ["rapl", "nvml", "model", "none"];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function cookie(name) {
  const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
  return m ? decodeURIComponent(m[1]) : "";
}

function fmt(v) {
  if (typeof v !== "number" || !isFinite(v)) return "\u2013";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-5) return v.toExponential(1);
  if (a < 0.001) return v.toPrecision(2);
  if (a < 10) return v.toFixed(3);
  if (a < 1000) return v.toFixed(1);
  return Math.round(v).toLocaleString("en");
}

function day(iso, withHour) {
  const d = new Date(iso);
  if (isNaN(d)) return String(iso || "");
  const s = d.toISOString();
  return withHour ? s.slice(0, 10) + " " + s.slice(11, 16) + " UTC" : s.slice(0, 10);
}

// ---- the query ---------------------------------------------------------------------------
function params() {
  const p = new URLSearchParams();
  const period = $("period").value;
  if (period !== "all") {
    const start = new Date(Date.now() - Number(period) * 86400e3);
    p.set("start", start.toISOString().replace(/\.\d+Z$/, "Z"));
  }
  p.set("step", $("step").value);
  if ($("scope").value) p.set("project", $("scope").value);
  return p;
}

async function getUsage(p) {
  const headers = { Accept: "application/json" };
  // JupyterHub's single-user server wants the _xsrf cookie echoed on script requests
  // authenticated by cookie (as the Data lake page does)
  const xsrf = cookie("_xsrf");
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  const r = await fetch("api/usage?" + p.toString(), { credentials: "same-origin", headers });
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) throw new Error((doc && doc.message) || `HTTP ${r.status}`);
  return doc;
}

// ---- methods -----------------------------------------------------------------------------
function asList(v) {
  if (v === null || v === undefined) return [];
  if (Array.isArray(v)) return v.map(String);
  if (typeof v === "object") return Object.keys(v);
  return [String(v)];
}

// The methods the answer gives for a total (keyed by resource or by total name).
function methodsOf(methods, key, resource) {
  return asList((methods || {})[resource] ?? (methods || {})[key]);
}

function energyMethods(methods) {
  let found = [];
  for (const k of ["energy", "energy_kwh", "energy_method", "co2e", "co2e_kg"]) {
    found = found.concat(asList((methods || {})[k]));
  }
  if (!found.length) {
    for (const v of Object.values(methods || {})) {
      found = found.concat(asList(v).filter((m) => ENERGY_METHODS.includes(m)));
    }
  }
  return [...new Set(found)];
}

function chip(method) {
  const word = METHOD_WORDS[method] || "";
  const cls = word === "measured" ? "measured" : word === "estimated" ? "estimated" : word === "not estimated" ? "none" : "";
  const c = el("span", word ? `${method}: ${word}` : method, "chip " + cls);
  c.dataset.method = method;
  return c;
}

// ---- drawing -----------------------------------------------------------------------------
function card(label, value, methods, key) {
  const c = el("div", null, "card");
  c.dataset.key = key;
  c.appendChild(el("div", fmt(value), "value"));
  c.appendChild(el("div", label, "label"));
  const m = el("div", null, "methods");
  for (const x of methods) m.appendChild(chip(x));
  c.appendChild(m);
  return c;
}

function drawTotals(doc) {
  const box = $("totals");
  box.textContent = "";
  const totals = doc.totals || {};
  for (const [key, label, resource] of TOTALS.slice(0, 5)) {
    box.appendChild(card(label, totals[key], methodsOf(doc.methods, key, resource), key));
  }
  const who = doc.project ? `project ${doc.project}` : doc.user || "";
  $("range").textContent = `${who}, ${day(doc.start, true)} \u2192 ${day(doc.end, true)}`;
}

function drawEnergy(doc) {
  const box = $("energy");
  box.textContent = "";
  const em = energyMethods(doc.methods);
  const totals = doc.totals || {};
  box.appendChild(card("energy kWh", totals.energy_kwh, em, "energy_kwh"));
  box.appendChild(card("CO\u2082e kg", totals.co2e_kg, em, "co2e_kg"));
  const body = $("methods").querySelector("tbody");
  body.textContent = "";
  for (const [key, label, resource] of TOTALS) {
    const ms = key === "energy_kwh" || key === "co2e_kg" ? em : methodsOf(doc.methods, key, resource);
    if (!ms.length) continue;
    const tr = el("tr");
    tr.appendChild(el("td", label));
    const td = el("td");
    for (const m of ms) td.appendChild(chip(m));
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function budgetRow(name, b) {
  const level = Number(b.level || 0);
  const row = el("div", null, `budget level-${level >= 100 ? 100 : level >= 95 ? 95 : level >= 80 ? 80 : 0}`);
  row.dataset.budget = name;
  row.dataset.level = String(level);
  row.appendChild(el("span", BUDGETS[name] || name, "name"));
  const bar = el("div", null, "bar");
  const fraction = typeof b.fraction === "number" ? b.fraction : (b.limit ? b.used / b.limit : 0);
  const fill = el("div", null, "fill");
  fill.style.width = `${Math.min(Math.max(fraction, 0), 1) * 100}%`;
  bar.appendChild(fill);
  for (const at of [80, 95]) {
    const mark = el("div", null, "mark");
    mark.style.left = `${at}%`;
    bar.appendChild(mark);
  }
  bar.title = `${(fraction * 100).toFixed(1)} % used`;
  row.appendChild(bar);
  const left = typeof b.limit === "number" ? Math.max(b.limit - (b.used || 0), 0) : null;
  let text = `${fmt(b.used)} of ${fmt(b.limit)} used \u00b7 ${fmt(left)} left (${(fraction * 100).toFixed(0)} %)`;
  if (b.stop_at) text += ` \u00b7 stops at ${day(b.stop_at, true)}`;
  row.appendChild(el("span", text, "figures"));
  if (b.message) row.title = b.message;
  return row;
}

// What the budget checks tell this user (a level reached, a server stopped), worst first.
function drawNotices(doc) {
  const list = $("notices");
  list.textContent = "";
  for (const n of doc.notices || []) {
    const level = Number(n.level || 0);
    let text = n.message || `project ${n.project}: ${n.budget} at ${level} %`;
    if (n.kind === "stopped" && n.at) text = `${day(n.at, true)}: ${text}`;
    else if (level >= 100 && n.stop_at) text += ` (at ${day(n.stop_at, true)})`;
    const li = el("li", text, `level-${level >= 100 ? 100 : 80}`);
    li.dataset.kind = n.kind || "budget";
    list.appendChild(li);
  }
}

function drawBudgets(doc) {
  drawNotices(doc);
  const box = $("budgets");
  box.textContent = "";
  const budgets = doc.budgets || {};
  const names = Object.keys(budgets).sort();
  if (!names.length) {
    box.appendChild(el("p", "No project budgets apply to this view.", "small"));
    return;
  }
  for (const project of names) {
    const sec = el("div", null, "project");
    sec.dataset.project = project;
    sec.appendChild(el("h3", `project ${project}`));
    const entries = budgets[project] || {};
    const keys = Object.keys(entries).filter((k) => entries[k] && typeof entries[k] === "object");
    if (!keys.length) sec.appendChild(el("p", "no limits set", "small"));
    for (const k of keys) sec.appendChild(budgetRow(k, entries[k]));
    box.appendChild(sec);
  }
}

// One bar chart per resource: bars placed by their interval on the period's time axis.
function chart(rows, key, label, t0, t1, withHour) {
  const W = 1000, H = 110, top = 14, bottom = 18, left = 4;
  const wrap = el("div", null, "chart");
  wrap.dataset.key = key;
  const values = rows.map((r) => Number(r[key] || 0));
  const max = Math.max(0, ...values);
  const total = values.reduce((a, b) => a + b, 0);
  const h3 = el("h3", label);
  h3.appendChild(el("span", `total ${fmt(total)} \u00b7 peak ${fmt(max)} per interval`, "small"));
  wrap.appendChild(h3);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  s.appendChild(svg("title", {}, `${label} over time`));
  const span = Math.max(t1 - t0, 1);
  const x = (t) => left + ((t - t0) / span) * (W - 2 * left);
  const y0 = H - bottom;
  rows.forEach((r, i) => {
    const a = Date.parse(r.start), b = Date.parse(r.end);
    if (!(values[i] > 0) || isNaN(a)) return;
    const h = max > 0 ? (values[i] / max) * (y0 - top) : 0;
    const w = Math.max(x(isNaN(b) ? a : b) - x(a) - 1, 1.5);
    const rect = svg("rect", { class: "b", x: x(a), y: y0 - h, width: w, height: h });
    rect.appendChild(svg("title", {}, `${day(r.start, withHour)}: ${fmt(values[i])} ${label}`));
    s.appendChild(rect);
  });
  s.appendChild(svg("line", { class: "axis", x1: 0, x2: W, y1: y0, y2: y0 }));
  s.appendChild(svg("text", { x: left, y: H - 4 }, day(new Date(t0).toISOString(), withHour)));
  s.appendChild(svg("text", { x: W - left, y: H - 4, "text-anchor": "end" }, day(new Date(t1).toISOString(), withHour)));
  s.appendChild(svg("text", { x: left, y: 10 }, fmt(max)));
  wrap.appendChild(s);
  return wrap;
}

function drawCharts(doc, withHour) {
  const box = $("charts");
  box.textContent = "";
  const rows = doc.series || [];
  if (!rows.length) {
    box.appendChild(el("p", "No usage recorded in this period.", "small"));
    return;
  }
  const t0 = Date.parse(rows[0].start);
  const t1 = Math.max(Date.parse(rows[rows.length - 1].end) || 0, Date.parse(doc.end) || 0);
  let drawn = 0;
  for (const [key, label] of TOTALS) {
    if (!rows.some((r) => Number(r[key] || 0) > 0)) continue;
    box.appendChild(chart(rows, key, label, t0, t1, withHour));
    drawn++;
  }
  if (!drawn) box.appendChild(el("p", "No usage recorded in this period.", "small"));
}

function status(text, cls) {
  const box = $("status");
  box.textContent = "";
  if (text) box.appendChild(el("div", text, cls));
}

// ---- the page ------------------------------------------------------------------------------
let projectsListed = false;

async function load() {
  const p = params();
  const csv = new URLSearchParams(p);
  csv.set("format", "csv");
  $("csv").href = "api/usage?" + csv.toString();
  status("loading\u2026", "info");
  let doc;
  try {
    doc = await getUsage(p);
  } catch (e) {
    status(String(e.message || e), "error");
    return;
  }
  status("");
  if (doc.user && !doc.project) $("whoami").textContent = doc.user;
  if (!projectsListed && !doc.project) {
    // the projects one may look at: those whose budgets the own answer carries
    for (const name of Object.keys(doc.budgets || {}).sort()) {
      const o = el("option", `project ${name}`);
      o.value = name;
      $("scope").appendChild(o);
    }
    projectsListed = true;
  }
  drawTotals(doc);
  drawBudgets(doc);
  drawCharts(doc, $("step").value === "hour");
  drawEnergy(doc);
  document.body.dataset.loaded = String(Date.now());
}

for (const id of ["scope", "period", "step"]) $(id).addEventListener("change", load);
$("controls").addEventListener("submit", (e) => { e.preventDefault(); load(); });
load();
