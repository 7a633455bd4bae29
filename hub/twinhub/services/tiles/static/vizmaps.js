// VizLab's map maths, no page state: the two tile matrix sets (world pixels <-> lon/lat) and
// the server-side views' projections (pixel <-> lon/lat), the same formulas as
// twinlab.viz.tms and twinlab.viz.projections so that a click lands on the cell drawn there;
// and what is drawn over the field (graticule, marker).
'use strict';

(function (global) {
  const D2R = Math.PI / 180;
  const R2D = 180 / Math.PI;
  const TILE = 256;
  const MERC_MAX_LAT = 85.0511287798066;

  function wrapLon(lon) {
    // [-180, 180)
    return ((((lon + 180) % 360) + 360) % 360) - 180;
  }

  // -- tile matrix sets: "world pixels" at zoom z, (0, 0) the top-left corner -------------------
  const TMS = {
    WebMercatorQuad: {
      cols: (z) => 2 ** z,
      rows: (z) => 2 ** z,
      toWorld(lon, lat, z) {
        const n = TILE * 2 ** z;
        const phi = Math.max(-MERC_MAX_LAT, Math.min(MERC_MAX_LAT, lat)) * D2R;
        const y = 0.5 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / (2 * Math.PI);
        return [((lon + 180) / 360) * n, y * n];
      },
      fromWorld(x, y, z) {
        const n = TILE * 2 ** z;
        const lat = Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * R2D;
        return [wrapLon((x / n) * 360 - 180), lat];
      },
      inside: (y, z) => y >= 0 && y < TILE * 2 ** z,
    },
    WorldCRS84Quad: {
      cols: (z) => 2 ** (z + 1),
      rows: (z) => 2 ** z,
      toWorld(lon, lat, z) {
        const n = TILE * 2 ** z; // rows * TILE: 180 degrees
        return [((lon + 180) / 180) * n, ((90 - lat) / 180) * n];
      },
      fromWorld(x, y, z) {
        const n = TILE * 2 ** z;
        return [wrapLon((x / n) * 180 - 180), 90 - (y / n) * 180];
      },
      inside: (y, z) => y >= 0 && y < TILE * 2 ** z,
    },
  };
  const TILE_PROJECTIONS = { webmercator: 'WebMercatorQuad', platecarree: 'WorldCRS84Quad' };

  // -- projections of the server-side views (twinlab.viz.projections) -----------------------
  // Robinson's table: every 5 degrees of latitude, X (parallel length) and Y (distance from
  // the equator), the published values.
  const ROB_X = [1.0, 0.9986, 0.9954, 0.99, 0.9822, 0.973, 0.96, 0.9427, 0.9216, 0.8962,
    0.8679, 0.835, 0.7986, 0.7597, 0.7186, 0.6732, 0.6213, 0.5722, 0.5322];
  const ROB_Y = [0.0, 0.062, 0.124, 0.186, 0.248, 0.31, 0.372, 0.434, 0.4958, 0.5571,
    0.6176, 0.6769, 0.7346, 0.7903, 0.8435, 0.8936, 0.9394, 0.9761, 1.0];

  function interp(table, a) {
    // the table at |latitude| a (degrees), linearly between its 5-degree entries
    const f = Math.min(Math.abs(a), 90) / 5;
    const i = Math.min(Math.floor(f), 17);
    return table[i] + (table[i + 1] - table[i]) * (f - i);
  }

  function robinsonXY(lam, latDeg) {
    const s = latDeg < 0 ? -1 : 1;
    return [0.8487 * interp(ROB_X, latDeg) * lam, 1.3523 * s * interp(ROB_Y, latDeg)];
  }

  function robinsonInverse(x, y) {
    // latitude from Y by inverting the (monotonic) table, then longitude from X
    const t = Math.abs(y) / 1.3523;
    if (t > 1) return null;
    let i = 0;
    while (i < 17 && ROB_Y[i + 1] < t) i += 1;
    const f = (t - ROB_Y[i]) / (ROB_Y[i + 1] - ROB_Y[i]);
    const lat = (y < 0 ? -1 : 1) * 5 * (i + f);
    const lam = x / (0.8487 * interp(ROB_X, lat));
    if (Math.abs(lam) > Math.PI + 1e-9) return null;
    return [lam, lat * D2R];
  }

  function mollweideTheta(phi) {
    // 2t + sin 2t = pi sin(phi), by Newton
    if (Math.abs(Math.abs(phi) - Math.PI / 2) < 1e-12) return phi;
    let t = phi;
    for (let k = 0; k < 30; k += 1) {
      const d = (2 * t + Math.sin(2 * t) - Math.PI * Math.sin(phi)) / (2 + 2 * Math.cos(2 * t));
      t -= d;
      if (Math.abs(d) < 1e-12) break;
    }
    return t;
  }

  const FLAT = {
    // x, y in map units, y north; extent [halfWidth, halfHeight]
    robinson: {
      half: [0.8487 * Math.PI, 1.3523],
      forward: (lam, phi) => robinsonXY(lam, phi * R2D),
      inverse: robinsonInverse,
    },
    mollweide: {
      half: [2 * Math.SQRT2, Math.SQRT2],
      forward(lam, phi) {
        const t = mollweideTheta(phi);
        return [((2 * Math.SQRT2) / Math.PI) * lam * Math.cos(t), Math.SQRT2 * Math.sin(t)];
      },
      inverse(x, y) {
        const s = y / Math.SQRT2;
        if (Math.abs(s) > 1) return null;
        const t = Math.asin(s);
        const c = Math.cos(t);
        const lam = c < 1e-12 ? 0 : (Math.PI * x) / (2 * Math.SQRT2 * c);
        if (Math.abs(lam) > Math.PI + 1e-9) return null;
        const phi = Math.asin(Math.max(-1, Math.min(1, (2 * t + Math.sin(2 * t)) / Math.PI)));
        return [lam, phi];
      },
    },
  };

  // A view: {projection, width, height, center_lon, center_lat, zoom} (twinlab.viz View).
  function flatScale(view, p) {
    // pixels per map unit: zoom 1 fits the whole map in width x height
    return Math.min(view.width / (2 * p.half[0]), view.height / (2 * p.half[1])) * view.zoom;
  }

  function orthoRadius(view) {
    return (Math.min(view.width, view.height) / 2) * view.zoom;
  }

  // lon/lat -> pixel [x, y] in the view (null where hidden: the far side of the globe)
  function forward(view, lon, lat) {
    const cx = view.width / 2;
    const cy = view.height / 2;
    if (view.projection === 'orthographic') {
      const r = orthoRadius(view);
      const lam = (lon - view.center_lon) * D2R;
      const phi = lat * D2R;
      const phi0 = view.center_lat * D2R;
      const cosc = Math.sin(phi0) * Math.sin(phi) + Math.cos(phi0) * Math.cos(phi) * Math.cos(lam);
      if (cosc < 0) return null;
      const x = Math.cos(phi) * Math.sin(lam);
      const y = Math.cos(phi0) * Math.sin(phi) - Math.sin(phi0) * Math.cos(phi) * Math.cos(lam);
      return [cx + r * x, cy - r * y];
    }
    const p = FLAT[view.projection];
    const s = flatScale(view, p);
    const lam = wrapLon(lon - view.center_lon) * D2R;
    const [x, y] = p.forward(lam, lat * D2R);
    const [, y0] = p.forward(0, view.center_lat * D2R);
    return [cx + s * x, cy - s * (y - y0)];
  }

  // pixel (x, y) of the view (fractional, from the top-left) -> [lon, lat], or null off the map
  function inverse(view, px, py) {
    const cx = view.width / 2;
    const cy = view.height / 2;
    if (view.projection === 'orthographic') {
      const r = orthoRadius(view);
      const x = (px - cx) / r;
      const y = (cy - py) / r;
      const rho = Math.hypot(x, y);
      if (rho > 1) return null;
      const phi0 = view.center_lat * D2R;
      const c = Math.asin(Math.min(1, rho));
      if (rho < 1e-12) return [wrapLon(view.center_lon), view.center_lat];
      const phi = Math.asin(Math.cos(c) * Math.sin(phi0) + (y * Math.sin(c) * Math.cos(phi0)) / rho);
      const lam = Math.atan2(x * Math.sin(c),
        rho * Math.cos(phi0) * Math.cos(c) - y * Math.sin(phi0) * Math.sin(c));
      return [wrapLon(view.center_lon + lam * R2D), phi * R2D];
    }
    const p = FLAT[view.projection];
    if (!p) return null;
    const s = flatScale(view, p);
    const [, y0] = p.forward(0, view.center_lat * D2R);
    const ll = p.inverse((px - cx) / s, (cy - py) / s + y0);
    if (!ll) return null;
    return [wrapLon(view.center_lon + ll[0] * R2D), ll[1] * R2D];
  }

  // -- what is drawn over the field: graticule, globe outline, the clicked point ------------------
  function range(a, b, step) {
    return Array.from({ length: Math.floor((b - a) / step + 1e-9) + 1 }, (_, i) => a + i * step);
  }

  function polyline(g, project, points, width) {
    // a line through lon/lat points as drawn, broken where hidden or where the map wraps
    let last = null;
    g.beginPath();
    for (const [lon, lat] of points) {
      const q = project(lon, lat);
      if (!q) { last = null; continue; }
      if (last && Math.hypot(q[0] - last[0], q[1] - last[1]) < width / 3) g.lineTo(q[0], q[1]);
      else g.moveTo(q[0], q[1]);
      last = q;
    }
    g.stroke();
  }

  // On canvas context g, with project(lon, lat) -> [x, y] | null: meridians and parallels
  // every 30 degrees up to latitude o.top (where things are, on a field without coasts), the
  // globe's outline o.globe {x, y, r}, the marker o.marker [lon, lat].
  function drawOverlay(g, project, o) {
    g.lineWidth = 1;
    g.strokeStyle = 'rgba(255, 255, 255, 0.45)';
    for (const lon of range(-180, 150, 30)) {
      polyline(g, project, range(-o.top, o.top, o.top / 45).map((lat) => [lon, lat]), o.width);
    }
    for (const lat of range(-60, 60, 30)) {
      polyline(g, project, range(-180, 180, 2).map((lon) => [lon, lat]), o.width);
    }
    if (o.globe) {
      g.strokeStyle = 'rgba(29, 35, 48, 0.5)';
      g.beginPath();
      g.arc(o.globe.x, o.globe.y, o.globe.r, 0, 2 * Math.PI);
      g.stroke();
    }
    const p = o.marker && project(o.marker[0], o.marker[1]);
    if (!p) return;
    g.lineWidth = 2;
    g.strokeStyle = '#fff';
    g.beginPath();
    g.arc(p[0], p[1], 7, 0, 2 * Math.PI);
    g.stroke();
    g.strokeStyle = '#b3261e';
    g.beginPath();
    g.arc(p[0], p[1], 5, 0, 2 * Math.PI);
    g.moveTo(p[0] - 10, p[1]); g.lineTo(p[0] - 3, p[1]);
    g.moveTo(p[0] + 3, p[1]); g.lineTo(p[0] + 10, p[1]);
    g.stroke();
  }

  global.VizMaps = {
    TILE, TMS, TILE_PROJECTIONS, MERC_MAX_LAT, wrapLon, forward, inverse, drawOverlay,
    isTiled: (projection) => Object.prototype.hasOwnProperty.call(TILE_PROJECTIONS, projection),
  };
})(window);
