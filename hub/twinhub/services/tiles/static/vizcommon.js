// VizLab's shared pieces: the names the service takes, small DOM and fetch helpers, the
// layer document (layers/{item}) in one shape, and the page's state <-> its URL.
'use strict';

(function (global) {
  const M = global.VizMaps;
  const PREFIX = document.body.dataset.prefix;

  // the renderer's colour maps (twinlab.viz.colour.COLORMAPS) and sampling methods (nearest:
  // each pixel the value of its native cell, exactly; bilinear: healpy-style)
  const COLORMAPS = ['viridis', 'magma', 'inferno', 'plasma', 'cividis', 'turbo', 'coolwarm',
    'RdBu_r', 'Spectral_r', 'Blues', 'YlGnBu', 'gray'];
  const METHODS = ['nearest', 'bilinear'];
  const PROJECTIONS = ['webmercator', 'platecarree', 'robinson', 'mollweide', 'orthographic'];
  // item ids and variables as the service takes them in a path segment
  const ID_RE = /^[A-Za-z0-9._:-]{1,256}$/;
  // the page's and the service's own parameters: no extra dimension (level) may take these names
  const OWN_KEYS = ['item', 'variable', 'time', 'proj', 'view', 'cmap', 'vmin', 'vmax', 'datetime',
    'projection', 'center', 'zoom', 'width', 'height', 'method', 'coords', 'parameter-name', 'f',
    'parameter_names', 'z', 'crs', 'bbox'];

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  async function api(path) {
    const r = await fetch(PREFIX + path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) throw new Error((doc && (doc.description || doc.detail)) || r.status + ' ' + r.statusText);
    return doc;
  }

  function finite(x) {
    return x !== null && x !== '' && Number.isFinite(Number(x));
  }

  function fmt(v) {
    if (v === null || v === undefined || !Number.isFinite(v)) return 'no value';
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  }

  function timeText(iso) {
    return iso ? iso.replace('T', ' ').replace(/(:00)?(\.0+)?Z$/, ' UTC').replace(/\+00:00$/, ' UTC') : 'no time';
  }

  function isoZ(text) {
    // a timestamp as the service writes them (seconds, Z), or "" when not a time
    const t = Date.parse(text);
    return Number.isNaN(t) ? '' : new Date(t).toISOString().replace(/\.000Z$/, 'Z');
  }

  // -- the layer document (layers/{item}) in one shape ------------------------------------------
  // -- the layer document (layers/{item}) in one shape ------------------------------------------
  function asList(x) {
    if (Array.isArray(x)) return x;
    if (x && typeof x === 'object') return Object.entries(x).map(([k, v]) => Object.assign({ name: k }, v));
    return [];
  }

  function perTms(doc, key) {
    // {WebMercatorQuad: n, WorldCRS84Quad: n} from doc[key] or doc.tile_matrix_sets[tms][key]
    const out = {};
    for (const tms of Object.values(M.TILE_PROJECTIONS)) {
      const direct = doc && doc[key];
      let v = direct && typeof direct === 'object' ? direct[tms] : undefined;
      const sets = doc && (doc.tile_matrix_sets || doc.tileMatrixSets || doc.tms);
      if (v === undefined && sets && sets[tms]) v = sets[tms][key];
      if (finite(v)) out[tms] = Number(v);
    }
    return out;
  }

  function normaliseLayers(doc) {
    const variables = asList(doc.variables).map((v) => {
      const range = v.default_range || v.range || v.value_range || [v.vmin, v.vmax];
      return {
        name: String(v.name || v.variable || v.id || ''),
        title: v.long_name || v.title || v.name || '',
        units: v.units || '',
        range: Array.isArray(range) && finite(range[0]) && finite(range[1]) ? [Number(range[0]), Number(range[1])] : null,
        times: Array.isArray(v.times) ? v.times : null,
        extra: v.extra_dims || v.extra || null,
        native: perTms(v, 'native_zoom'),
        max: perTms(v, 'max_zoom'),
      };
    }).filter((v) => v.name);
    return {
      id: doc.item_id || doc.id || '',
      title: doc.title || '',
      collection: doc.collection || '',
      times: (Array.isArray(doc.times) ? doc.times : []).map(isoZ).filter(Boolean),
      defaultTime: isoZ(doc.default_time || ''),
      native: perTms(doc, 'native_zoom'),
      max: perTms(doc, 'max_zoom'),
      extra: doc.extra_dims || null,
      variables,
    };
  }

  // -- the page's state in its URL ----------------------------------------------------------
  function newState() {
    return {
      item: '', variable: '', time: '', proj: 'webmercator', lon: 0, lat: 0, zoom: null,
      cmap: 'viridis', vmin: null, vmax: null, method: 'nearest',
      sel: {}, // extra dimensions (levels): name -> value, as the service takes them (?level=500)
      urlSel: {}, // the URL's values for dimensions, until the layer says which exist
    };
  }

  function readUrl(state) {
    const q = new URLSearchParams(location.search);
    state.item = q.get('item') || '';
    state.variable = q.get('variable') || '';
    state.time = isoZ(q.get('time') || '');
    state.proj = PROJECTIONS.includes(q.get('proj')) ? q.get('proj') : 'webmercator';
    const v = (q.get('view') || '').split(',').map(Number);
    if (v.length === 3 && v.every(Number.isFinite)) {
      state.lon = M.wrapLon(v[0]);
      state.lat = Math.max(-90, Math.min(90, v[1]));
      state.zoom = v[2];
    }
    state.cmap = COLORMAPS.includes(q.get('cmap')) ? q.get('cmap') : 'viridis';
    state.method = METHODS.includes(q.get('method')) ? q.get('method') : 'nearest';
    state.vmin = finite(q.get('vmin')) ? Number(q.get('vmin')) : null;
    state.vmax = finite(q.get('vmax')) ? Number(q.get('vmax')) : null;
    state.urlSel = {};
    for (const [k, v] of q.entries()) if (!OWN_KEYS.includes(k)) state.urlSel[k] = v;
  }

  function urlQuery(state) {
    const q = new URLSearchParams({ item: state.item, variable: state.variable });
    if (state.time) q.set('time', state.time);
    q.set('proj', state.proj);
    q.set('view', [state.lon.toFixed(4), state.lat.toFixed(4), Number(state.zoom).toFixed(3)].join(','));
    q.set('cmap', state.cmap);
    if (state.method !== 'nearest') q.set('method', state.method);
    if (state.vmin !== null) q.set('vmin', String(state.vmin));
    if (state.vmax !== null) q.set('vmax', String(state.vmax));
    for (const [k, v] of Object.entries(state.sel)) q.set(k, v);
    return q.toString();
  }

  // -- images: a bounded cache of decoded tiles and views --------------------------------------
  // get(url) -> {img, ok, failed}: asked for once, kept (most recently used last) up to max;
  // onChange() when one arrives or fails; explain(text) says why one failed (an <img> cannot
  // read the service's JSON refusal: it is asked once more, once per URL until forgetFailures).
  function imageCache(max, onChange, explain) {
    const images = new Map();
    let explained = '';

    async function explainFailure(url) {
      if (explained === url) return;
      explained = url;
      try {
        const r = await fetch(url, { credentials: 'same-origin' });
        if (!r.ok) {
          let doc = null;
          try { doc = await r.json(); } catch (e) { doc = null; }
          explain((doc && doc.description) || 'HTTP ' + r.status);
        }
      } catch (e) {
        explain(e.message);
      }
    }

    function get(url) {
      let e = images.get(url);
      if (e) {
        images.delete(url);
        images.set(url, e);
        return e;
      }
      e = { img: new Image(), ok: false, failed: false };
      e.img.decoding = 'async';
      e.img.onload = () => { e.ok = true; onChange(); };
      e.img.onerror = () => { e.failed = true; explainFailure(url); onChange(); };
      e.img.src = url;
      images.set(url, e);
      while (images.size > max) images.delete(images.keys().next().value);
      return e;
    }

    return { get, forgetFailures: () => { explained = ''; } };
  }

  global.VizCommon = {
    imageCache,
    PREFIX, COLORMAPS, METHODS, PROJECTIONS, ID_RE, OWN_KEYS,
    el, svg, api, finite, fmt, timeText, isoZ, normaliseLayers, newState, readUrl, urlQuery,
  };
})(window);
