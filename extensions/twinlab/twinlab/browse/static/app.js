// The data lake page: calls the twinlab server extension's API on the same origin.
// Everything from the server is put into the page with textContent (never as HTML).
"use strict";

// This page is served at <base_url>datalake/ by jupyter-server-proxy: the API is beside it.
const BASE = location.pathname.replace(/datalake\/.*$/, "");
const LAKE = BASE + "twinlab/api/lake/";
const STORE = BASE + "twinlab/api/storage/";
const $ = (id) => document.getElementById(id);

function cookie(name) {
  const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(url, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  // JupyterHub's single-user server wants the _xsrf cookie echoed on every script request
  // authenticated by cookie (GETs included), not only on writes as plain Jupyter does
  const xsrf = cookie("_xsrf");
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  const r = await fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers }));
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) throw new Error((doc && doc.message) || `HTTP ${r.status}`);
  return doc;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function showMessage(box, text, cls) {
  box.textContent = "";
  if (text) box.appendChild(el("div", text, cls));
}

// ---- tabs ------------------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) {
      t.classList.toggle("active", t === tab);
      $(t.dataset.panel).hidden = t !== tab;
    }
    if (tab.id === "tab-buckets" && !$("bucket").options.length) loadBuckets();
  });
}

// ---- map: drag a box on an equirectangular graticule ------------------------------------
const map = { canvas: $("map"), box: null, drag: null, land: null };

function lonlat(ev) {
  const r = map.canvas.getBoundingClientRect();
  const x = Math.min(Math.max(ev.clientX - r.left, 0), r.width);
  const y = Math.min(Math.max(ev.clientY - r.top, 0), r.height);
  return [Math.round((x / r.width) * 360 - 180), Math.round(90 - (y / r.height) * 180)];
}

function drawMap() {
  const c = map.canvas, g = c.getContext("2d"), w = c.width, h = c.height;
  const X = (lon) => ((lon + 180) / 360) * w, Y = (lat) => ((90 - lat) / 180) * h;
  const k = w / 360; // the canvas has 2 pixels per CSS pixel: crisp on high-DPI screens
  g.fillStyle = "#eaf2fb";
  g.fillRect(0, 0, w, h);
  if (map.land) g.drawImage(map.land, 0, 0, w, h);
  g.strokeStyle = "rgba(60,80,100,0.35)";
  g.lineWidth = 0.5 * k;
  g.font = `${9 * k}px sans-serif`;
  g.fillStyle = "#5b6673";
  for (let lon = -180; lon <= 180; lon += 30) {
    g.beginPath(); g.moveTo(X(lon), 0); g.lineTo(X(lon), h); g.stroke();
    if (lon > -180 && lon < 180 && lon % 60 === 0) g.fillText(String(lon), X(lon) + 2 * k, h - 3 * k);
  }
  for (let lat = -90; lat <= 90; lat += 30) {
    g.beginPath(); g.moveTo(0, Y(lat)); g.lineTo(w, Y(lat)); g.stroke();
    if (lat > -90 && lat < 90) g.fillText(String(lat), 2 * k, Y(lat) - 2 * k);
  }
  const b = map.drag ? normBox(map.drag) : map.box;
  if (b) {
    g.fillStyle = "rgba(21,101,192,0.2)";
    g.strokeStyle = "#1565c0";
    g.lineWidth = 1.5 * k;
    g.fillRect(X(b[0]), Y(b[3]), X(b[2]) - X(b[0]), Y(b[1]) - Y(b[3]));
    g.strokeRect(X(b[0]), Y(b[3]), X(b[2]) - X(b[0]), Y(b[1]) - Y(b[3]));
  }
}

function normBox(d) {
  return [Math.min(d[0][0], d[1][0]), Math.min(d[0][1], d[1][1]),
          Math.max(d[0][0], d[1][0]), Math.max(d[0][1], d[1][1])];
}

function setBox(b) {
  map.box = b && b[2] > b[0] && b[3] > b[1] ? b : null;
  $("bbox-label").textContent = map.box
    ? `box: W ${map.box[0]} S ${map.box[1]} E ${map.box[2]} N ${map.box[3]}`
    : "box: whole globe (drag on the map)";
  drawMap();
}

map.canvas.addEventListener("mousedown", (ev) => { const p = lonlat(ev); map.drag = [p, p]; });
window.addEventListener("mousemove", (ev) => {
  if (map.drag) { map.drag[1] = lonlat(ev); drawMap(); }
});
window.addEventListener("mouseup", () => {
  if (map.drag) { const b = normBox(map.drag); map.drag = null; setBox(b); }
});
$("bbox-clear").addEventListener("click", () => setBox(null));
(function loadLand() {
  const img = new Image();
  img.onload = () => { map.land = img; drawMap(); };
  img.src = "land.png";
})();
drawMap();

// ---- search ----------------------------------------------------------------------------
const state = { next: null, params: null, selected: null };

function searchParams() {
  const p = new URLSearchParams();
  const q = $("q").value.trim();
  if (q) p.set("q", q);
  if ($("collection").value) p.set("collections", $("collection").value);
  const start = $("start").value, end = $("end").value;
  if (start || end) p.set("datetime", `${start ? start + "T00:00:00Z" : ".."}/${end ? end + "T23:59:59Z" : ".."}`);
  if (map.box) p.set("bbox", map.box.join(","));
  p.set("limit", "50");
  return p;
}

async function runSearch(more) {
  const box = $("warnings");
  if (!more) {
    state.params = searchParams();
    state.next = null;
    $("results").textContent = "";
    $("result-count").textContent = "searching...";
  }
  const p = new URLSearchParams(state.params);
  if (more && state.next) p.set("token", state.next);
  try {
    const doc = await api(LAKE + "search?" + p.toString());
    showMessage(box, "");
    for (const w of doc["twinhub:warnings"] || []) box.appendChild(el("div", w, "warn"));
    const sources = Object.entries(doc["twinhub:sources"] || {});
    if (sources.length) {
      // a federated search: say which sources answered and with how many items
      const line = sources.map(([name, s]) => `${name}: ${s.status} (${s.returned ?? 0})`);
      box.appendChild(el("div", "sources " + line.join(", "), "small"));
    }
    for (const f of doc.features) $("results").appendChild(resultRow(f));
    state.next = doc.next_token;
    $("more").hidden = !state.next;
    const n = $("results").children.length;
    const total = doc.numberMatched != null ? ` of ${doc.numberMatched}` : "";
    $("result-count").textContent = `${n}${total} item${n === 1 ? "" : "s"}`;
  } catch (e) {
    $("result-count").textContent = "";
    showMessage(box, "search failed: " + e.message, "error");
  }
}

function sourceOf(f) {
  return (f.properties || {})["twinhub:source"] || "local";
}

function resultRow(f) {
  const li = el("li");
  const props = f.properties || {};
  const source = sourceOf(f);
  li.appendChild(el("span", source, "badge" + (source === "local" ? "" : " remote")));
  li.appendChild(el("span", f.collection, "badge"));
  li.appendChild(el("div", f.id, "id"));
  const when = props.start_datetime ? `${props.start_datetime} .. ${props.end_datetime || ""}` : props.datetime || "";
  li.appendChild(el("div", when, "small"));
  li.dataset.id = f.id;
  li.addEventListener("click", () => {
    for (const o of $("results").children) o.classList.toggle("selected", o === li);
    showItem(f);
  });
  return li;
}

$("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); runSearch(false); });
$("more").addEventListener("click", () => runSearch(true));

// ---- item view -------------------------------------------------------------------------
function dataAssets(f) {
  // Zarr first: it is read lazily from S3, GRIB is copied whole first (as dl.open prefers)
  const rank = (a) => ["zarr", "grib", "netcdf"].findIndex((k) => new RegExp(k, "i").test(`${a.type} ${a.href}`));
  return Object.entries(f.assets || {})
    .filter(([, a]) => rank(a) >= 0 || /\.(grib2?|nc)$/i.test(a.href || ""))
    .sort(([, a], [, b]) => (rank(a) + 4) % 4 - (rank(b) + 4) % 4);
}

async function showItem(f) {
  state.selected = f;
  $("item").hidden = false;
  $("item-title").textContent = f.id;
  $("item-sub").textContent = `collection ${f.collection} | source ${sourceOf(f)}`;
  // metadata: simple values as text, structured ones as compact JSON
  const meta = $("metadata").tBodies[0];
  meta.textContent = "";
  for (const [k, v] of Object.entries(f.properties || {}).sort()) {
    if (k === "twinhub:search") continue; // the lake's search text: for q, not for reading
    const tr = el("tr");
    tr.appendChild(el("th", k));
    tr.appendChild(el("td", typeof v === "object" ? JSON.stringify(v) : v));
    meta.appendChild(tr);
  }
  const assets = $("assets").tBodies[0];
  assets.textContent = "";
  for (const [k, a] of Object.entries(f.assets || {})) {
    const tr = el("tr");
    for (const t of [k, a.title || "", a.type || "", a.href]) tr.appendChild(el("td", t));
    if (a["twinhub:refused"]) tr.appendChild(el("td", "refused: " + a["twinhub:refused"], "small"));
    assets.appendChild(tr);
  }
  const sel = $("ql-asset");
  sel.textContent = "";
  for (const [k] of dataAssets(f)) sel.appendChild(el("option", k));
  fillTimes(f);
  vizlabLink(f);
  $("code-line").textContent = "";
  $("copy-status").textContent = "";
  drawQuicklook();
  try {
    const p = new URLSearchParams({ collection: f.collection, item: f.id });
    $("code-line").textContent = (await api(LAKE + "code?" + p.toString())).code;
  } catch (e) {
    $("code-line").textContent = "# " + e.message;
  }
}

// ---- "Open in VizLab": the tiles service's explorer page, at the hub's own base URL -----
// The server is <hub base>user/<name>/[<server>/]: the hub's base is what comes before "user/".
const HUB_BASE = (BASE.match(/^(.*?\/)user\/[^/]+\//) || [null, "/"])[1];

function vizlabLink(f) {
  // only items of the platform's own lake: the tiles service renders those, not federated ones
  const a = $("open-vizlab");
  const variables = Object.keys((f.properties || {})["cube:variables"] || {});
  a.hidden = sourceOf(f) !== "local" || !dataAssets(f).length;
  const p = new URLSearchParams({ item: f.id });
  if (variables.length) p.set("variable", variables[0]);
  a.href = HUB_BASE + "services/tiles/vizlab?" + p.toString();
}

// ---- time picker: the item's valid times, from its datacube time dimension -------------
const MAX_TIMES = 2000;

function isoDuration(text) {
  // PnDTnHnMnS (what datacube steps say) in milliseconds; 0 when not understood
  const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(text || "");
  if (!m) return 0;
  return (((+(m[1] || 0) * 24 + +(m[2] || 0)) * 60 + +(m[3] || 0)) * 60 + +(m[4] || 0)) * 1000;
}

function validTimes(f) {
  // the item's time dimension (extent + step), else its start/end, else its datetime
  const props = f.properties || {};
  const dims = props["cube:dimensions"] || {};
  const tdim = Object.values(dims).find((d) => d && d.type === "temporal");
  const start = Date.parse((tdim && tdim.extent && tdim.extent[0]) || props.start_datetime || props.datetime || "");
  const end = Date.parse((tdim && tdim.extent && tdim.extent[1]) || props.end_datetime || "");
  const step = isoDuration(tdim && tdim.step);
  if (isNaN(start)) return [];
  if (isNaN(end) || end <= start) return [new Date(start)];
  if (!step) return [new Date(start), new Date(end)];
  const out = [];
  for (let t = start; t <= end && out.length < MAX_TIMES; t += step) out.push(new Date(t));
  return out;
}

function timeLabel(d) {
  return d.toISOString().replace("T", " ").replace(/:00\.000Z$/, " UTC");
}

function fillTimes(f) {
  const sel = $("ql-time");
  sel.textContent = "";
  const times = validTimes(f);
  for (const d of times) {
    const o = el("option", timeLabel(d));
    o.value = d.toISOString().replace(/\.000Z$/, "Z");
    sel.appendChild(o);
  }
  if (!times.length) {
    const o = el("option", "first time step");
    o.value = "0";
    sel.appendChild(o);
  }
  sel.disabled = times.length < 2;
}

$("ql-time").addEventListener("change", drawQuicklook);

function drawQuicklook() {
  const f = state.selected, img = $("quicklook");
  if (!f) return;
  const p = new URLSearchParams({ collection: f.collection, item: f.id, time: $("ql-time").value || "0" });
  if ($("ql-asset").value) p.set("asset", $("ql-asset").value);
  $("ql-status").textContent = "drawing...";
  img.onload = () => { $("ql-status").textContent = ""; };
  img.onerror = async () => {
    // the <img> cannot show the JSON error: ask again to say why
    let why = "no quick-look";
    try { await api(img.src); } catch (e) { why = e.message; }
    $("ql-status").textContent = why;
  };
  img.src = LAKE + "quicklook?" + p.toString();
}

$("ql-draw").addEventListener("click", drawQuicklook);

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) {
    // no clipboard API (insecure context, permission): select and copy instead
    const r = document.createRange();
    r.selectNodeContents($("code-line"));
    const s = getSelection();
    s.removeAllRanges();
    s.addRange(r);
    return document.execCommand("copy");
  }
}

$("copy").addEventListener("click", async () => {
  const ok = await copyText($("code-line").textContent);
  $("copy-status").textContent = ok ? "copied" : "select the line and copy it";
});

// ---- buckets ---------------------------------------------------------------------------
const store = { bucket: "", prefix: "", next: null, home: "" };

async function loadBuckets() {
  const sel = $("bucket");
  try {
    const doc = await api(STORE + "buckets");
    sel.textContent = "";
    for (const b of doc.buckets) {
      const o = el("option", `${b.name} (${b.kind})`);
      o.value = b.name;
      sel.appendChild(o);
      if (b.kind === "home") store.home = b.name;
    }
    listObjects(sel.value, "");
  } catch (e) {
    showMessage($("crumbs"), "cannot list buckets: " + e.message, "error");
  }
}

function human(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function crumbs() {
  const box = $("crumbs");
  box.textContent = "";
  const parts = store.prefix.split("/").filter(Boolean);
  const link = (label, prefix) => {
    const a = el("a", label, "folder");
    a.addEventListener("click", () => listObjects(store.bucket, prefix));
    return a;
  };
  box.appendChild(link(store.bucket + "/", ""));
  parts.forEach((p, i) => box.appendChild(link(p + "/", parts.slice(0, i + 1).join("/") + "/")));
}

async function listObjects(bucket, prefix, more) {
  store.bucket = bucket;
  store.prefix = prefix;
  const body = $("objects").tBodies[0];
  if (!more) { body.textContent = ""; store.next = null; }
  crumbs();
  const p = new URLSearchParams({ bucket, prefix, limit: "200" });
  if (more && store.next) p.set("token", store.next);
  try {
    const doc = await api(STORE + "list?" + p.toString());
    for (const folder of doc.folders) {
      const tr = el("tr");
      const td = el("td");
      const a = el("a", folder.slice(prefix.length), "folder");
      a.addEventListener("click", () => listObjects(bucket, folder));
      td.appendChild(a);
      tr.append(td, el("td", ""), el("td", ""), el("td", ""));
      body.appendChild(tr);
    }
    for (const o of doc.objects) {
      const tr = el("tr");
      tr.dataset.key = o.key;
      const btn = el("button", "download");
      btn.addEventListener("click", () => download(bucket, o.key));
      const td = el("td");
      td.appendChild(btn);
      tr.append(el("td", o.key.slice(prefix.length)), el("td", human(o.size)), el("td", o.last_modified.slice(0, 19)), td);
      body.appendChild(tr);
    }
    if (!body.children.length) body.appendChild(el("tr")).appendChild(el("td", "(empty)", "small"));
    store.next = doc.next_token;
    $("objects-more").hidden = !store.next;
  } catch (e) {
    body.appendChild(el("tr")).appendChild(el("td", "cannot list: " + e.message, "error"));
  }
}

async function download(bucket, key) {
  try {
    const doc = await api(STORE + "presign?" + new URLSearchParams({ bucket, key }).toString());
    const a = el("a");
    a.href = doc.url;
    a.download = key.split("/").pop();
    document.body.appendChild(a);
    a.click();
    a.remove();
  } catch (e) {
    $("upload-status").textContent = "download failed: " + e.message;
  }
}

$("bucket").addEventListener("change", () => listObjects($("bucket").value, ""));
$("objects-more").addEventListener("click", () => listObjects(store.bucket, store.prefix, true));
$("upload-file").addEventListener("change", () => {
  const f = $("upload-file").files[0];
  if (f && !$("upload-key").value) {
    const here = store.bucket === store.home ? store.prefix : "";
    $("upload-key").value = here + f.name;
  }
});
$("upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = $("upload-file").files[0], key = $("upload-key").value.trim();
  if (!f || !key) { $("upload-status").textContent = "choose a file and a key"; return; }
  $("upload-status").textContent = "uploading...";
  try {
    const doc = await api(STORE + "upload?" + new URLSearchParams({ key }).toString(), {
      method: "PUT", body: f, headers: { "Content-Type": f.type || "application/octet-stream" },
    });
    $("upload-status").textContent = `uploaded ${doc.key} (${human(doc.size)})`;
    if (store.bucket === store.home) listObjects(store.home, store.prefix);
  } catch (e) {
    $("upload-status").textContent = "upload failed: " + e.message;
  }
});

// ---- start -----------------------------------------------------------------------------
(async function start() {
  try {
    const doc = await api(LAKE + "collections");
    for (const c of doc.collections) {
      const o = el("option", c.source === "local" ? c.title : `${c.title} [${c.source}]`);
      o.value = c.id;
      $("collection").appendChild(o);
    }
  } catch (e) {
    showMessage($("warnings"), "the data lake is not reachable: " + e.message, "error");
  }
  try {
    const info = await api(BASE + "twinlab/api/info");
    $("whoami").textContent = info.user ? `signed in as ${info.user}` : "";
  } catch (e) { /* the page works without it */ }
})();
