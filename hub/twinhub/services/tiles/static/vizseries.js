// VizLab's time-series chart (SVG, drawn here: no library) of one native cell's values, from
// the service's EDR position answer (CoverageJSON).
'use strict';

(function (global) {
  const { svg, fmt } = global.VizCommon;

  function fromCoverage(cov, variable) {
    // {times: [ms], values: [number|null], cell: {index, lon, lat}|null, at: {dim: value}, unit}
    // of a PointSeries (at: the level... the values are at)
    const dom = cov.domain || {};
    const axes = dom.axes || {};
    const tvals = (axes.t && axes.t.values) || [];
    const rng = (cov.ranges || {})[variable] || Object.values(cov.ranges || {})[0] || {};
    return {
      times: tvals.map((t) => Date.parse(t)),
      values: (rng.values || []).map((v) => (v === null ? null : Number(v))),
      cell: dom['twinhub:cell'] || cov['twinhub:cell'] || null,
      at: dom['twinhub:selection'] || {},
      unit: unitOf(cov, variable),
    };
  }

  function unitOf(cov, variable) {
    const p = (cov.parameters || {})[variable] || {};
    const u = p.unit || {};
    return u.symbol ? (typeof u.symbol === 'object' ? u.symbol.value || '' : String(u.symbol)) : (u.label && (u.label.en || '')) || '';
  }

  const CH = { w: 360, h: 200, l: 52, r: 10, t: 10, b: 34 };

  function draw(box, series, time) {
    // the chart of ``series`` in the <svg> ``box``, the time ``time`` (ISO) marked
    box.textContent = '';
    if (!series || !series.values.length) return;
    const vals = series.values.filter((v) => v !== null && Number.isFinite(v));
    let lo = vals.length ? Math.min(...vals) : 0;
    let hi = vals.length ? Math.max(...vals) : 1;
    if (hi === lo) { hi += Math.abs(hi) * 0.01 || 1; lo -= Math.abs(lo) * 0.01 || 1; }
    const n = series.values.length;
    const X = (i) => CH.l + (n > 1 ? (i / (n - 1)) * (CH.w - CH.l - CH.r) : (CH.w - CH.l - CH.r) / 2);
    const Y = (v) => CH.t + (1 - (v - lo) / (hi - lo)) * (CH.h - CH.t - CH.b);
    for (const f of [0, 0.5, 1]) {
      const v = lo + f * (hi - lo);
      box.appendChild(svg('line', { class: 'grid', x1: CH.l, x2: CH.w - CH.r, y1: Y(v), y2: Y(v) }));
      box.appendChild(svg('text', { x: CH.l - 4, y: Y(v) + 3, 'text-anchor': 'end' }, fmt(v)));
    }
    box.appendChild(svg('line', { class: 'axis', x1: CH.l, x2: CH.l, y1: CH.t, y2: CH.h - CH.b }));
    box.appendChild(svg('line', { class: 'axis', x1: CH.l, x2: CH.w - CH.r, y1: CH.h - CH.b, y2: CH.h - CH.b }));
    const label = (ms) => (Number.isFinite(ms) ? new Date(ms).toISOString().slice(0, 16).replace('T', ' ') : '');
    box.appendChild(svg('text', { x: CH.l, y: CH.h - CH.b + 14, 'text-anchor': 'start' }, label(series.times[0])));
    if (n > 1) box.appendChild(svg('text', { x: CH.w - CH.r, y: CH.h - CH.b + 14, 'text-anchor': 'end' }, label(series.times[n - 1])));
    let d = '';
    series.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) return;
      d += (d && series.values[i - 1] !== null ? 'L' : 'M') + X(i).toFixed(1) + ' ' + Y(v).toFixed(1);
    });
    if (d) box.appendChild(svg('path', { class: 'line', d }));
    series.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) return;
      const c = svg('circle', { class: 'pt', cx: X(i).toFixed(1), cy: Y(v).toFixed(1), r: 2.6, 'data-value': v });
      c.appendChild(svg('title', {}, label(series.times[i]) + ': ' + fmt(v)));
      box.appendChild(c);
    });
    series.X = X;
    series.Y = Y;
    mark(box, series, time);
  }

  function mark(box, series, time) {
    // the current time on the chart: a dashed line and the value
    for (const old of box.querySelectorAll('.now, .nowpt, .nowtext')) old.remove();
    if (!series || !series.X) return;
    const t = Date.parse(time);
    const i = series.times.findIndex((ms) => ms === t);
    if (i < 0) return;
    box.appendChild(svg('line', { class: 'now', x1: series.X(i), x2: series.X(i), y1: CH.t, y2: CH.h - CH.b }));
    const v = series.values[i];
    if (v !== null && Number.isFinite(v)) {
      box.appendChild(svg('circle', { class: 'nowpt', cx: series.X(i), cy: series.Y(v), r: 4 }));
      box.appendChild(svg('text', { class: 'nowtext', x: CH.l, y: CH.h - 4, 'text-anchor': 'start' },
        'now: ' + fmt(v)));
    }
  }


  global.VizSeries = { fromCoverage, draw, mark };
})(window);
