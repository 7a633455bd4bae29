// The processing pages' script: run a process from its form, dismiss a job, and keep a
// running job's page up to date (every 2 s). Writes carry the page's XSRF value.
'use strict';

(function () {
  const prefix = document.body.dataset.prefix;
  const meta = document.querySelector('meta[name="twinhub-xsrf"]');
  const xsrf = meta ? meta.content : '';
  const REFRESH_MS = 2000;

  async function call(method, path, payload, extra) {
    const headers = Object.assign({ 'X-Twinhub-XSRF': xsrf, Accept: 'application/json' }, extra || {});
    const init = { method, headers, credentials: 'same-origin' };
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    const r = await fetch(prefix + path, init);
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok && r.status !== 201) {
      throw new Error((doc && (doc.description || doc.detail)) || r.status + ' ' + r.statusText);
    }
    return doc;
  }

  function showError(scope, message) {
    const el = scope.querySelector('[role="alert"]');
    if (el) { el.textContent = message; el.hidden = !message; }
  }

  // -- the execute form ------------------------------------------------------------------
  const form = document.getElementById('execute');
  if (form) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      showError(form, '');
      let inputs;
      try {
        inputs = JSON.parse(form.elements.inputs.value || '{}');
      } catch (e) {
        showError(form, 'The inputs are not JSON: ' + e.message);
        return;
      }
      const body = { inputs };
      const project = form.elements.project && form.elements.project.value;
      if (project) { body.project = project; }
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        const job = await call('POST', 'processes/' + encodeURIComponent(form.dataset.process) +
          '/execution', body, { Prefer: 'respond-async' });
        window.location.assign(prefix + 'jobs/' + encodeURIComponent(job.jobID) + '?f=html');
      } catch (e) {
        showError(form, e.message);
        button.disabled = false;
      }
    });
  }

  // -- a job's page ----------------------------------------------------------------------
  const job = document.getElementById('job');
  if (!job) { return; }
  const jobPath = 'jobs/' + encodeURIComponent(job.dataset.job);

  const dismiss = document.getElementById('dismiss');
  if (dismiss) {
    dismiss.addEventListener('click', async () => {
      if (!window.confirm('Dismiss this job? Its work stops and its partial outputs are removed.')) {
        return;
      }
      dismiss.disabled = true;
      try {
        await call('DELETE', jobPath);
        window.location.reload();
      } catch (e) {
        showError(job, e.message);
        dismiss.disabled = false;
      }
    });
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  function showStatus(doc) {
    setText('status', doc.status);
    document.getElementById('status').className = 'status status-' + doc.status;
    setText('stage', doc.stage);
    setText('message', doc.message || '');
    setText('progress-text', doc.progress + '%');
    document.getElementById('progress').value = doc.progress;
    const stages = doc.stages || {};
    document.querySelectorAll('table.stages tbody tr').forEach((row) => {
      const name = row.id.replace(/^stage-/, '');
      const s = stages[name] || {};
      row.className = doc.stage === name ? 'current' : '';
      row.querySelector('.started').textContent = s.started || '';
      row.querySelector('.finished').textContent = s.finished || '';
      row.querySelector('.progress').textContent =
        s.progress === undefined || s.progress === null ? '' : s.progress + '%';
    });
  }

  let lastLine = Number(job.dataset.lastLine || 0);
  async function moreLog() {
    const doc = await call('GET', jobPath + '/logs?after=' + lastLine);
    const pre = document.getElementById('log-lines');
    for (const ln of doc.lines || []) {
      pre.appendChild(document.createTextNode(
        ln.at + ' ' + ln.stage + ' ' + ln.level + ' [' + ln.source + '] ' + ln.text + '\n'));
      lastLine = ln.id;
    }
    if ((doc.lines || []).length) { pre.scrollTop = pre.scrollHeight; }
  }

  async function refresh() {
    try {
      const doc = await call('GET', jobPath);
      showStatus(doc);
      await moreLog();
      if (doc.status !== 'accepted' && doc.status !== 'running') {
        window.location.reload();  // the ended job's page: results, no dismiss button
        return;
      }
    } catch (e) {
      showError(job, e.message);
    }
    window.setTimeout(refresh, REFRESH_MS);
  }

  if (job.dataset.running === '1') { window.setTimeout(refresh, REFRESH_MS); }
})();
