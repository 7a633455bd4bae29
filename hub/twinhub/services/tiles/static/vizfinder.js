// VizLab's layer finder, the page without an item: every layer (item / variable) the caller may
// see, from the service's OGC API collections, filtered and paged here.
'use strict';

(function (global) {
  const { el, api, timeText, ID_RE } = global.VizCommon;
  const $ = (id) => document.getElementById(id);
  const FINDER_PAGE = 25;

  const finder = { all: [], shown: [], page: 0 };

  async function start(problem) {
    $('finder').hidden = false;
    $('find-status').textContent = problem || 'listing layers…';
    try {
      const doc = await api('collections');
      finder.all = (doc.collections || []).map((c) => {
        // a layer is "<item id>/<variable>" (item ids have no slash)
        const id = String(c.id || '');
        const cut = id.indexOf('/');
        const ext = (c.extent && c.extent.temporal && c.extent.temporal.interval && c.extent.temporal.interval[0]) || [];
        return { id, item: String(c.itemId || (cut > 0 ? id.slice(0, cut) : id)),
          variable: String(c.variable || (cut > 0 ? id.slice(cut + 1) : '')),
          title: c.title || '', collection: c.stacCollection || '', times: ext.filter(Boolean).map(timeText).join(' – ') };
      }).filter((c) => ID_RE.test(c.item));
      $('find-status').textContent = (problem ? problem + ' ' : '') + finder.all.length + ' layers' + (doc.description ? ' · ' + doc.description : '');
      filterFinder();
    } catch (e) {
      $('find-status').textContent = 'cannot list layers: ' + e.message;
    }
  }

  function filterFinder() {
    const words = $('find-q').value.toLowerCase().split(/\s+/).filter(Boolean);
    finder.shown = finder.all.filter((c) => {
      const text = (c.id + ' ' + c.title + ' ' + c.collection).toLowerCase();
      return words.every((w) => text.includes(w));
    });
    finder.page = 0;
    showFinderPage();
  }

  function showFinderPage() {
    const body = $('layers').tBodies[0];
    body.textContent = '';
    const pages = Math.max(1, Math.ceil(finder.shown.length / FINDER_PAGE));
    finder.page = Math.max(0, Math.min(pages - 1, finder.page));
    for (const c of finder.shown.slice(finder.page * FINDER_PAGE, (finder.page + 1) * FINDER_PAGE)) {
      const tr = el('tr');
      const td = el('td');
      const a = el('a', c.id);
      a.href = '?' + new URLSearchParams({ item: c.item, variable: c.variable }).toString();
      td.appendChild(a);
      tr.appendChild(td);
      for (const t of [c.title, c.collection, c.times]) tr.appendChild(el('td', t));
      body.appendChild(tr);
    }
    $('find-page').textContent = 'page ' + (finder.page + 1) + ' of ' + pages + ' (' + finder.shown.length + ' layers)';
    $('find-prev').disabled = finder.page === 0;
    $('find-next').disabled = finder.page >= pages - 1;
  }

  $('find').addEventListener('submit', (ev) => ev.preventDefault());
  $('find-q').addEventListener('input', filterFinder);
  $('find-prev').addEventListener('click', () => { finder.page -= 1; showFinderPage(); });
  $('find-next').addEventListener('click', () => { finder.page += 1; showFinderPage(); });

  global.VizFinder = { start };
})(window);
