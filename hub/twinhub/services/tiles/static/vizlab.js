// The VizLab page: a field of the lake on its native grid, drawn from the tiles service's own
// answers (OGC API - Tiles PNGs, server-side views, legend, EDR position). The state (item,
// variable, time, projection, view, colours) lives in the URL (history.replaceState): the
// address is a link to what is shown. Everything from the server goes into the page as text
// (textContent, attributes), never as HTML; ids from the URL are checked, then encoded.
// The map maths: vizmaps.js; shared helpers and the URL state: vizcommon.js; the chart:
// vizseries.js; the player: vizplayer.js; the layer list: vizfinder.js.
'use strict';

(function () {
  const M = window.VizMaps;
  const C = window.VizCommon;
  const { PREFIX, COLORMAPS, ID_RE, OWN_KEYS, el, api, finite, timeText } = C;
  const MAX_VIEW_PIXELS = Number(document.body.dataset.maxViewPixels) || 4000000;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const MAX_IMAGES = 400; // tile images kept (decoded) for panning back and replaying
  const MAX_VIEW_ZOOM = 256;
  const PLAY_WAIT_MS = 5000; // the player waits this long at most for the next frame's tiles

  const state = C.newState();
  let layer = null; // VizCommon.normaliseLayers(...)
  let tIndex = 0;

  let urlTimer = null;
  let urlWritten = 0;
  function writeUrl() {
    // replaceState at once, but at most every 200 ms (browsers throttle it): the last
    // change of a burst (wheel, player) is written when the 200 ms are over
    const write = () => {
      urlTimer = null;
      urlWritten = Date.now();
      const url = location.pathname + '?' + C.urlQuery(state);
      history.replaceState(null, '', url);
      $('share').href = url;
    };
    if (urlTimer) return;
    const wait = urlWritten + 200 - Date.now();
    if (wait <= 0) write();
    else urlTimer = setTimeout(write, wait);
  }

  // -- the style every image of the current frame asks for ----------------------------------
  function variableInfo() {
    return (layer && layer.variables.find((v) => v.name === state.variable)) || null;
  }

  function range() {
    const info = variableInfo();
    const def = (info && info.range) || [0, 1];
    return [state.vmin !== null ? state.vmin : def[0], state.vmax !== null ? state.vmax : def[1]];
  }

  function timesOf() {
    const info = variableInfo();
    return (info && info.times && info.times.map(C.isoZ).filter(Boolean)) || (layer ? layer.times : []);
  }

  function styleQuery(timeKey, t) {
    // explicit range: the colours mean the same at every time step
    const [vmin, vmax] = range();
    const q = new URLSearchParams({ cmap: state.cmap, vmin: String(vmin), vmax: String(vmax) });
    if (t) q.set(timeKey, t);
    if (state.method !== 'nearest') q.set('method', state.method);
    for (const [k, v] of Object.entries(state.sel)) q.set(k, v);
    return q;
  }

  function layerPath() {
    return enc(state.item) + '/' + enc(state.variable);
  }

  function tileUrl(tms, z, row, col, t) {
    return PREFIX + 'collections/' + layerPath() + '/map/tiles/' + tms + '/' + z + '/' + row + '/' + col +
      '?' + styleQuery('datetime', t).toString();
  }

  function maxZoom(tms) {
    const info = variableInfo();
    const m = (info && info.max[tms]) ?? (layer && layer.max[tms]);
    return finite(m) ? m : 8;
  }

  // -- images: a bounded cache of decoded tiles and views --------------------------------------
  const images = C.imageCache(MAX_IMAGES, () => scheduleDraw(), (why) => status(why, true));
  const image = (url) => images.get(url);
  function status(text, bad) {
    const s = $('map-status');
    s.textContent = text || '';
    s.classList.toggle('error', Boolean(bad));
  }

  // -- the map ------------------------------------------------------------------------------
  const canvas = $('map');
  const g = canvas.getContext('2d');
  let size = { w: 0, h: 0, dpr: 1 };
  const shown = new Map(); // "tms/z/row/col" -> the image last drawn there (no flicker on a time step)
  let current = { view: null, entry: null }; // the server view on screen and its parameters
  let drag = null; // {x, y, dx, dy, moved}
  let marker = null; // [lon, lat] of the last click

  function resize() {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    size = { w: Math.max(1, Math.round(r.width)), h: Math.max(1, Math.round(r.height)), dpr };
    canvas.width = Math.round(size.w * dpr);
    canvas.height = Math.round(size.h * dpr);
    if (state.zoom === null) state.zoom = fitZoom();
    refresh();
  }

  function tms() {
    return M.TILE_PROJECTIONS[state.proj];
  }

  function fitZoom() {
    // the whole map fits: tiles at (fractional) zoom; views at 1
    if (!M.isTiled(state.proj)) return 1;
    const t = M.TMS[tms()];
    const z = Math.log2(Math.min(size.w / (t.cols(0) * M.TILE), size.h / (t.rows(0) * M.TILE)));
    return Math.floor(z * 4) / 4;
  }

  function zoomLimits() {
    if (!M.isTiled(state.proj)) return [0.5, MAX_VIEW_ZOOM];
    return [Math.min(0, fitZoom()) - 1, maxZoom(tms())];
  }

  function tileGeometry() {
    // level L of the tiles, their on-screen scale, the centre in level-L world pixels
    const t = M.TMS[tms()];
    const L = Math.max(0, Math.min(maxZoom(tms()), Math.round(state.zoom)));
    const s = 2 ** (state.zoom - L);
    const [cx, cy] = t.toWorld(state.lon, state.lat, L);
    return { t, L, s, cx, cy };
  }

  function visibleTiles(geo) {
    const { t, L, s, cx, cy } = geo;
    const half = [size.w / 2 / s, size.h / 2 / s];
    const cols = t.cols(L);
    const rows = t.rows(L);
    const out = [];
    const c0 = Math.floor((cx - half[0]) / M.TILE);
    const c1 = Math.floor((cx + half[0]) / M.TILE);
    const r0 = Math.max(0, Math.floor((cy - half[1]) / M.TILE));
    const r1 = Math.min(rows - 1, Math.floor((cy + half[1]) / M.TILE));
    for (let row = r0; row <= r1; row += 1) {
      for (let c = c0; c <= c1 && c - c0 < 4 * cols + 8; c += 1) {
        out.push({ row, col: ((c % cols) + cols) % cols, x: size.w / 2 + (c * M.TILE - cx) * s,
          y: size.h / 2 + (row * M.TILE - cy) * s, size: M.TILE * s });
      }
    }
    return out;
  }

  function frameTileUrls(t) {
    const geo = tileGeometry();
    return visibleTiles(geo).map((v) => tileUrl(tms(), geo.L, v.row, v.col, t));
  }

  function viewParams() {
    // the server view for the canvas: CSS pixels (times the device ratio while it fits)
    let k = size.dpr;
    while (k > 1 && size.w * size.h * k * k > MAX_VIEW_PIXELS) k /= 2;
    if (size.w * size.h > MAX_VIEW_PIXELS) k = Math.sqrt(MAX_VIEW_PIXELS / (size.w * size.h));
    return {
      projection: state.proj, width: Math.max(16, Math.floor(size.w * k)), height: Math.max(16, Math.floor(size.h * k)),
      center_lon: state.lon, center_lat: state.lat, zoom: state.zoom, scale: k,
    };
  }

  function viewUrl(v, t) {
    const q = styleQuery('time', t);
    q.set('projection', v.projection);
    q.set('center', v.center_lon.toFixed(4) + ',' + v.center_lat.toFixed(4));
    q.set('zoom', String(v.zoom));
    q.set('width', String(v.width));
    q.set('height', String(v.height));
    return PREFIX + 'view/' + layerPath() + '.png?' + q.toString();
  }

  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    g.setTransform(size.dpr, 0, 0, size.dpr, 0, 0);
    g.clearRect(0, 0, size.w, size.h);
    if (!layer) return;
    if (drag) g.translate(drag.dx, drag.dy); // the picture follows the pointer until it lets go
    const t = state.time;
    if (M.isTiled(state.proj)) {
      const geo = tileGeometry();
      g.imageSmoothingEnabled = geo.s < 1;
      let waiting = 0;
      let drawn = 0;
      for (const v of visibleTiles(geo)) {
        const key = tms() + '/' + geo.L + '/' + v.row + '/' + v.col;
        const e = image(tileUrl(tms(), geo.L, v.row, v.col, t));
        let img = e.ok ? e.img : null;
        if (img) shown.set(key, img);
        else { waiting += e.failed ? 0 : 1; img = shown.get(key) || null; }
        if (img) { g.drawImage(img, v.x, v.y, v.size + 0.5, v.size + 0.5); drawn += 1; }
      }
      mark(waiting, drawn);
      if (!$('map-status').classList.contains('error')) status(waiting ? 'loading ' + waiting + ' tiles' : '');
    } else {
      const e = current.entry;
      if (e && (e.ok || current.prev)) {
        const img = e.ok ? e.img : current.prev;
        g.imageSmoothingEnabled = true;
        g.drawImage(img, 0, 0, size.w, size.h);
      }
      mark(e && !e.ok && !e.failed ? 1 : 0, e && e.ok ? 1 : 0);
      if (!$('map-status').classList.contains('error')) status(e && !e.ok && !e.failed ? 'drawing…' : '');
    }
    const globe = state.proj === 'orthographic' && current.view
      ? { x: current.view.width / 2 / current.view.scale, y: current.view.height / 2 / current.view.scale,
          r: (Math.min(current.view.width, current.view.height) / 2) * current.view.zoom / current.view.scale }
      : null;
    M.drawOverlay(g, project, { width: size.w, top: state.proj === 'webmercator' ? M.MERC_MAX_LAT : 90, globe, marker });
  }

  function mark(pending, drawn) {
    // what is on the canvas, for scripts and tests: images awaited, drawn, and for which frame
    canvas.dataset.pending = String(pending);
    canvas.dataset.drawn = String(drawn);
    canvas.dataset.frame = state.proj + ' ' + state.time;
  }

  function project(lon, lat) {
    // lon/lat -> canvas CSS pixel [x, y] in the map as drawn (null where not shown)
    if (M.isTiled(state.proj)) {
      const geo = tileGeometry();
      const [x, y] = geo.t.toWorld(lon, lat, geo.L);
      const worldW = geo.t.cols(geo.L) * M.TILE;
      let dx = x - geo.cx;
      dx -= Math.round(dx / worldW) * worldW; // the nearest copy of the wrapped world
      return [size.w / 2 + dx * geo.s, size.h / 2 + (y - geo.cy) * geo.s];
    }
    const v = current.view;
    if (!v) return null;
    const p = M.forward(v, lon, lat);
    return p && [p[0] / v.scale, p[1] / v.scale];
  }

  function unproject(px, py) {
    // canvas CSS pixel -> [lon, lat] of what is drawn there (null off the map)
    if (M.isTiled(state.proj)) {
      const geo = tileGeometry();
      const x = geo.cx + (px - size.w / 2) / geo.s;
      const y = geo.cy + (py - size.h / 2) / geo.s;
      if (!geo.t.inside(y, geo.L)) return null;
      const worldW = geo.t.cols(geo.L) * M.TILE;
      return geo.t.fromWorld(((x % worldW) + worldW) % worldW, y, geo.L);
    }
    const v = current.view;
    return v ? M.inverse(v, px * v.scale, py * v.scale) : null;
  }

  function refresh() {
    // after any change of state: the URL, the server view if one, a new chance for images
    if (!layer) return;
    images.forgetFailures();
    status('', false);
    writeUrl();
    if (!M.isTiled(state.proj)) requestView();
    scheduleDraw();
  }

  function requestView() {
    const v = viewParams();
    const url = viewUrl(v, state.time);
    if (current.entry && current.url === url) return;
    const prev = current.entry && current.entry.ok ? current.entry.img : current.prev;
    const e = image(url);
    current = { view: v, entry: e, url, prev };
  }

  // -- pan, zoom, click ---------------------------------------------------------------------
  function setZoom(z, px, py) {
    const [lo, hi] = zoomLimits();
    z = Math.max(lo, Math.min(hi, z));
    if (z === state.zoom) return;
    if (M.isTiled(state.proj) && px !== undefined) {
      // keep the point under the cursor where it is
      const before = unproject(px, py);
      state.zoom = z;
      const after = unproject(px, py);
      if (before && after) panBy(before, after);
    } else {
      state.zoom = z;
    }
    refresh();
  }

  function panBy(from, to) {
    state.lon = M.wrapLon(state.lon + (from[0] - to[0]));
    const limit = state.proj === 'webmercator' ? M.MERC_MAX_LAT : 90;
    state.lat = Math.max(-limit, Math.min(limit, state.lat + (from[1] - to[1])));
  }

  function endDrag(dx, dy) {
    if (M.isTiled(state.proj)) {
      const geo = tileGeometry();
      const [lon, lat] = geo.t.fromWorld(geo.cx - dx / geo.s, Math.max(0, Math.min(geo.t.rows(geo.L) * M.TILE, geo.cy - dy / geo.s)), geo.L);
      state.lon = lon;
      state.lat = state.proj === 'webmercator' ? Math.max(-M.MERC_MAX_LAT, Math.min(M.MERC_MAX_LAT, lat)) : lat;
    } else if (state.proj === 'orthographic') {
      // drag rotates the globe: a drag across its radius turns it by a radian
      const r = (Math.min(size.w, size.h) / 2) * state.zoom;
      state.lon = M.wrapLon(state.lon - (dx / r) * (180 / Math.PI));
      state.lat = Math.max(-90, Math.min(90, state.lat + (dy / r) * (180 / Math.PI)));
    } else {
      const c = unproject(size.w / 2 - dx, size.h / 2 - dy) || unproject(size.w / 2 - dx, size.h / 2);
      if (c) { state.lon = c[0]; state.lat = Math.max(-90, Math.min(90, c[1])); }
    }
    refresh();
  }

  canvas.addEventListener('pointerdown', (ev) => {
    canvas.setPointerCapture(ev.pointerId);
    drag = { x: ev.clientX, y: ev.clientY, dx: 0, dy: 0, moved: false };
  });
  canvas.addEventListener('pointermove', (ev) => {
    const r = canvas.getBoundingClientRect();
    const ll = unproject(ev.clientX - r.left, ev.clientY - r.top);
    $('coords').textContent = ll ? ll[0].toFixed(3) + ', ' + ll[1].toFixed(3) : '';
    if (!drag) return;
    drag.dx = ev.clientX - drag.x;
    drag.dy = ev.clientY - drag.y;
    if (Math.hypot(drag.dx, drag.dy) > 4) { drag.moved = true; canvas.classList.add('dragging'); }
    if (drag.moved) scheduleDraw();
  });
  canvas.addEventListener('pointerup', (ev) => {
    const d = drag;
    drag = null;
    canvas.classList.remove('dragging');
    if (!d) return;
    if (d.moved) { endDrag(d.dx, d.dy); return; }
    const r = canvas.getBoundingClientRect();
    const ll = unproject(ev.clientX - r.left, ev.clientY - r.top);
    if (ll) showSeries(ll[0], ll[1]);
  });
  canvas.addEventListener('pointercancel', () => { drag = null; canvas.classList.remove('dragging'); scheduleDraw(); });
  canvas.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect();
    const step = M.isTiled(state.proj) ? (ev.deltaY < 0 ? 1 : -1) : 0;
    if (step) setZoom(tileStep(step), ev.clientX - r.left, ev.clientY - r.top);
    else setZoom(state.zoom * (ev.deltaY < 0 ? 2 : 0.5));
  }, { passive: false });
  $('zoom-in').addEventListener('click', () => setZoom(M.isTiled(state.proj) ? tileStep(1) : state.zoom * 2));
  $('zoom-out').addEventListener('click', () => setZoom(M.isTiled(state.proj) ? tileStep(-1) : state.zoom / 2));

  function tileStep(step) {
    // the next whole zoom level: tiles then show at their own size, one screen pixel a tile pixel
    return step > 0 ? Math.floor(state.zoom + 1e-9) + 1 : Math.ceil(state.zoom - 1e-9) - 1;
  }
  $('globe').addEventListener('click', () => setProjection('orthographic'));
  canvas.addEventListener('keydown', (ev) => {
    // the keyboard: arrows pan (turn the globe), + and - zoom, space plays, [ and ] step
    const step = Math.min(size.w, size.h) / 4;
    const pan = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] }[ev.key];
    if (pan) endDrag(pan[0], pan[1]);
    else if (ev.key === '+' || ev.key === '=') $('zoom-in').click();
    else if (ev.key === '-') $('zoom-out').click();
    else if (ev.key === ' ') $('play').click();
    else if (ev.key === '[') $('step-back').click();
    else if (ev.key === ']') $('step-fwd').click();
    else return;
    ev.preventDefault();
  });

  function setProjection(p) {
    if (p === state.proj) return;
    const wasTiled = M.isTiled(state.proj);
    state.proj = p;
    $('proj').value = p;
    $('globe').classList.toggle('on', p === 'orthographic');
    if (p === 'webmercator') state.lat = Math.max(-M.MERC_MAX_LAT, Math.min(M.MERC_MAX_LAT, state.lat));
    if (M.isTiled(p)) {
      state.zoom = wasTiled ? Math.min(state.zoom, maxZoom(tms())) : fitZoom();
    } else {
      state.zoom = 1;
    }
    current = { view: null, entry: null };
    refresh();
  }

  // -- time and the player (vizplayer.js) ----------------------------------------------------
  function setTime(i) {
    const times = timesOf();
    if (!times.length) { state.time = ''; tIndex = 0; return; }
    tIndex = Math.max(0, Math.min(times.length - 1, i));
    state.time = times[tIndex];
    $('time').value = String(tIndex);
    $('time-label').textContent = timeText(state.time) + '  (' + (tIndex + 1) + '/' + times.length + ')';
    if (series) window.VizSeries.mark($('series'), series, state.time);
    refresh();
  }

  function frameReady(i) {
    // every image of time step i for the current view is in (decoded or refused); asks for them
    const t = timesOf()[i];
    const urls = M.isTiled(state.proj) ? frameTileUrls(t) : [viewUrl(viewParams(), t)];
    return urls.map(image).every((e) => e.ok || e.failed);
  }

  const player = window.VizPlayer.create({
    count: () => timesOf().length, index: () => tIndex, go: setTime, ready: frameReady, waitMs: PLAY_WAIT_MS,
  });
  const setPlaying = player.set;
  $('step-back').addEventListener('click', () => { setPlaying(false); setTime(tIndex - 1); });
  $('step-fwd').addEventListener('click', () => { setPlaying(false); setTime(tIndex + 1); });
  $('time').addEventListener('input', () => setTime(Number($('time').value)));

  // -- controls -----------------------------------------------------------------------------
  function controlsError(text) {
    const e = $('controls-error');
    e.textContent = text || '';
    e.hidden = !text;
  }

  function updateLegend() {
    const [vmin, vmax] = range();
    $('vmin').value = String(vmin);
    $('vmax').value = String(vmax);
    const q = new URLSearchParams({ cmap: state.cmap, vmin: String(vmin), vmax: String(vmax) });
    $('legend').src = PREFIX + 'legend/' + layerPath() + '.png?' + q.toString();
  }

  function onRange() {
    const a = $('vmin').value;
    const b = $('vmax').value;
    if (!finite(a) || !finite(b) || Number(a) >= Number(b)) {
      controlsError('the colour range needs numbers with min < max');
      return;
    }
    controlsError('');
    state.vmin = Number(a);
    state.vmax = Number(b);
    updateLegend();
    refresh();
  }

  // a legend the service refused (the layer cannot be read) is not shown as a broken image
  $('legend').addEventListener('load', () => { $('legend').hidden = false; });
  $('legend').addEventListener('error', () => { $('legend').hidden = true; });
  $('vmin').addEventListener('change', onRange);
  $('vmax').addEventListener('change', onRange);
  $('range-reset').addEventListener('click', () => {
    state.vmin = null; state.vmax = null; controlsError(''); updateLegend(); refresh();
  });
  $('cmap').addEventListener('change', () => { state.cmap = $('cmap').value; updateLegend(); refresh(); });
  $('method').addEventListener('change', () => { state.method = $('method').value; refresh(); });
  $('proj').addEventListener('change', () => setProjection($('proj').value));
  $('variable').addEventListener('change', () => {
    state.variable = $('variable').value;
    shown.clear(); // another field: no picture of the last one while the new tiles come
    state.vmin = null;
    state.vmax = null;
    clearSeries();
    startLayer();
  });

  // -- the time series at a clicked cell (EDR position) -------------------------------------
  let series = null; // {times: [ms], values: [number|null]}
  let seriesAsk = 0;

  function clearSeries() {
    series = null;
    marker = null;
    $('series').textContent = '';
    $('series-cell').textContent = '';
    $('series-status').textContent = '';
  }

  async function showSeries(lon, lat) {
    marker = [lon, lat];
    scheduleDraw();
    const ask = ++seriesAsk;
    $('series-status').textContent = 'asking for the series at ' + lon.toFixed(3) + ', ' + lat.toFixed(3) + '…';
    const q = new URLSearchParams({ coords: 'POINT(' + lon.toFixed(6) + ' ' + lat.toFixed(6) + ')', 'parameter-name': state.variable });
    for (const [k, v] of Object.entries(state.sel)) q.set(k, v); // the level the map shows
    try {
      const cov = await api('edr/collections/' + enc(state.item) + '/position?' + q.toString());
      if (ask !== seriesAsk) return;
      series = window.VizSeries.fromCoverage(cov, state.variable);
      const { cell, unit, values, at } = series;
      const levels = Object.entries(at).map(([k, v]) => ' · ' + k + ' ' + v).join('');
      const where = 'clicked ' + lon.toFixed(3) + ', ' + lat.toFixed(3) + levels;
      $('series-cell').textContent = cell
        ? 'cell ' + cell.index + ' (centre ' + Number(cell.lon).toFixed(3) + ', ' + Number(cell.lat).toFixed(3) + ')' + ' · ' + where + (unit ? ' · ' + unit : '')
        : where + (unit ? ' · ' + unit : '');
      $('series-status').textContent = values.length + ' values';
      window.VizSeries.draw($('series'), series, state.time);
    } catch (e) {
      if (ask === seriesAsk) $('series-status').textContent = 'no series: ' + e.message;
    }
  }

  // -- opening a layer ----------------------------------------------------------------------
  async function startLayer() {
    setPlaying(false);
    try {
      if (!layer) layer = C.normaliseLayers(await api('layers/' + enc(state.item)));
    } catch (e) {
      status('cannot open ' + state.item + ': ' + e.message, true);
      $('item-title').textContent = state.item;
      return;
    }
    if (!layer.variables.length) { status(state.item + ' has no variables to show', true); return; }
    if (!layer.variables.some((v) => v.name === state.variable)) state.variable = layer.variables[0].name;
    $('item-title').textContent = layer.title || state.item;
    $('item-sub').textContent = state.item + (layer.collection ? ' · collection ' + layer.collection : '');
    const sel = $('variable');
    sel.textContent = '';
    for (const v of layer.variables) {
      const o = el('option', v.name + (v.title && v.title !== v.name ? ' — ' + v.title : '') + (v.units ? ' [' + v.units + ']' : ''));
      o.value = v.name;
      sel.appendChild(o);
    }
    sel.value = state.variable;
    showLevels();
    const times = timesOf();
    $('time').max = String(Math.max(0, times.length - 1));
    for (const id of ['time', 'play', 'step-back', 'step-fwd']) $(id).disabled = times.length < 2;
    let i = state.time ? times.indexOf(state.time) : -1;
    if (i < 0) i = Math.max(0, times.indexOf(layer.defaultTime));
    if (state.zoom === null) state.zoom = fitZoom();
    state.zoom = Math.max(zoomLimits()[0], Math.min(zoomLimits()[1], state.zoom));
    updateLegend();
    setTime(i);
    document.title = state.item + '/' + state.variable + ' · VizLab';
  }

  function showLevels() {
    // a selector per extra dimension (level...) of the variable; its value goes to every
    // tile, view and legend as ?<dimension>=<value>, and into the page's URL
    const box = $('levels');
    box.textContent = '';
    const info = variableInfo();
    const extra = (info && info.extra) || null;
    const sel = {};
    if (extra && typeof extra === 'object') {
      for (const [dim, raw] of Object.entries(extra)) {
        const values = (Array.isArray(raw) ? raw : [raw]).map(String);
        if (!values.length || OWN_KEYS.includes(dim.toLowerCase())) continue;
        sel[dim] = values.includes(state.urlSel[dim]) ? state.urlSel[dim] : values[0];
        const lab = el('label', dim + ' ');
        const s = el('select');
        for (const v of values) s.appendChild(el('option', v));
        s.value = sel[dim];
        s.addEventListener('change', () => {
          state.sel[dim] = s.value;
          state.urlSel[dim] = s.value;
          shown.clear();
          updateLegend();
          refresh();
          if (marker) showSeries(marker[0], marker[1]); // the clicked cell's series at this level
        });
        lab.appendChild(s);
        box.appendChild(lab);
      }
    }
    state.sel = sel;
  }

  // -- start --------------------------------------------------------------------------------
  C.readUrl(state);
  for (const name of COLORMAPS) $('cmap').appendChild(el('option', name));
  $('cmap').value = state.cmap;
  $('method').value = state.method;
  $('proj').value = state.proj;
  $('globe').classList.toggle('on', state.proj === 'orthographic');
  $('change-layer').href = PREFIX + 'vizlab';
  if (!state.item) {
    window.VizFinder.start('');
  } else if (!ID_RE.test(state.item) || (state.variable && !ID_RE.test(state.variable))) {
    window.VizFinder.start('"' + state.item.slice(0, 80) + '" is not an item id (letters, digits, . _ : - only, at most 256).');
  } else {
    $('explorer').hidden = false;
    new ResizeObserver(() => resize()).observe($('map-wrap'));
    resize();
    startLayer();
  }
})();
