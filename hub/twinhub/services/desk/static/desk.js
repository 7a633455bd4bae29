// The service desk's page: writes through the REST API (api/v1/) with the page's XSRF token.
// No framework; the page is rendered by the server and reloaded after each change.
'use strict';

(function () {
  const body = document.body;
  const api = body.dataset.api;
  const maxBytes = Number(body.dataset.maxBytes || 0);
  const maxFiles = Number(body.dataset.maxFiles || 0);
  const meta = document.querySelector('meta[name="twinhub-xsrf"]');
  const xsrf = meta ? meta.content : '';

  async function call(method, path, payload, contentType) {
    const headers = { 'X-Twinhub-XSRF': xsrf, Accept: 'application/json' };
    let data = payload;
    if (payload !== undefined && !(payload instanceof Blob)) {
      headers['Content-Type'] = 'application/json';
      data = JSON.stringify(payload);
    } else if (payload instanceof Blob) {
      headers['Content-Type'] = contentType || payload.type || 'application/octet-stream';
    }
    const r = await fetch(api + path, { method, headers, body: data, credentials: 'same-origin' });
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      throw new Error((doc && doc.description) || r.status + ' ' + r.statusText);
    }
    return doc;
  }

  function showError(scope, message) {
    const el = scope.querySelector('[role="alert"]');
    if (el) { el.textContent = message; el.hidden = !message; }
  }

  function chosen(input) {
    return Array.from((input && input.files) || []);
  }

  // Checked before anything is stored: a refused file must not leave a half-made ticket
  // (and a staff mail) behind. The server checks the same limits again.
  function fileProblem(input, already) {
    const files = chosen(input);
    if (maxFiles && already + files.length > maxFiles) {
      return files.length + ' files chosen, but a ticket holds at most ' + maxFiles +
        (already ? ' (it has ' + already + ' already)' : '') + '.';
    }
    const big = files.find(file => maxBytes && file.size > maxBytes);
    if (big) {
      return big.name + ' has ' + big.size + ' bytes: larger than the limit (' + maxBytes +
        ' bytes).';
    }
    return '';
  }

  async function upload(ticketId, input) {
    for (const file of chosen(input)) {
      await call('POST', 'tickets/' + ticketId + '/attachments?filename=' +
        encodeURIComponent(file.name), file, file.type);
    }
  }

  function ticketPage(id) {
    return body.dataset.prefix + '?f=html&ticket=' + encodeURIComponent(id);
  }

  function busy(form, on) {
    form.querySelectorAll('button').forEach(b => { b.disabled = on; });
  }

  const create = document.getElementById('new-ticket');
  if (create) {
    create.addEventListener('submit', async ev => {
      ev.preventDefault();
      showError(create, '');
      const f = create.elements;
      const problem = fileProblem(f.files, 0);
      if (problem) {
        showError(create, problem);
        return;
      }
      busy(create, true);
      const doc = { subject: f.subject.value, body: f.body.value };
      for (const name of ['service', 'project', 'email']) {
        if (f[name].value) doc[name] = f[name].value;
      }
      let ticket = null;
      try {
        ticket = await call('POST', 'tickets', doc);
        await upload(ticket.id, f.files);
        window.location.assign(ticketPage(ticket.id));
      } catch (e) {
        showError(create, ticket ? 'Ticket #' + ticket.id + ' opened, but: ' + e.message : e.message);
        busy(create, false);
      }
    });
  }

  const reply = document.getElementById('reply');
  if (reply) {
    reply.addEventListener('submit', async ev => {
      ev.preventDefault();
      showError(reply, '');
      const id = reply.dataset.ticket;
      const text = reply.elements.body.value;
      const files = reply.elements.files;
      if (!text.trim() && !(files.files && files.files.length)) {
        showError(reply, 'Write a message or choose a file.');
        return;
      }
      const problem = fileProblem(files, Number(reply.dataset.attachments || 0));
      if (problem) {
        showError(reply, problem);
        return;
      }
      busy(reply, true);
      try {
        if (text.trim()) await call('POST', 'tickets/' + id + '/messages', { body: text });
        await upload(id, files);
        window.location.assign(ticketPage(id));
      } catch (e) {
        showError(reply, e.message);
        busy(reply, false);
      }
    });
  }

  document.querySelectorAll('button.transition').forEach(button => {
    button.addEventListener('click', async () => {
      const scope = button.closest('form, .actions') || document;
      showError(scope, '');
      button.disabled = true;
      try {
        await call('POST', 'tickets/' + button.dataset.ticket + '/transitions', { to: button.dataset.to });
        window.location.assign(ticketPage(button.dataset.ticket));
      } catch (e) {
        showError(scope, e.message);
        button.disabled = false;
      }
    });
  });
})();
