/* Admin: API keys. List them, make one (shown once, with a copy button), edit a key's
 * scopes and limits, rotate (the new key shown once), revoke. */
(function () {
  "use strict";
  const G = window.Gateway;
  const API = "/ui/api/admin/keys";
  const LIMITS = ["rpm", "tpm", "tokens_per_day", "concurrency"];
  const tbody = document.querySelector("#keys tbody");
  const statusEl = document.getElementById("keys-status");
  const errorEl = document.getElementById("keys-error");
  const form = document.getElementById("key-form");
  const heading = document.getElementById("key-form-heading");
  const nameEl = document.getElementById("key-name");
  const submit = document.getElementById("key-submit");
  const cancel = document.getElementById("key-cancel");
  const secretBox = document.getElementById("new-secret");
  const secretName = document.getElementById("new-secret-name");
  const secretValue = document.getElementById("new-secret-value");
  let editing = null; // the name of the key being edited, or null when making one

  function showSecret(name, secret) {
    secretName.textContent = name;
    secretValue.textContent = secret;
    secretBox.hidden = false;
    document.getElementById("copy-secret").focus();
  }

  document.getElementById("copy-secret").addEventListener("click", async function () {
    try {
      await navigator.clipboard.writeText(secretValue.textContent);
      statusEl.textContent = "Copied.";
    } catch (_) {
      G.say(errorEl, "Could not copy; select the key and copy it by hand.", "error");
    }
  });
  document.getElementById("hide-secret").addEventListener("click", function () {
    secretValue.textContent = "";
    secretBox.hidden = true;
  });

  function list(value) {
    return value === null || value === undefined ? "" : value.join(", ");
  }

  function describeScopes(key) {
    const parts = [];
    if (key.admin) parts.push("admin");
    if (key.models) parts.push("models: " + list(key.models));
    if (key.endpoints) parts.push("endpoints: " + list(key.endpoints));
    if (key.tools) parts.push("tools: " + list(key.tools));
    return parts.length ? parts.join("; ") : "everything";
  }

  function describeLimits(key) {
    const names = { rpm: "/min", tpm: " tokens/min", tokens_per_day: " tokens/day", concurrency: " at once" };
    const parts = LIMITS.filter((f) => key[f] !== null).map((f) => key[f] + names[f]);
    return parts.length ? parts.join(", ") : "none";
  }

  function button(label, onClick) {
    const b = G.el("button", { type: "button", className: "button-small" }, label);
    b.addEventListener("click", onClick);
    return b;
  }

  function row(key) {
    const active = key.status === "active";
    const actions = G.el("td", { className: "row-actions" });
    if (active) {
      actions.appendChild(button("Edit", function () { edit(key); }));
      actions.appendChild(button("Rotate", function () { rotate(key.name); }));
      actions.appendChild(button("Revoke", function () { revoke(key.name); }));
    }
    return G.el(
      "tr",
      { dataset: { name: key.name }, className: active ? "" : "is-disabled" },
      G.el("th", { scope: "row" }, key.name),
      G.el("td", null, G.el("code", null, key.prefix + "…")),
      G.el("td", null, key.status),
      G.el("td", null, describeScopes(key)),
      G.el("td", null, describeLimits(key)),
      actions
    );
  }

  async function load() {
    try {
      const body = await G.fetchJSON(API);
      const keys = (body && body.data) || [];
      G.clear(tbody);
      for (const key of keys) tbody.appendChild(row(key));
      if (!keys.length) {
        tbody.appendChild(G.el("tr", null, G.el("td", { colspan: 6, className: "muted" }, "No API keys yet.")));
      }
    } catch (err) {
      G.say(errorEl, "Could not load keys: " + G.messageOf(err), "error");
    }
  }

  function splitList(text) {
    const items = text.split(",").map((s) => s.trim()).filter(Boolean);
    return items.length ? items : null;
  }

  function formValues() {
    const values = {
      models: splitList(form.elements.models.value),
      tools: splitList(form.elements.tools.value),
      admin: form.elements.admin.checked,
    };
    const ticked = Array.from(form.querySelectorAll('input[name="endpoints"]:checked')).map((i) => i.value);
    values.endpoints = ticked.length ? ticked : null;
    for (const field of LIMITS.concat(["expires_days"])) {
      const raw = form.elements[field].value.trim();
      values[field] = raw ? Number(raw) : null;
    }
    if (editing !== null && values.expires_days === null) delete values.expires_days;
    return values;
  }

  function edit(key) {
    editing = key.name;
    heading.textContent = "Edit " + key.name;
    submit.textContent = "Save";
    cancel.hidden = false;
    nameEl.value = key.name;
    nameEl.disabled = true;
    form.elements.models.value = list(key.models);
    form.elements.tools.value = list(key.tools);
    form.elements.admin.checked = key.admin;
    for (const box of form.querySelectorAll('input[name="endpoints"]')) {
      box.checked = key.endpoints !== null && key.endpoints.includes(box.value);
    }
    for (const field of LIMITS) form.elements[field].value = key[field] === null ? "" : key[field];
    form.elements.expires_days.value = "";
    form.elements.models.focus();
  }

  function stopEditing() {
    editing = null;
    form.reset();
    nameEl.disabled = false;
    heading.textContent = "Make a key";
    submit.textContent = "Make key";
    cancel.hidden = true;
  }
  cancel.addEventListener("click", stopEditing);

  async function rotate(name) {
    if (!window.confirm("Rotate " + name + "? Its current key stops working at once.")) return;
    G.say(errorEl, "");
    try {
      const body = await G.fetchJSON(API + "/" + encodeURIComponent(name) + "/rotate", { method: "POST" });
      showSecret(name, body.secret);
      statusEl.textContent = "Rotated " + name + ".";
      await load();
    } catch (err) {
      G.say(errorEl, "Could not rotate " + name + ": " + G.messageOf(err), "error");
    }
  }

  async function revoke(name) {
    if (!window.confirm("Revoke " + name + "? It stops working at once.")) return;
    G.say(errorEl, "");
    try {
      await G.fetchJSON(API + "/" + encodeURIComponent(name) + "/revoke", { method: "POST" });
      statusEl.textContent = "Revoked " + name + ".";
      await load();
    } catch (err) {
      G.say(errorEl, "Could not revoke " + name + ": " + G.messageOf(err), "error");
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    G.say(errorEl, "");
    statusEl.textContent = "";
    const values = formValues();
    submit.disabled = true;
    try {
      if (editing !== null) {
        const name = editing;
        await G.fetchJSON(API + "/" + encodeURIComponent(name), { method: "PATCH", body: values });
        statusEl.textContent = "Saved " + name + ".";
        stopEditing();
      } else {
        const name = nameEl.value.trim();
        const body = await G.fetchJSON(API, { method: "POST", body: Object.assign({ name: name }, values) });
        form.reset();
        showSecret(name, body.secret);
        statusEl.textContent = "Made " + name + ".";
      }
      await load();
    } catch (err) {
      G.say(errorEl, G.messageOf(err), "error");
    } finally {
      submit.disabled = false;
    }
  });

  load();
})();
