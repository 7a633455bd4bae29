// The onboarding page (templates/onboarding.html): lists the caller's requests, the review
// queue and the admins' work from the REST API (api/v1/), and offers exactly the moves the
// API says the caller may make now (each request's "allowed" list). Every write carries the
// page's XSRF token (header X-Twinhub-XSRF). Text from the API is only ever set as text
// (textContent), never parsed as HTML.
"use strict";

(function () {
  const root = document.getElementById("th-onboarding");
  if (!root) return;
  const API = root.dataset.api;
  const ME = root.dataset.user;
  const REVIEWER = root.dataset.reviewer === "true";
  const ADMIN = root.dataset.admin === "true";
  const SERVICES = root.dataset.services;
  const meta = document.querySelector('meta[name="twinhub-xsrf"]');
  const XSRF = meta ? meta.content : "";
  const form = document.getElementById("th-request-form");
  const formError = document.getElementById("th-form-error");
  const pageError = document.getElementById("th-page-error");
  const LABELS = {
    submitted: "submitted", evaluated: "evaluated", "changes-requested": "changes requested",
    approved: "approved", rejected: "rejected", integrated: "integrated",
    suspended: "suspended", retired: "retired",
  };
  const OPERATED = ["approved", "integrated", "suspended"];
  const MAX_FULL = 100; // requests read in full (with their thread) at one load
  let editing = null; // the request being updated (changes requested), else null

  // -- the API -----------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-Twinhub-XSRF"] = XSRF;
    }
    const r = await fetch(API + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let doc = null;
    try { doc = await r.json(); } catch (e) { doc = null; }
    if (!r.ok) {
      const why = doc && doc.description ? doc.description : r.statusText;
      const err = new Error(r.status + ": " + why);
      err.status = r.status;
      throw err;
    }
    return doc;
  }

  // -- DOM helpers (text only) -------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }
  function showError(node, err) {
    node.textContent = err ? String(err.message || err) : "";
    node.hidden = !err;
  }
  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }

  // -- one request -------------------------------------------------------------------------
  function findings(r) {
    if (r.findings === null || r.findings === undefined) {
      return el("p", { class: "th-muted" }, "Not evaluated yet.");
    }
    if (!r.findings.length) return el("p", { class: "th-muted" }, "No findings.");
    const ul = el("ul", { class: "th-findings" });
    for (const f of r.findings) {
      ul.append(el("li", { class: f.ok ? "th-ok" : "th-flag", "data-check": f.check || "" },
        (f.ok ? "\u2713 " : "\u26a0 ") + (f.check ? f.check + ": " : "") + (f.message || "")));
    }
    return ul;
  }

  function thread(r) {
    const ol = el("ol", { class: "th-thread" });
    for (const ev of r.events || []) {
      let what = ev.kind;
      if (ev.kind === "transition") what = (LABELS[ev.from] || ev.from || "") + " \u2192 " + (LABELS[ev.to] || ev.to);
      ol.append(el("li", { "data-kind": ev.kind },
        el("span", { class: "th-muted" }, when(ev.at) + " \u00b7 " + ev.actor + " \u00b7 " + what),
        ev.comment ? el("div", { class: "th-comment" }, ev.comment) : null));
    }
    return ol;
  }

  function button(label, cls, action) {
    const b = el("button", { type: "button", class: "th-button th-small " + (cls || "") }, label);
    b.dataset.action = action;
    return b;
  }

  function actions(r, card) {
    const box = el("div", { class: "th-actions" });
    const err = el("p", { class: "th-error", role: "alert", hidden: true });
    const comment = el("textarea", { rows: 2, placeholder: "Comment", class: "th-comment-input" });
    comment.setAttribute("aria-label", "comment on " + r.slug);
    const allowed = r.allowed || [];
    const buttons = el("div", { class: "th-buttons" });

    async function run(fn) {
      showError(err, null);
      for (const b of card.querySelectorAll("button")) b.disabled = true;
      try {
        await fn();
        await load();
      } catch (e) {
        showError(err, e);
        for (const b of card.querySelectorAll("button")) b.disabled = false;
      }
    }
    const move = (to, extra) => run(() =>
      api("POST", "requests/" + encodeURIComponent(r.id) + "/transitions",
        Object.assign({ to, comment: comment.value }, extra || {})));
    const review = (decision) => run(() =>
      api("POST", "requests/" + encodeURIComponent(r.id) + "/reviews",
        { decision, comment: comment.value }));

    const add = (b, fn) => { b.addEventListener("click", fn); buttons.append(b); };
    if (allowed.includes("approved")) add(button("Approve", "", "approve"), () => review("approved"));
    if (allowed.includes("changes-requested")) {
      add(button("Ask for changes", "th-secondary", "changes"), () => review("changes-requested"));
    }
    if (allowed.includes("rejected")) add(button("Reject", "th-danger", "reject"), () => review("rejected"));
    if (allowed.includes("submitted")) {
      add(button("Update and resubmit", "", "edit"), () => startEdit(r));
    }
    if (allowed.includes("integrated") && r.state === "approved") {
      box.append(integrateForm(r, run, comment));
    } else if (allowed.includes("integrated")) {
      add(button("Resume", "", "resume"), () => move("integrated"));
    }
    if (allowed.includes("suspended")) add(button("Suspend", "th-secondary", "suspend"), () => move("suspended"));
    if (allowed.includes("retired")) add(button("Retire", "th-danger", "retire"), () => move("retired"));
    add(button("Comment", "th-secondary", "comment"), () => run(() =>
      api("POST", "requests/" + encodeURIComponent(r.id) + "/comments", { comment: comment.value })));
    box.prepend(comment);
    box.append(buttons, err);
    return box;
  }

  function integrateForm(r, run, comment) {
    const upstream = el("input", { type: "url", placeholder: "http://service.internal:8080/", class: "th-upstream" });
    upstream.setAttribute("aria-label", "upstream URL of " + r.slug);
    const eps = (r.entry && r.entry.endpoints) || [];
    if (eps.length) upstream.value = eps[0].url;
    const priv = el("input", { type: "checkbox", class: "th-allow-private" });
    // sandboxed unless the admin says otherwise (the API's default too)
    const sandbox = el("input", { type: "checkbox", class: "th-sandbox", checked: true });
    const warn = el("p", { class: "th-warning", hidden: true },
      "A private address (loopback, link-local, RFC 1918) reaches inside the platform's " +
      "network: allow it only for a service you operate.");
    priv.addEventListener("change", () => { warn.hidden = !priv.checked; });
    // The API takes the two riskiest switches only with a header token, never from a
    // browser session (any page of the origin could drive one): the command to run instead.
    const curlBox = el("div", { class: "th-curl", hidden: true },
      el("p", {}, "A private address or an unsandboxed service needs an API token, not this " +
        "browser session. Run this with a token of yours (hub \u2192 Token) in $TOKEN:"));
    const curl = el("pre", { class: "th-curl-command" });
    curlBox.append(curl);
    const go = button("Integrate", "", "integrate");
    go.addEventListener("click", () => run(async () => {
      curlBox.hidden = true;
      const body = {
        to: "integrated", comment: comment.value, upstream: upstream.value.trim(),
        allow_private: priv.checked, sandbox: sandbox.checked,
      };
      const path = "requests/" + encodeURIComponent(r.id) + "/transitions";
      try {
        await api("POST", path, body);
      } catch (e) {
        if (e.status === 403 && (body.allow_private || !body.sandbox)) {
          curl.textContent = curlCommand(location.origin + API + path, body);
          curlBox.hidden = false;
        }
        throw e;
      }
    }));
    return el("div", { class: "th-integrate" },
      el("label", {}, "Upstream URL ", upstream),
      el("label", { class: "th-check" }, priv, " allow a private address"),
      warn,
      el("label", { class: "th-check" }, sandbox,
        " sandbox its pages (an opaque origin: its scripts cannot act on the platform)"),
      go, curlBox);
  }

  // a POSIX shell word: single quotes, each ' inside written '\''
  function shellQuote(s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; }
  function curlCommand(url, body) {
    return "curl -X POST -H \"Authorization: token $TOKEN\" \\\n" +
      "  -H 'Content-Type: application/json' \\\n" +
      "  -d " + shellQuote(JSON.stringify(body)) + " \\\n  " + shellQuote(url);
  }

  function requestCard(r) {
    const e = r.entry || {};
    const card = el("article", { class: "th-request", "data-id": r.id, "data-slug": r.slug, "data-state": r.state });
    const title = el("h3", {}, e.name || r.slug, " ",
      el("span", { class: "th-state th-state-" + r.state, "data-state": r.state }, LABELS[r.state] || r.state));
    const link = r.state === "integrated" && ["web-application", "api"].includes(e.kind)
      ? el("a", { href: SERVICES + r.slug + "/" }, SERVICES + r.slug + "/") : null;
    const parts = [
      title,
      el("p", { class: "th-meta" },
        r.slug + " \u00b7 " + (e.kind || "") + " \u00b7 by " + r.provider + " (" + (e.provider || "") +
        ") \u00b7 version " + r.version + " \u00b7 " + (e.visibility || "") + " \u00b7 updated " + when(r.updated)),
      link ? el("p", {}, link) : null,
      // Open where someone decides on them: a review, or changes asked for.
      el("details", { open: ["evaluated", "changes-requested"].includes(r.state) },
        el("summary", {}, "Findings of the automated evaluation"), findings(r)),
      // Open when there is a conversation, or when changes were asked for (the reason).
      el("details", {
        open: r.state === "changes-requested" || (r.events || []).some((x) => x.kind === "comment"),
      },
        el("summary", {}, "History and comments (" + (r.events || []).length + ")"), thread(r)),
    ];
    card.append(...parts.filter((x) => x), actions(r, card));
    return card;
  }

  function fill(list, rows, empty) {
    const box = root.querySelector('[data-list="' + list + '"]');
    if (!box) return;
    box.replaceChildren(...(rows.length ? rows.map(requestCard) : [el("p", { class: "th-muted" }, empty)]));
  }

  async function load() {
    showError(pageError, null);
    let doc;
    try {
      doc = await api("GET", "requests");
    } catch (e) {
      showError(pageError, e);
      return;
    }
    const all = doc.requests || [];
    const mine = all.filter((r) => r.provider === ME);
    const review = REVIEWER ? all.filter((r) => r.state === "evaluated") : [];
    const operate = ADMIN ? all.filter((r) => OPERATED.includes(r.state)) : [];
    // The list has no events: each request shown is read in full (its thread).
    const shown = [...new Set([...mine, ...review, ...operate].map((r) => r.id))].slice(0, MAX_FULL);
    const full = new Map();
    await Promise.all(shown.map(async (id) => {
      try {
        full.set(id, await api("GET", "requests/" + encodeURIComponent(id)));
      } catch (e) { /* shown from the list's row */ }
    }));
    const best = (rows) => rows.map((r) => full.get(r.id) || r);
    fill("mine", best(mine), "You have asked for nothing yet.");
    if (REVIEWER) fill("review", best(review), "Nothing to review.");
    if (ADMIN) fill("operate", best(operate), "Nothing approved, integrated or suspended.");
  }

  // -- the form ----------------------------------------------------------------------------
  function endpointRow() {
    const first = document.querySelector(".th-endpoint");
    const row = first.cloneNode(true);
    for (const i of row.querySelectorAll("input")) i.value = "";
    return row;
  }
  document.getElementById("th-add-endpoint").addEventListener("click", () => {
    const box = document.getElementById("th-endpoints");
    if (box.children.length < 10) box.append(endpointRow());
  });

  function numberOrNull(v) {
    const s = String(v || "").trim();
    return s === "" ? null : Number(s);
  }

  function entryFromForm() {
    const f = form.elements;
    const endpoints = [];
    for (const row of document.querySelectorAll(".th-endpoint")) {
      const url = row.querySelector('[name="endpoint_url"]').value.trim();
      if (!url) continue;
      const ep = { url, type: row.querySelector('[name="endpoint_type"]').value };
      const d = row.querySelector('[name="endpoint_description_url"]').value.trim();
      if (d) ep.description_url = d;
      endpoints.push(ep);
    }
    const bboxText = f.bbox.value.trim();
    const bbox = bboxText ? bboxText.split(",").map((x) => Number(x.trim())) : null;
    const start = f.temporal_start.value.trim();
    const end = f.temporal_end.value.trim();
    return {
      name: f.name.value, slug: f.slug.value.trim(), provider: f.provider.value,
      description: f.description.value,
      thematic_areas: [...form.querySelectorAll('[name="thematic_areas"]:checked')].map((c) => c.value),
      kind: f.kind.value, endpoints, documentation: f.documentation.value.trim(),
      licence: f.licence.value, contact: f.contact.value.trim(), visibility: f.visibility.value,
      keywords: f.keywords.value.split(",").map((k) => k.trim()).filter(Boolean),
      bbox, temporal: start || end ? { start: start || null, end: end || null } : null,
    };
  }

  function resourcesFromForm() {
    const f = form.elements;
    const out = {};
    if (f.project.value) out.project = f.project.value;
    for (const k of ["cpu", "memory_gb", "gpu"]) {
      const n = numberOrNull(f[k].value);
      if (n !== null) out[k] = n;
    }
    return out;
  }

  function startEdit(r) {
    // The form takes the request's entry; submitting sends it back with the move to
    // "submitted" (the slug cannot change).
    editing = r;
    const e = r.entry || {};
    const f = form.elements;
    for (const k of ["name", "slug", "provider", "description", "documentation", "licence", "contact"]) {
      f[k].value = e[k] || "";
    }
    f.slug.readOnly = true;
    f.kind.value = e.kind || "web-application";
    if ([...f.visibility.options].some((o) => o.value === e.visibility)) f.visibility.value = e.visibility;
    for (const c of form.querySelectorAll('[name="thematic_areas"]')) {
      c.checked = (e.thematic_areas || []).includes(c.value);
    }
    const box = document.getElementById("th-endpoints");
    const rows = (e.endpoints || []).length ? e.endpoints : [{ url: "", type: "openapi" }];
    box.replaceChildren(...rows.map((ep) => {
      const row = endpointRow();
      row.querySelector('[name="endpoint_url"]').value = ep.url || "";
      row.querySelector('[name="endpoint_description_url"]').value = ep.description_url || "";
      row.querySelector('[name="endpoint_type"]').value = ep.type || "other";
      return row;
    }));
    f.keywords.value = (e.keywords || []).join(", ");
    f.bbox.value = e.bbox ? e.bbox.join(", ") : "";
    f.temporal_start.value = (e.temporal && e.temporal.start) || "";
    f.temporal_end.value = (e.temporal && e.temporal.end) || "";
    f.activity.value = r.activity || "";
    document.getElementById("th-submit").textContent = "Resubmit " + r.slug;
    document.getElementById("th-cancel-edit").hidden = false;
    document.getElementById("th-new").querySelector("h2").textContent = "Update " + r.slug;
    form.scrollIntoView();
  }

  function stopEdit() {
    editing = null;
    form.reset();
    form.elements.slug.readOnly = false;
    document.getElementById("th-submit").textContent = "Submit request";
    document.getElementById("th-cancel-edit").hidden = true;
    document.getElementById("th-new").querySelector("h2").textContent = "New request";
  }
  document.getElementById("th-cancel-edit").addEventListener("click", stopEdit);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(formError, null);
    const submit = document.getElementById("th-submit");
    submit.disabled = true;
    try {
      if (editing) {
        await api("POST", "requests/" + encodeURIComponent(editing.id) + "/transitions",
          { to: "submitted", entry: entryFromForm(), comment: "updated as asked" });
      } else {
        await api("POST", "requests", {
          entry: entryFromForm(), resources: resourcesFromForm(),
          activity: form.elements.activity.value,
        });
      }
      stopEdit();
      await load();
      document.getElementById("th-mine").scrollIntoView();
    } catch (e) {
      showError(formError, e);
    } finally {
      submit.disabled = false;
    }
  });

  load();
  // The platform evaluates submitted requests within a minute: keep the lists current
  // while the page is open (not while a reviewer is typing a comment).
  setInterval(() => {
    const typing = document.activeElement && document.activeElement.closest(".th-actions, form");
    if (!typing && !document.hidden) load();
  }, 5000);
})();
