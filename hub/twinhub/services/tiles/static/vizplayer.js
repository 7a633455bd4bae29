// VizLab's time player: play/pause, speed, loop over a layer's time steps. Smooth: it moves to
// the next step only once that step's images are in (or after waitMs), and asks for the step
// after while the current one shows.
'use strict';

(function (global) {
  const $ = (id) => document.getElementById(id);

  // o: count() time steps, index() the current one, go(i) shows step i, ready(i) whether step
  // i's images are in (asking for them), waitMs the longest wait for a step.
  function create(o) {
    const p = { on: false, timer: null, waitingSince: 0 };
    const period = () => 1000 / Number($('speed').value);

    function next() {
      if (o.index() + 1 < o.count()) return o.index() + 1;
      return $('loop').checked ? 0 : -1;
    }

    function preloadNext() {
      const i = next();
      if (i >= 0) o.ready(i);
    }

    function tick() {
      p.timer = null;
      if (!p.on) return;
      const i = next();
      if (i < 0) { set(false); return; }
      if (!o.ready(i) && Date.now() - p.waitingSince < o.waitMs) {
        p.timer = setTimeout(tick, 100);
        return;
      }
      o.go(i);
      p.waitingSince = Date.now();
      preloadNext();
      p.timer = setTimeout(tick, period());
    }

    function set(on) {
      p.on = on && o.count() > 1;
      const b = $('play');
      b.textContent = p.on ? '\u25A0' : '\u25B6';
      b.title = p.on ? 'pause' : 'play';
      b.setAttribute('aria-label', b.title);
      b.classList.toggle('on', p.on);
      if (p.timer) { clearTimeout(p.timer); p.timer = null; }
      if (p.on) {
        p.waitingSince = Date.now();
        preloadNext();
        p.timer = setTimeout(tick, period());
      }
    }

    $('play').addEventListener('click', () => set(!p.on));
    return { set, playing: () => p.on };
  }

  global.VizPlayer = { create };
})(window);
